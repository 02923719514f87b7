"""Plan: which checkpoints still need a run, and the spec that runs them.

:func:`plan` lists ``streaming_params*`` under a source (``gs://bucket/prefix`` or a local
directory; where no such directory exists, every entry whose name starts with it, as the
seed's ``--gcs_dir_path`` and ``list_blobs(prefix=...)`` read it) through
:mod:`rmeval.storage`, names every checkpoint's run through
:func:`rmeval.naming.run_name`, and sorts the runs into three piles:

- **superseded**: several checkpoints of one experiment (the steps of one run
  directory, or relaunches ``<dir>--<id>`` whose part before ``--`` is the same). The store
  holds one result per run name, so one checkpoint per name is kept: the final
  ``streaming_params`` (no step) if present, else the highest step, ties broken by the
  newest object and then by URI. The others are reported, never run silently.
  Different experiments never supersede each other: ``a.b`` and ``a-b`` (which the
  seed's '.' -> '-' rule would merge) get distinct names (:func:`rmeval.naming.run_names`),
  and the task of a renamed one passes ``--run-name``.
- **done**: the run's ``<store>/<run>/metrics.json`` exists (metrics.json is written last,
  so its presence means the run finished; :func:`rmeval.store.completed_runs`, the listing
  collect reads too), or a Beaker experiment with exactly the run's experiment name
  exists. Matching is by exact name, never by substring. ``force`` moves them back to
  *to run*.
- **running**: a live claim.json (:mod:`rmeval.state`): another runner works on it.
- **given up**: failed.json says it failed ``max_attempts`` times (default 3); planned
  again only with ``retry_failed``. A run that failed fewer times is retried (to run,
  counted as *failed*).
- **to run**: everything else.

Done, running and failed come from one listing of the store; only the state files of
unfinished runs are read.

:func:`render_plan` turns the to-run list into a Beaker spec with a Jinja template (see
:mod:`rmeval.specs`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rmeval import naming, specs, state, storage
from rmeval import store as store_layout
from rmeval.errors import NamingError, SpecError, StoreError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    """One checkpoint and the names derived from it."""

    run: str
    checkpoint: str
    experiment: str
    directory: str
    step: int | None
    uuid: str | None
    budget: int | None
    size: int
    result: str | None
    # True when ``run`` is not what run-one derives from the checkpoint by itself (a name
    # collision, see naming.run_names): the task must pass it with --run-name.
    explicit_name: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Superseded:
    checkpoint: str
    run: str
    kept: str


@dataclass
class Plan:
    """The outcome of planning: counts and the three piles."""

    source: str
    prefix: str | None
    store: str | None
    experiment_prefix: str
    found: int = 0
    to_run: list[PlannedRun] = field(default_factory=list)
    done: list[PlannedRun] = field(default_factory=list)
    superseded: list[Superseded] = field(default_factory=list)
    running: list[PlannedRun] = field(default_factory=list)
    failed: list[PlannedRun] = field(default_factory=list)  # retried: also in to_run
    given_up: list[PlannedRun] = field(default_factory=list)
    states: dict[str, state.RunState] = field(default_factory=dict)
    store_runs: dict[str, store_layout.StoredRun] = field(default_factory=dict)  # the listing
    skipped: list[str] = field(default_factory=list)
    seconds_listing: float = 0.0
    seconds_rendering: float = 0.0

    def summary(self) -> str:
        extra = f", {len(self.superseded)} superseded" if self.superseded else ""
        return (
            f"found {self.found} checkpoint(s){extra}: {len(self.done)} done, "
            f"{len(self.running)} running, {len(self.failed)} failed (retried), "
            f"{len(self.given_up)} given up, {len(self.to_run)} to run"
        )

    def to_json(self) -> str:
        """The run list (for workflow matrices) plus the counts."""
        return json.dumps(
            {
                "source": self.source,
                "store": self.store,
                "prefix": self.prefix,
                "found": self.found,
                "done": len(self.done),
                "running": len(self.running),
                "failed": len(self.failed),
                "given_up": len(self.given_up),
                "to_run": len(self.to_run),
                "superseded": [asdict(s) for s in self.superseded],
                "runs": [r.as_dict() for r in self.to_run],
            },
            indent=2,
        )


def _source_uri(
    source: str | None, gcs_bucket: str | None = None, gcs_dir_path: str | None = None
) -> str:
    """``--source``, or the seed's ``--gcs_bucket`` (no gs://) + ``--gcs_dir_path``."""
    if source and (gcs_bucket or gcs_dir_path):
        raise UsageError("give either --source or --gcs_bucket/--gcs_dir_path, not both")
    if source:
        return os.fspath(source)
    if gcs_bucket:
        bucket = gcs_bucket.removeprefix("gs://").strip("/")
        return storage.join(f"gs://{bucket}", gcs_dir_path or "")
    raise UsageError("no checkpoint source: pass --source gs://BUCKET/PREFIX or a local directory")


