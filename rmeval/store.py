"""The results store's layout: ``<store>/<run>/``, the files run-one publishes there, which
runs are complete, reading their metrics, and publishing a run with metrics.json last.

A store is a local directory or a ``gs://`` prefix. Each run has one directory, named by
the run (:func:`rmeval.naming.run_name`)::

    <store>/<run>/scores.jsonl      the evaluator's per-pair scores
    <store>/<run>/provenance.json   where the run came from, how long each stage took
    <store>/<run>/metrics.json      the evaluator's metrics, written last: its presence
                                    means the run is complete
    <store>/<run>/claim.json        who runs it now: written by run-one before any work,
                                    renewed by its heartbeat, removed when it ends
    <store>/<run>/failed.json       the last failed attempt: stage, error, attempt number
                                    (:mod:`rmeval.state` reads and writes both)

and, for RewardBench 2 (run-one's ``benchmarks``), beside them and on the same rule::

    <store>/<run>/scores-rewardbench2.jsonl, provenance-rewardbench2.json,
    <store>/<run>/metrics-rewardbench2.json   its presence: done for RewardBench 2

metrics.json stays RewardBench's (v1) file, unchanged for the upstream fetch script. A run
is done for a benchmark when that benchmark's metrics file exists.

Hidden entries of the store (``.<name>``: staging directories such as
``.<run>.partial-…``) are not runs; files directly in the store are not runs either; files
deeper inside a run directory (e.g. a kept model's) only mark it as a run. Plan's done check
(:func:`completed_runs`) and collect (:func:`list_runs`, :func:`read_metrics`) read the store
through the same listing, so they always agree on which runs are complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rmeval import storage
from rmeval.errors import StoreError
from rmeval.procutil import bounded_map

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.jsonl"
PROVENANCE_FILE = "provenance.json"
CLAIM_FILE = "claim.json"
FAILED_FILE = "failed.json"
# gs:// custom metadata of metrics.json: the run's Overall, so that one listing of the store
# tells status every finished run's score without reading 10,000 files.
OVERALL_METADATA = "rmeval-overall"
METRICS_V2_FILE = "metrics-rewardbench2.json"
SCORES_V2_FILE = "scores-rewardbench2.jsonl"
PROVENANCE_V2_FILE = "provenance-rewardbench2.json"
V1, V2 = "rewardbench", "rewardbench2"  # the benchmark names of rmeval.rewardbench.data


@dataclass(frozen=True)
class BenchmarkFiles:
    metrics: str
    scores: str
    provenance: str


FILES: dict[str, BenchmarkFiles] = {
    V1: BenchmarkFiles(METRICS_FILE, SCORES_FILE, PROVENANCE_FILE),
    V2: BenchmarkFiles(METRICS_V2_FILE, SCORES_V2_FILE, PROVENANCE_V2_FILE),
}


def files_of(benchmark: str) -> BenchmarkFiles:
    try:
        return FILES[benchmark]
    except KeyError:
        raise StoreError(
            f"unknown benchmark {benchmark!r}; expected one of {', '.join(FILES)}"
        ) from None


STATE_FILES = (METRICS_FILE, SCORES_FILE, METRICS_V2_FILE, CLAIM_FILE, FAILED_FILE)


def run_dir(store: str | os.PathLike, run: str) -> str:
    """``<store>/<run>``: where one run's files live."""
    return storage.join(store, run)


def run_file(store: str | os.PathLike, run: str, name: str) -> str:
    """``<store>/<run>/<name>``, e.g. ``run_file(store, run, METRICS_FILE)``."""
    return storage.join(store, run, name)


def is_complete(store: str | os.PathLike, run: str, benchmark: str = V1) -> bool:
    """Whether ``run`` has published ``benchmark``'s metrics file (one lookup, no listing)."""
    return storage.exists(run_file(store, run, files_of(benchmark).metrics))


