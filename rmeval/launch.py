"""launch: run a spec's tasks on a backend.

The spec comes from a file (``rmeval plan --output spec.yml``) or is planned on the spot
from ``--source`` (see :func:`rmeval.plan.make_plan`). It is validated (our strict check
and beaker-py) once, before anything runs: a planned spec arrives validated
(:class:`rmeval.specs.ValidSpec`) and is not parsed again. Backends:

- ``local`` (:mod:`rmeval.backends.local`, the embedded default): a process pool;
- ``beaker`` (:mod:`rmeval.backends.beaker`): one experiment per task in ``workspace``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rmeval import naming, preflight, specs, storage
from rmeval import store as store_layout
from rmeval.backends.local import LaunchSummary
from rmeval.errors import RmevalError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("local", "beaker")
DEFAULT_LOG_DIR = "rmeval-logs"


def load_spec_file(path: str | os.PathLike) -> specs.ValidSpec:
    """Read and validate a spec file (local or gs://)."""
    where = os.fspath(path)
    return specs.ValidSpec.from_text(storage.read_text(where), where=where)


def launch(
    spec: str | os.PathLike | Mapping[str, Any] | specs.ValidSpec | None = None,
    *,
    backend: str = "local",
    plan_args: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    max_parallel: int = 1,
    workspace: str | None = None,
    experiment_prefix: str | None = None,
    log_dir: str | os.PathLike = DEFAULT_LOG_DIR,
    progress: bool = True,
    beaker_timeout: float | None = None,
) -> LaunchSummary:
    """Run ``spec`` (a file, a mapping, an already validated spec, or planned from
    ``plan_args``) on ``backend`` (``beaker_timeout``: see
    :func:`rmeval.backends.beaker.client`)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "beaker" and not workspace:  # a dry run too: it says where it would create
        raise UsageError("--backend beaker needs --workspace ORG/NAME (a dry run too)")
    if (spec is None) == (not plan_args):
        raise UsageError("give either a SPEC file or --source (to plan on the spot), not both")
    if spec is None:
        from rmeval.plan import make_plan

        args = dict(plan_args or {})
        values = dict(args.pop("values", None) or {})
        if backend == "local":
            values.setdefault("keep_model", False)
        if backend == "beaker" and workspace and "workspace" not in args:
            args["workspace"] = workspace
        experiment_prefix = experiment_prefix or args.get("experiment_prefix")
        p, planned = make_plan(values=values, beaker_timeout=beaker_timeout, **args)
        log.info("%s", p.summary())
        if planned is None:
            return LaunchSummary(backend, [])
        experiment_prefix = experiment_prefix or p.experiment_prefix
        data = planned.data
    elif isinstance(spec, specs.ValidSpec):
        data = spec.data
    elif isinstance(spec, Mapping):
        data, _ = specs.validate_spec(spec, where="spec")
    else:
        data = load_spec_file(spec).data
    experiment_prefix = experiment_prefix or naming.DEFAULT_EVAL_EXPERIMENT_PREFIX

    if backend == "local":
        from rmeval.backends import local

        tasks = local.tasks_from_spec(data, Path(log_dir))
        check_local_tasks(tasks, environment=not dry_run)
        return local.run_local(
            tasks, log_dir=log_dir, max_parallel=max_parallel, dry_run=dry_run, progress=progress
        )
    from rmeval.backends import beaker

    preflight.check_tasks(preflight.spec_tasks(data), "spec")
    return beaker.launch_beaker(
        data,
        workspace=workspace,
        experiment_prefix=experiment_prefix,
        dry_run=dry_run,
        timeout=beaker_timeout,
    )


def check_local_tasks(tasks, *, environment: bool = True) -> None:
    """Every run-one task's options, before any worker starts: the values of each, and
    with ``environment`` everything :func:`rmeval.preflight.check_run` checks for each run
    not published yet (a store, dataset, device or tokenizer that tasks share is checked
    once)."""
    checked = preflight.Checked()
    argvs = [(task.name, list(task.argv)) for task in tasks]
    for name, ns in preflight.parse_tasks(argvs, ""):
        kwargs = preflight.run_options(ns)
        try:
            run = preflight.check_values(ns.checkpoint, ns.store, **kwargs)
            if not environment:
                continue
            done = all(
                store_layout.is_complete(ns.store, run, b)
                for b in kwargs.get("benchmarks") or [store_layout.V1]
            )
            if ns.force or not done:  # a run done for every benchmark is only skipped
                preflight.check_run(ns.checkpoint, ns.store, checked=checked, **kwargs)
        except RmevalError as exc:
            raise type(exc)(f"task {name}: {exc}") from exc