def _rank(info: storage.ObjectInfo, step: int | None) -> tuple:
    updated = info.updated.timestamp() if info.updated else 0.0
    return (step is None, step or 0, updated, info.uri)


def list_checkpoints(source: str) -> Iterable[storage.ObjectInfo]:
    """Every ``streaming_params*`` object under ``source`` (train states excluded).
    ``source`` is a directory (GCS "folder") or, when no such directory exists, a name
    prefix, as the seed's ``--gcs_dir_path`` and ``list_blobs(prefix=...)`` read it."""
    for obj in storage.list_objects(source, match=naming.CHECKPOINT_GLOB, name_prefix=True):
        if naming.is_checkpoint_file(obj.name):
            yield obj


def _no_checkpoints(source: str) -> StoreError:
    try:
        near = storage.nearest_prefixes(source)
    except StoreError:
        near = []
    hint = f"; nearest existing: {', '.join(near)}" if near else ""
    return StoreError(
        f"{source}: no streaming_params* checkpoints under this directory or name prefix"
        f"{hint}; check --source (or pass --allow-empty when none yet is expected)"
    )


def _published_by(store: str | None, names: Iterable[str]) -> dict[str, str]:
    """For colliding run names: which experiment spelling published each (from its
    provenance.json), so that a published name stays with its experiment."""
    owners: dict[str, str] = {}
    for name in names:
        uri = store_layout.run_file(store, name, store_layout.PROVENANCE_FILE) if store else None
        if uri is None or not storage.exists(uri):
            continue
        try:
            ckpt = json.loads(storage.read_text(uri))["checkpoint"]
            owners[name] = naming.parse_checkpoint(ckpt).spelling
        except (StoreError, NamingError, ValueError, KeyError, TypeError):
            log.warning("%s: unreadable; cannot tell which experiment published it", uri)
    return owners