@dataclass(frozen=True)
class StoredRun:
    """One run directory of a store, as one listing of the store found it."""

    name: str
    uri: str  # the run directory
    metrics: storage.ObjectInfo | None = None
    scores: storage.ObjectInfo | None = None
    metrics_v2: storage.ObjectInfo | None = None
    claim: storage.ObjectInfo | None = None
    failed: storage.ObjectInfo | None = None

    @property
    def complete(self) -> bool:
        return self.metrics is not None

    def done(self, benchmark: str = V1) -> bool:
        """Whether the run has ``benchmark``'s metrics file."""
        return (self.metrics_v2 if benchmark == V2 else self.metrics) is not None


def list_runs(store: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, StoredRun]:
    """Every run directory of ``store`` by name, from one listing (see the module doc).
    A store that does not exist is a StoreError, or no runs when ``missing_ok``."""
    store = os.fspath(store)
    listing = storage.list_objects_if_any(store) if missing_ok else storage.list_objects(store)
    found: dict[str, dict[str, storage.ObjectInfo]] = {}
    for obj in listing:
        parts = obj.name.split("/")
        if len(parts) < 2 or parts[0].startswith("."):
            continue  # a file of the store itself, or a hidden / staging directory
        mine = found.setdefault(parts[0], {})
        if len(parts) == 2 and parts[1] in STATE_FILES:
            mine[parts[1]] = obj  # deeper files only mark the run directory
    return {
        run: StoredRun(
            run,
            run_dir(store, run),
            metrics=files.get(METRICS_FILE),
            scores=files.get(SCORES_FILE),
            metrics_v2=files.get(METRICS_V2_FILE),
            claim=files.get(CLAIM_FILE),
            failed=files.get(FAILED_FILE),
        )
        for run, files in found.items()
    }


def completed_runs(store: str | os.PathLike, benchmark: str = V1) -> set[str]:
    """Names of the runs done for ``benchmark`` (its metrics file is published; a missing
    store has none)."""
    files_of(benchmark)
    return {n for n, run in list_runs(store, missing_ok=True).items() if run.done(benchmark)}


def read_metrics(
    runs: Iterable[StoredRun], max_concurrency: int, total: int | None = None
) -> Iterator[tuple[StoredRun, storage.ObjectInfo, bytes | StoreError]]:
    """``(run, its metrics.json, the file's bytes or the StoreError reading it gave)`` for
    each complete run of ``runs``, ``max_concurrency`` reads at a time, in completion
    order."""

    def read(item: tuple[StoredRun, storage.ObjectInfo]):
        run, metrics = item
        try:
            return run, metrics, storage.read_bytes(metrics.uri)
        except StoreError as exc:
            return run, metrics, exc

    complete = ((r, r.metrics) for r in runs if r.metrics is not None)
    yield from bounded_map(read, complete, max_concurrency, total=total)


# A file to publish: a local file (uploaded), its bytes, or a function that gives the bytes
# when its turn comes (e.g. provenance, which records how long the uploads before it took).
Content = Path | bytes | Callable[[], bytes]


def publish(
    store: str | os.PathLike,
    run: str,
    files: Sequence[tuple[str, Content]],
    metrics: bytes,
    *,
    replace_metrics: bool = False,
    metrics_name: str = METRICS_FILE,
    overall: float | None = None,
) -> str:
    """Publish ``run``: ``files`` in order (each atomically, replacing what an unfinished
    attempt left), then metrics.json **last**, so that the run reads as complete only once
    everything else is there. An existing metrics.json is replaced only with
    ``replace_metrics``. ``metrics_name``: the benchmark's metrics file
    (:data:`FILES`). ``overall`` is stored as the metrics file's gs:// metadata
    (:data:`OVERALL_METADATA`). Returns the metrics file's URI."""
    for name, content in files:
        uri = run_file(store, run, name)
        if isinstance(content, Path):
            storage.upload_file(content, uri, overwrite=True)
        else:
            data = content if isinstance(content, bytes) else content()
            storage.write_bytes(uri, data, overwrite=True)
    metrics_uri = run_file(store, run, metrics_name)
    meta = {OVERALL_METADATA: repr(float(overall))} if overall is not None else None
    storage.write_bytes(metrics_uri, metrics, overwrite=replace_metrics, metadata=meta)
    return metrics_uri
