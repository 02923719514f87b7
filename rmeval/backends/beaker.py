"""The Beaker backend (beaker-py): one experiment per run.

A plan's spec has one task per run, named by the run. Launching turns every task into its
own experiment (the spec's version, description, budget and retry, plus that one task),
named :func:`rmeval.naming.eval_experiment_name` of the task name, in the workspace given.
A name that already exists means the run was launched before: it is reported as
``exists``, not as an error. The converted model stays the task's result (``/output``);
nothing is re-uploaded as a dataset. ``dry_run`` only prints what would be created and
does not contact Beaker.

The client comes from ``Beaker.from_env(check_for_upgrades=False)``: ``BEAKER_TOKEN`` and
``BEAKER_CONFIG`` / ``BEAKER_ADDR`` as beaker-py reads them. The token is never logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from rmeval import naming
from rmeval.backends.local import LaunchSummary, Outcome
from rmeval.errors import BackendError, RmevalError

log = logging.getLogger(__name__)

_SPEC_LEVEL = ("version", "description", "budget", "groups", "retry")


def _import_beaker():
    try:
        import beaker
    except ImportError as exc:  # pragma: no cover - beaker-py is an optional extra
        raise BackendError(
            "beaker-py is not installed: install rmeval[beaker] to use --backend beaker"
        ) from exc
    return beaker


@contextlib.contextmanager
def client(workspace: str | None = None) -> Iterator[Any]:
    """A beaker-py client from the environment (never checks for upgrades)."""
    beaker = _import_beaker()
    from beaker.exceptions import BeakerConfigurationError

    overrides = {"default_workspace": workspace} if workspace else {}
    try:
        b = beaker.Beaker.from_env(check_for_upgrades=False, **overrides)
    except BeakerConfigurationError as exc:
        raise BackendError(
            f"Beaker is not configured ({exc}); set BEAKER_TOKEN (and BEAKER_CONFIG if needed)"
        ) from None
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            b.close()


def get_workspace(
    b: Any,
    workspace: str,
    *,
    error: type[RmevalError] = BackendError,
    expected: str = "ORG/NAME; check --workspace",
):
    """The workspace, or one ``error`` line naming it (``expected``: the form to use)."""
    from beaker.exceptions import BeakerError, BeakerWorkspaceNotFound

    try:
        return b.workspace.get(workspace)
    except BeakerWorkspaceNotFound:
        raise error(f"Beaker workspace {workspace!r} not found (expected {expected})") from None
    except BeakerError as exc:
        raise error(f"Beaker workspace {workspace!r}: {type(exc).__name__}: {exc}") from None


def existing_experiments(workspace: str, prefix: str | None = None) -> set[str]:
    """Names of the experiments in ``workspace`` (those containing ``prefix`` if given; the
    caller still compares names exactly)."""
    from beaker.exceptions import BeakerError

    with client(workspace) as b:
        ws = get_workspace(b, workspace)
        try:
            return {
                w.experiment.name
                for w in b.workload.list(workspace=ws, name_or_description=prefix or None)
                if w.experiment.name
            }
        except BeakerError as exc:
            raise BackendError(f"cannot list experiments in {workspace!r}: {exc}") from None


def experiment_specs(
    spec: Mapping[str, Any], experiment_prefix: str = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(run, experiment name, one-task spec)`` for every task of a validated spec."""
    head = {k: spec[k] for k in _SPEC_LEVEL if spec.get(k) is not None}
    out = []
    names: set[str] = set()
    for i, task in enumerate(spec.get("tasks") or []):
        run = task.get("name")
        if not run:
            raise BackendError(f"tasks[{i}]: a task needs a name (the run) to name its experiment")
        name = naming.eval_experiment_name(run, experiment_prefix)
        if name in names:
            raise BackendError(f"tasks[{i}]: experiment name {name!r} would be used twice")
        names.add(name)
        out.append((run, name, {**head, "tasks": [dict(task)]}))
    return out


def launch_beaker(
    spec: Mapping[str, Any],
    *,
    workspace: str | None,
    experiment_prefix: str = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    dry_run: bool = False,
) -> LaunchSummary:
    """Create one experiment per task of ``spec`` in ``workspace``."""
    from rmeval import specs

    items = experiment_specs(spec, experiment_prefix)
    if dry_run:
        where = workspace or "(workspace not given)"
        return LaunchSummary(
            "beaker",
            [
                Outcome(run, "planned", f"would create experiment {name} in {where}")
                for run, name, _ in items
            ],
        )
    if not workspace:
        raise BackendError("--workspace ORG/NAME is required with --backend beaker")
    _import_beaker()
    from beaker.exceptions import BeakerError, BeakerExperimentConflict

    outcomes: list[Outcome] = []
    with client(workspace) as b:
        ws = get_workspace(b, workspace)
        for run, name, one in items:
            beaker_spec = specs.beaker_load(one, where=f"experiment {name}")
            try:
                workload = b.experiment.create(name=name, spec=beaker_spec, workspace=ws)
            except BeakerExperimentConflict:
                outcomes.append(Outcome(run, "exists", f"experiment {name} already exists"))
                continue
            except BeakerError as exc:
                outcomes.append(Outcome(run, "failed", f"{name}: {type(exc).__name__}: {exc}"))
                continue
            exp_id = workload.experiment.id
            outcomes.append(Outcome(run, "created", f"experiment {name} ({exp_id})"))
            log.info("created %s (%s)", name, exp_id)
    return LaunchSummary("beaker", outcomes)