def plan(
    source: str,
    *,
    prefix: str | None = None,
    store: str | None = None,
    experiment_prefix: str = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    existing_experiments: Iterable[str] | None = None,
    force: bool = False,
    allow_empty: bool = False,
    benchmarks: Iterable[str] | None = None,
    max_attempts: int = state.DEFAULT_MAX_ATTEMPTS,
    retry_failed: bool = False,
) -> Plan:
    """List checkpoints under ``source`` and decide what to run (see the module doc).

    ``benchmarks`` (default RewardBench alone): a run is done when it is done for every one
    of them (:func:`rmeval.store.completed_runs`); a run done for RewardBench but not for
    RewardBench 2 is planned again, and its task evaluates only RewardBench 2 (run-one
    skips what is done). A Beaker experiment that exists counts as done only for
    RewardBench alone.

    ``store`` is where results are published; ``existing_experiments`` are Beaker
    experiment names already present (a run whose experiment name is in it is done).
    A source without any checkpoint is an error naming the nearest existing prefixes,
    unless ``allow_empty``. ``max_attempts`` / ``retry_failed``: see the module doc."""
    t0 = time.perf_counter()
    result = Plan(source=source, prefix=prefix, store=store, experiment_prefix=experiment_prefix)
    best: dict[str, tuple[tuple, PlannedRun]] = {}
    losers: list[tuple[PlannedRun, str]] = []
    try:
        objects = list(list_checkpoints(source))
    except StoreError as exc:
        raise StoreError(f"cannot list checkpoints: {exc}") from exc
    parsed_objects = []
    plain: dict[str, str] = {}  # uri -> the name run-one derives by itself
    for obj in objects:
        try:
            parsed = naming.parse_checkpoint(obj.uri)
            plain[obj.uri] = naming.run_name_of(parsed, prefix)
        except NamingError as exc:
            log.warning("skipping %s", exc)
            result.skipped.append(obj.uri)
            continue
        parsed_objects.append((obj, parsed))
    if not parsed_objects and not allow_empty:
        raise _no_checkpoints(source)
    names = naming.run_names(
        [parsed for _, parsed in parsed_objects],
        prefix,
        owners=lambda colliding: _published_by(store, colliding),
    )
    for obj, parsed in parsed_objects:
        run = names[obj.uri]
        result.found += 1
        planned = PlannedRun(
            run=run,
            checkpoint=obj.uri,
            experiment=naming.eval_experiment_name(run, experiment_prefix),
            directory=parsed.directory,
            step=parsed.step,
            uuid=parsed.uuid,
            budget=parsed.budget,
            size=obj.size,
            result=storage.join(store, run) if store else None,
            explicit_name=run != plain[obj.uri],
        )
        rank = _rank(obj, parsed.step)
        prev = best.get(run)
        if prev is None:
            best[run] = (rank, planned)
        elif rank > prev[0]:
            losers.append((prev[1], planned.checkpoint))
            best[run] = (rank, planned)
        else:
            losers.append((planned, prev[1].checkpoint))
    for loser, _ in losers:
        kept = best[loser.run][1].checkpoint
        result.superseded.append(Superseded(checkpoint=loser.checkpoint, run=loser.run, kept=kept))
    benches = list(dict.fromkeys(benchmarks or [store_layout.V1]))
    listed = store_layout.list_runs(store, missing_ok=True) if store else {}
    result.store_runs = listed
    result.states = state.states(
        {run: listed[run] for run in best if run in listed},
        benchmarks=benches,
        max_attempts=max_attempts,
        retry_failed=retry_failed,
    )
    only_v1 = benches == [store_layout.V1]
    existing = set(existing_experiments or ()) if only_v1 else set()
    for run in sorted(best):
        planned = best[run][1]
        st = result.states.get(run)
        kind = st.state if st is not None else state.PLANNED
        if (kind == state.DONE or planned.experiment in existing) and not force:
            result.done.append(planned)
        elif kind == state.RUNNING:
            result.running.append(planned)
        elif kind == state.GIVEN_UP:
            result.given_up.append(planned)
        else:
            if kind == state.FAILED:
                result.failed.append(planned)
            result.to_run.append(planned)
    result.seconds_listing = time.perf_counter() - t0
    for s in result.superseded:
        log.log(
            logging.INFO if len(result.superseded) <= 20 else logging.DEBUG,
            "superseded: %s (keeping %s)",
            s.checkpoint,
            s.kept,
        )
    return result


def notify_given_up(p: Plan, url: str) -> int:
    """Post one notice per run given up that none was posted for yet (failed.json records
    it, under its generation precondition, so two plans do not both post). The count."""
    from rmeval import notify

    n = 0
    for planned in p.given_up:
        failure = p.states[planned.run].failure
        if failure is None or failure.notified or not state.mark_notified(failure):
            continue
        notify.post(
            url,
            f"rmeval: gave up on {planned.run} after {failure.attempts} failed attempt(s); "
            f"last at {failure.stage}: {failure.error_type}: {failure.error} "
            "(rmeval plan --retry-failed plans it again)",
        )
        n += 1
    return n


# --------------------------------------------------------------------------- rendering


