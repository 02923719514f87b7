"""Status: one line per run of a store (planned, running, done, failed, given up,
superseded) and the counts, from one listing of the store (:mod:`rmeval.state`).

Done runs show their Overall: on gs:// from metrics.json's object metadata
(:data:`rmeval.store.OVERALL_METADATA`, listed with the object, so 10,000 runs cost no
read each); locally, or for a run published before the metadata existed, from the file.
With ``source``, the checkpoints there that have no state yet are listed as planned, and
the superseded ones as superseded (the plan's view); with ``workspace``, each line also
shows the state of the run's Beaker experiment.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rmeval import naming, state, storage
from rmeval import store as store_layout
from rmeval.errors import StoreError, UsageError
from rmeval.procutil import bounded_map

log = logging.getLogger(__name__)

ORDER = (
    state.RUNNING,
    state.FAILED,
    state.GIVEN_UP,
    state.PLANNED,
    state.DONE,
    state.SUPERSEDED,
)


@dataclass
class Row:
    run: str
    state: str
    detail: str = ""
    overall: float | None = None
    beaker: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def line(self, width: int) -> str:
        beaker = f"  [beaker: {self.beaker}]" if self.beaker else ""
        return f"{self.state:<10} {self.run:<{width}}  {self.detail}{beaker}".rstrip()

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "state": self.state,
            "detail": self.detail,
            "overall": self.overall,
            "beaker": self.beaker,
            **self.info,
        }


@dataclass
class Status:
    store: str
    rows: list[Row]

    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.rows)
        return {s: c.get(s, 0) for s in ORDER}

    def summary(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.counts().items()) + f" ({len(self.rows)} runs)"

    def table(self, only: str | None = None) -> str:
        rows = [r for r in self.rows if only is None or r.state == only]
        width = max((len(r.run) for r in rows), default=3)
        lines = [f"{'state':<10} {'run':<{width}}  detail"]
        lines += [r.line(width) for r in rows]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self, only: str | None = None) -> str:
        rows = [r.as_dict() for r in self.rows if only is None or r.state == only]
        return json.dumps({"store": self.store, "counts": self.counts(), "runs": rows}, indent=2)


def _overall_of(run: store_layout.StoredRun) -> float | str | None:
    meta = (run.metrics.metadata or {}) if run.metrics else {}
    if store_layout.OVERALL_METADATA in meta:
        try:
            return float(meta[store_layout.OVERALL_METADATA])
        except ValueError:
            pass
    return "read"


def _read_overall(run: store_layout.StoredRun) -> tuple[str, float | None]:
    from rmeval.rewardbench import scoring

    try:
        metrics = json.loads(storage.read_bytes(run.metrics.uri))  # type: ignore[union-attr]
        return run.name, scoring.summarize(scoring.subset_accuracies(metrics))[scoring.OVERALL]
    except (StoreError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.warning("%s: unreadable metrics.json (%s)", run.uri, exc)
        return run.name, None


def overalls(
    runs: dict[str, store_layout.StoredRun], max_concurrency: int = 16
) -> dict[str, float | None]:
    """Overall of every complete run: from the listing's metadata, else read."""
    out: dict[str, float | None] = {}
    to_read = []
    for name, r in runs.items():
        if not r.complete:
            continue
        got = _overall_of(r)
        if got == "read":
            to_read.append(r)
        else:
            out[name] = got  # type: ignore[assignment]
    for name, value in bounded_map(
        _read_overall, iter(to_read), max_concurrency, total=len(to_read), desc="status"
    ):
        out[name] = value
    return out


def best_overall(store: str, exclude: str | None = None) -> float | None:
    """The best Overall among the store's finished runs (``exclude`` left out)."""
    runs = store_layout.list_runs(store, missing_ok=True)
    runs.pop(exclude or "", None)
    values = [v for v in overalls(runs).values() if v is not None]
    return max(values) if values else None


def _detail(st: state.RunState, overall: float | None, max_attempts: int) -> tuple[str, dict]:
    if st.state == state.DONE:
        text = f"Overall {overall:.4f}" if overall is not None else "Overall ?"
        return text, {}
    if st.state == state.RUNNING and st.claim is not None:
        c = st.claim
        stage = f" ({c.stage})" if c.stage else ""
        return f"by {c.who()}{stage}, attempt {c.number}", {
            "host": c.host, "job": c.job, "since": c.started, "gpus": c.gpus,
            "stage": c.stage, "expires": c.expires,
        }  # fmt: skip
    if st.failure is not None:
        f = st.failure
        kind = " (interrupted)" if f.kind == state.INTERRUPTED else ""
        text = (
            f"{f.attempts}/{max_attempts} attempt(s), last at {f.stage}{kind} {f.time}: "
            f"{f.error_type}: {f.error}"
        )
        return text, {
            "stage": f.stage, "error_type": f.error_type, "error": f.error,
            "attempts": f.attempts, "time": f.time, "job": f.job,
        }  # fmt: skip
    if st.claim is not None:  # planned: a claim nobody renews any more
        return f"expired claim of {st.claim.who()}: the next plan takes it over", {}
    return "", {}


def status(
    store: str,
    *,
    source: str | None = None,
    prefix: str | None = None,
    workspace: str | None = None,
    experiment_prefix: str | None = None,
    max_attempts: int | None = None,
    retry_failed: bool = False,
    beaker_timeout: float | None = None,
) -> Status:
    """The state of every run of ``store`` (and of ``source``'s checkpoints)."""
    if not store:
        raise UsageError("--store is required: the results store to report on")
    max_attempts = max_attempts or state.DEFAULT_MAX_ATTEMPTS
    experiment_prefix = experiment_prefix or naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
    superseded: list[tuple[str, str]] = []
    if source:
        from rmeval import plan as planner

        p = planner.plan(
            source, prefix=prefix, store=store, max_attempts=max_attempts,
            retry_failed=retry_failed, allow_empty=True,
        )  # fmt: skip
        listed = p.store_runs  # the plan's one listing of the store
        others = {n: r for n, r in listed.items() if n not in p.states}  # not from source
        states = state.states(others, max_attempts=max_attempts, retry_failed=retry_failed)
        states.update(p.states)
        for r in p.to_run + p.done + p.running + p.given_up:
            states.setdefault(r.run, state.RunState(r.run, state.PLANNED))
        superseded = [(s.run, s.checkpoint) for s in p.superseded]
    else:
        listed = store_layout.list_runs(store)
        states = state.states(listed, max_attempts=max_attempts, retry_failed=retry_failed)
    scores = overalls({n: listed[n] for n, st in states.items() if st.state == state.DONE})
    beaker: dict[str, str] = {}
    if workspace:
        from rmeval.backends import beaker as beaker_backend

        beaker = beaker_backend.experiment_states(
            workspace, experiment_prefix, timeout=beaker_timeout
        )
    rows = []
    for name in sorted(states):
        st = states[name]
        detail, info = _detail(st, scores.get(name), max_attempts)
        exp = naming.eval_experiment_name(name, experiment_prefix) if workspace else None
        rows.append(
            Row(name, st.state, detail, scores.get(name), beaker.get(exp) if exp else None, info)
        )
    for run, ckpt in superseded:
        rows.append(Row(run, state.SUPERSEDED, f"{ckpt} (a later checkpoint is kept)"))
    order = {s: i for i, s in enumerate(ORDER)}
    rows.sort(key=lambda r: (order[r.state], r.run))
    return Status(store, rows)