def template_context(
    p: Plan,
    *,
    preset: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Variables a template sees: preset values, then ``values`` (the command line), then
    the plan's own (``runs``, ``store``, ``prefix``, ``experiment_prefix``, ``source``)."""
    ctx: dict[str, Any] = {}
    if preset:
        ctx.update(specs.load_preset(preset))
    for k, v in (values or {}).items():
        if v is not None:
            ctx[k] = v
    if p.prefix is not None:
        ctx["prefix"] = p.prefix
    ctx["experiment_prefix"] = ctx.get("experiment_prefix", p.experiment_prefix)
    if p.store is not None:
        ctx["store"] = p.store
    ctx["source"] = p.source
    ctx["runs"] = [r.as_dict() for r in p.to_run]
    return ctx


def render_plan(
    p: Plan,
    template: str | os.PathLike,
    *,
    preset: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> specs.ValidSpec:
    """Render the to-run list into a spec with ``template`` and validate it (once: the
    result holds the text, the parsed mapping and beaker-py's spec)."""
    if not p.to_run:
        raise SpecError("nothing to run: no spec to render")
    t0 = time.perf_counter()
    ctx = template_context(p, preset=preset, values=values)
    spec = specs.render_valid_spec(template, ctx)
    from rmeval import preflight  # every run-one task's options, now rather than in every task

    preflight.check_tasks(preflight.spec_tasks(spec.data), f"{template} (rendered)")
    p.seconds_rendering = time.perf_counter() - t0
    return spec


def write_spec(text: str, output: str, overwrite: bool = False) -> None:
    """Write a rendered spec (local path or gs://), atomically, never clobbering unless asked."""
    storage.write_text(output, text, overwrite=overwrite)


# --------------------------------------------------------------------------- one call


def _benchmark_list(value: Any) -> list[str] | None:
    """The ``benchmarks`` template variable (a list, or one name) as a checked list."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    for name in names:
        if name not in store_layout.FILES:
            raise SpecError(
                f"benchmarks: unknown benchmark {name!r}; expected {', '.join(store_layout.FILES)}"
            )
    return names


def make_plan(
    source: str | None = None,
    *,
    template: str | os.PathLike | None = None,
    preset: str | None = None,
    prefix: str | None = None,
    store: str | None = None,
    experiment_prefix: str | None = None,
    values: Mapping[str, Any] | None = None,
    force: bool = False,
    workspace: str | None = None,
    gcs_bucket: str | None = None,
    gcs_dir_path: str | None = None,
    render: bool = True,
    beaker_timeout: float | None = None,
    allow_empty: bool = False,
    options: Mapping[str, Any] | None = None,
    max_attempts: int | None = None,
    retry_failed: bool = False,
    notify: str | None = None,
) -> tuple[Plan, specs.ValidSpec | None]:
    """Plan and render in one call (what ``rmeval plan`` does).

    Values come from, lowest first: the template's own defaults, the preset, ``values``
    (``--set``) and ``options`` (run-one's options given to plan, :mod:`rmeval.options`;
    one variable may not come from both), then the explicit ``prefix`` / ``store`` /
    ``experiment_prefix``. The store is required to render. Every rendered run-one task is checked
    (:func:`rmeval.preflight.check_tasks`: a tokenizer given, valid choices).
    With ``workspace``, Beaker experiments that already exist there count as done
    (``beaker_timeout``: see :func:`rmeval.backends.beaker.client`). Returns the plan and
    the rendered spec, parsed and validated (None when there is nothing to run or
    ``render`` is false)."""
    src = _source_uri(source, gcs_bucket, gcs_dir_path)
    merged: dict[str, Any] = dict(specs.load_preset(preset)) if preset else {}
    merged.update({k: v for k, v in (values or {}).items() if v is not None})
    given = values or {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in given and given[key] != value:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} and --set {key}=… disagree; give one of them")
        merged[key] = value
    if "dataset" in merged and "eval_data" not in merged:  # the template variable's old name
        log.warning("template variable 'dataset' is deprecated; use 'eval_data' (--eval-data)")
        merged["eval_data"] = merged.pop("dataset")
    if "scoring" in merged:  # run-one would refuse it in every task: refuse it here, once
        from rmeval.rewardbench.formats import check_scoring

        check_scoring(merged["scoring"], "scoring (preset or --set)", SpecError)
    prefix = prefix if prefix is not None else merged.get("prefix")
    experiment_prefix = (
        experiment_prefix
        or merged.get("experiment_prefix")
        or naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
    )
    store = store if store is not None else merged.get("store")
    if render and not store:
        raise UsageError(
            "--store is required: the results store (a directory or gs://BUCKET/PREFIX) where "
            "each run publishes <run>/metrics.json, and where finished runs are found"
        )
    existing: set[str] | None = None
    if workspace:
        from rmeval.backends import beaker as beaker_backend

        existing = beaker_backend.existing_experiments(
            workspace, experiment_prefix, timeout=beaker_timeout
        )
    p = plan(
        src,
        prefix=prefix,
        store=store,
        experiment_prefix=experiment_prefix,
        existing_experiments=existing,
        force=force,
        allow_empty=allow_empty,
        benchmarks=_benchmark_list(merged.get("benchmarks")),
        max_attempts=max_attempts or state.DEFAULT_MAX_ATTEMPTS,
        retry_failed=retry_failed,
    )
    if notify:
        notify_given_up(p, notify)
    if not render or not p.to_run:
        return p, None
    merged["experiment_prefix"] = experiment_prefix
    return p, render_plan(p, template or specs.DEFAULT_TEMPLATE, values=merged)
