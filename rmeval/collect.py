"""Collect RewardBench metrics into the regressor table.

Sources (``--source``):

- a results store, a local directory or ``gs://`` prefix holding ``<run>/metrics.json`` as
  ``run-one`` publishes it (metrics.json is written last: its presence means done);
- ``beaker://ORG/WORKSPACE``: the workspace's experiments whose names contain the
  experiment prefix. Finalized, successful ones have their result dataset's
  ``metrics.json`` fetched through beaker-py, concurrently (``max_concurrency`` in flight
  at most, fed while the listing pages arrive). Unfinished and failed ones are listed as
  skipped.

Each run gives one row: ``model_type``, ``chat_template``, ``name``, ``scoring`` (the format
that produced the accuracies, from ``chat_template``: ``trained`` or ``run_rm``, empty when
unknown), ``weights`` (:data:`rmeval.rewardbench.scoring.WEIGHTS_ID`, the name and fingerprint
of the section weights), then (counts mode) ``uuid`` and ``budget``, the four section scores,
``Overall``, (``label``), the 23 subset accuracies and the feature columns. Scores come from
:mod:`rmeval.rewardbench.scoring` (official weights); accuracies are fractions. A table whose
rows come from more than one scoring format is reported (``mixed_scoring``).

A store's run directories without ``metrics.json`` are reported as ``incomplete_run``.
Metrics whose accuracies come from NaN or Inf rewards are left out (``nonfinite_rewards``):
when a subset's accuracy is exactly 0.0 and the run's ``scores.jsonl`` lies beside its
metrics.json, that file says whether any reward is not finite; without it, every subset at
0.0 (what NaN rewards give: every comparison is false) is taken as that sign.

Join modes (names parsed by :mod:`rmeval.naming` only):

- counts (``feature_counts_dir``): files ``regressor_feats_ID__<uuid>__SWAPS_<n>.json``,
  each a flat JSON object ``feature -> count``; joined on the key (uuid, budget) that both
  the run name and the file name carry. A run whose uuid has counts files for other budgets
  only is ``budget_mismatch`` (naming both). A feature absent from one file but present in
  others is a count of 0. ``budget`` is the run's ``SWAPS_<n>``, rescaled to a
  7,000-example dataset when ``dataset_total_size`` is given.
- experiments file: lines ``<experiment>::<feat1>___<feat2>…``; binary feature columns
  (``-`` in a feature name becomes ``=``), joined on the ``FEATS_<hash>_SWAPS`` hash.
- neither: scores only.

Runs with the same join key ((uuid, budget), or (hash, budget)) under different names, e.g.
two prefixes, are ``duplicate_key``: the newest is kept.

Nothing is dropped silently: every run or file left out is an :class:`Issue` (kind, name,
detail, file and line where known), counted in the summary and written to the issues
sidecar; ``strict`` turns any issue into a :class:`~rmeval.errors.CollectError`.

The CSV is deterministic: fixed column order (meta, sections, Overall, label, subsets,
features sorted by name), rows by Overall descending then name, floats with
:data:`FLOAT_DIGITS` decimals, ``\\n`` line ends; it is written atomically next to a
``<table>.columns.json`` sidecar that says which columns are features and which is the
target (the fit command reads it).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rmeval import naming, storage
from rmeval.errors import CollectError, StoreError, UsageError
from rmeval.rewardbench import formats, scoring
from rmeval.run import METRICS_FILE, SCORES_FILE

log = logging.getLogger(__name__)

BEAKER_SCHEME = "beaker://"
FLOAT_DIGITS = 6
DEFAULT_MAX_CONCURRENCY = 32
TARGET = scoring.OVERALL
LABEL = "label"
NAME = "name"
SCORING = "scoring"
WEIGHTS = "weights"
META_COLUMNS = ("model_type", "chat_template", NAME, SCORING, WEIGHTS)
JOIN_COLUMNS = ("uuid", "budget")
SUBSET_COLUMNS: tuple[str, ...] = scoring.SUBSETS
SECTION_COLUMNS: tuple[str, ...] = scoring.SECTION_NAMES
COLUMNS_SUFFIX = ".columns.json"
ISSUES_SUFFIX = ".issues.json"

# Issue kinds, in the order the summary lists them.
ISSUE_KINDS: dict[str, str] = {
    "skipped_unfinished": "experiment not finished yet",
    "skipped_failed": "experiment failed or was canceled",
    "incomplete_run": "run directory without metrics.json (unfinished, failed or interrupted)",
    "missing_metrics": "finished, but no metrics.json in its results",
    "malformed_metrics": "metrics.json is not a valid RewardBench metrics object",
    "incomplete_metrics": "metrics.json lacks RewardBench subsets",
    "nonfinite_rewards": "accuracies computed from NaN or Inf rewards (row left out)",
    "unknown_keys": "metrics.json has keys that are neither subsets nor meta (row kept)",
    "duplicate_run": "the same run name appears more than once (one kept)",
    "duplicate_key": "several runs share one join key, e.g. uuid and budget (newest kept)",
    "mixed_scoring": "rows scored in different formats (see the scoring column)",
    "unparsable_name": "a name lacks the pattern the join needs",
    "run_without_features": "run has no matching feature entry",
    "budget_mismatch": "the uuid's counts files are for other budgets (row left out)",
    "features_without_run": "feature entry has no matching run",
    "ambiguous_features": "several feature entries match one run",
    "bad_feature_file": "feature counts file is not a flat JSON object of numbers",
    "bad_experiments_line": "experiments-file line is not '<experiment>::<feat>___<feat>'",
}


@dataclass(frozen=True)
class Issue:
    """One thing left out of (or questionable in) the table."""

    kind: str
    name: str
    detail: str
    file: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = f" ({self.file}{f':{self.line}' if self.line else ''})" if self.file else ""
        return f"{self.kind}: {self.name}: {self.detail}{where}"


@dataclass(frozen=True)
class RunMetrics:
    """One run's parsed metrics.json (``created``: when it was written, seconds since the
    epoch; ``scores_uri``: the run's scores.jsonl beside it, when the source has one)."""

    name: str
    uri: str
    metrics: dict[str, Any]
    created: float = 0.0
    scores_uri: str | None = None


@dataclass
class Table:
    """The collected table: column groups, rows (dicts keyed by column) and issues."""

    rows: list[dict[str, Any]]
    meta_columns: list[str]
    feature_columns: list[str]
    label: bool
    issues: list[Issue] = field(default_factory=list)
    source: str = ""
    experiment_prefix: str | None = None
    mode: str = "scores"
    runs_seen: int = 0

    @property
    def columns(self) -> list[str]:
        return [
            *self.meta_columns,
            *SECTION_COLUMNS,
            TARGET,
            *([LABEL] if self.label else []),
            *SUBSET_COLUMNS,
            *self.feature_columns,
        ]

    def columns_spec(self) -> dict[str, Any]:
        """What the columns.json sidecar holds (the fit command reads ``features`` and
        ``target``)."""
        return {
            "target": TARGET,
            "meta": self.meta_columns,
            "sections": list(SECTION_COLUMNS),
            "label": LABEL if self.label else None,
            "subsets": list(SUBSET_COLUMNS),
            "features": self.feature_columns,
            "mode": self.mode,
            "float_digits": FLOAT_DIGITS,
            WEIGHTS: {"id": scoring.WEIGHTS_ID, "counts": dict(scoring.EXAMPLE_COUNTS)},
        }

    def scoring_counts(self) -> dict[str, int]:
        """Rows per scoring format (``""``: unknown), as the HISTORY record keeps them."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row[SCORING]] = counts.get(row[SCORING], 0) + 1
        return dict(sorted(counts.items()))

    def issue_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in ISSUE_KINDS:
            n = sum(1 for i in self.issues if i.kind == kind)
            if n:
                counts[kind] = n
        return counts

    def summary(self, limit: int = 5) -> str:
        """Human summary: rows, then each issue kind with its count and first names."""
        lines = [
            f"{len(self.rows)} row(s) from {self.runs_seen} run(s) at {self.source}"
            f" ({self.mode}; {len(self.feature_columns)} feature column(s))"
        ]
        for kind, n in self.issue_counts().items():
            names = [i.name for i in self.issues if i.kind == kind]
            shown = ", ".join(names[:limit]) + (f", … (+{n - limit})" if n > limit else "")
            lines.append(f"  {kind}: {n} — {ISSUE_KINDS[kind]}: {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- sources


def is_beaker_source(source: str) -> bool:
    return str(source).startswith(BEAKER_SCHEME)


def beaker_workspace(source: str) -> str:
    ws = str(source)[len(BEAKER_SCHEME) :].strip("/")
    if ws.count("/") != 1 or not all(ws.split("/")):
        raise UsageError(f"{source}: expected beaker://ORG/WORKSPACE")
    return ws


def _progress(total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=None, leave=False)


def fetch_store(
    root: str,
    *,
    experiment_prefix: str | None = None,
    names: Collection[str] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> tuple[list[RunMetrics], list[Issue]]:
    """Read ``<root>/<run>/metrics.json`` for every run (whose name contains
    ``experiment_prefix`` when given, and is one of ``names`` when given),
    ``max_concurrency`` reads at a time. Run directories without metrics.json are
    ``incomplete_run`` issues; hidden ones (``.<run>.partial-…`` staging) are not runs."""
    files: dict[str, dict[str, storage.ObjectInfo]] = {}  # run -> {metrics/scores: object}
    for obj in storage.list_objects(root):
        parts = obj.name.split("/")
        if len(parts) < 2 or parts[0].startswith("."):
            continue  # a file of the store itself, or a hidden / staging directory
        run = parts[0]
        if experiment_prefix and experiment_prefix not in run:
            continue
        if names is not None and run not in names:
            continue
        mine = files.setdefault(run, {})
        if len(parts) == 2 and parts[1] in (METRICS_FILE, SCORES_FILE):
            mine[parts[1]] = obj  # deeper files (e.g. a kept model's) only mark the run dir
    issues = [
        Issue(
            "incomplete_run",
            run,
            f"no {METRICS_FILE}: not finished, failed or interrupted",
            file=storage.join(root, run),
        )
        for run in sorted(files)
        if METRICS_FILE not in files[run]
    ]
    found = [(run, objs) for run, objs in files.items() if METRICS_FILE in objs]
    runs: list[RunMetrics] = []

    def read(item: tuple[str, dict[str, storage.ObjectInfo]]) -> RunMetrics | Issue:
        run, objs = item
        info = objs[METRICS_FILE]
        try:
            raw = storage.read_bytes(info.uri)
        except StoreError as exc:
            return Issue("missing_metrics", run, str(exc), file=info.uri)
        parsed = parse_metrics(run, info.uri, raw)
        if isinstance(parsed, Issue):
            return parsed
        scores = objs.get(SCORES_FILE)
        return RunMetrics(
            run,
            info.uri,
            parsed.metrics,
            created=info.updated.timestamp() if info.updated else 0.0,
            scores_uri=scores.uri if scores else None,
        )

    for result in _bounded_map(read, iter(found), max_concurrency, total=len(found)):
        (runs if isinstance(result, RunMetrics) else issues).append(result)
    return runs, issues


def _bounded_map(
    fn: Callable[[Any], Any],
    items: Iterator[Any],
    max_concurrency: int,
    total: int | None = None,
    desc: str = "collect",
    initializer: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """``fn`` over ``items`` on ``max_concurrency`` threads, never more than that many in
    flight (items are pulled lazily, so a paged listing overlaps with the fetches).
    Results come back in completion order."""
    if max_concurrency < 1:
        raise UsageError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    with (
        cf.ThreadPoolExecutor(max_workers=max_concurrency, initializer=initializer) as pool,
        _progress(total, desc) as bar,
    ):
        pending: set[cf.Future] = set()
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < max_concurrency:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(fn, item))
            if not pending:
                break
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                bar.update(1)
                yield fut.result()


def fetch_beaker(
    workspace: str,
    *,
    experiment_prefix: str | None = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    names: Collection[str] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    client: Any | None = None,
    timeout: float | None = None,
) -> tuple[list[RunMetrics], list[Issue]]:
    """Metrics of the finalized, successful experiments of ``workspace`` whose names contain
    ``experiment_prefix`` (and are one of ``names`` when given); the others are returned as
    skipped issues. ``timeout``: see :func:`rmeval.backends.beaker.client`."""
    from beaker import beaker_pb2 as pb2
    from beaker.exceptions import (
        BeakerChecksumFailedError,
        BeakerError,
        BeakerNotFoundError,
    )

    from rmeval.backends import beaker as beaker_backend

    runs: list[RunMetrics] = []
    issues: list[Issue] = []
    with contextlib.ExitStack() as stack:
        b = (
            client
            if client is not None
            else stack.enter_context(beaker_backend.client(timeout=timeout))
        )
        ws = beaker_backend.get_workspace(
            b, workspace, error=CollectError, expected="beaker://ORG/WORKSPACE"
        )
        # Resolve the organization once, not once per job listing.
        org = pb2.Organization(id=b.job.resolve_org_id())
        b.service  # noqa: B018 - open the gRPC channel before the threads share it
        uri_base = f"{BEAKER_SCHEME}{workspace}"
        unfinished = {
            pb2.STATUS_SUBMITTED,
            pb2.STATUS_QUEUED,
            pb2.STATUS_INITIALIZING,
            pb2.STATUS_RUNNING,
            pb2.STATUS_STOPPING,
            pb2.STATUS_UPLOADING_RESULTS,
            pb2.STATUS_READY_TO_START,
        }

        def listing() -> Iterator[Any]:
            for wl in b.workload.list(workspace=ws, name_or_description=experiment_prefix):
                if not wl.HasField("experiment"):
                    continue
                name = wl.experiment.name
                if experiment_prefix and experiment_prefix not in (name or ""):
                    continue  # matched on the description only
                if names is not None and name not in names:
                    continue
                yield wl

        def fetch(wl: Any) -> RunMetrics | Issue:
            name = wl.experiment.name or wl.experiment.id
            uri = f"{uri_base}/{wl.experiment.id}"
            created = wl.experiment.created.ToNanoseconds() / 1e9
            if wl.status in unfinished:
                status = pb2.WorkloadStatus.Name(wl.status).removeprefix("STATUS_").lower()
                return Issue("skipped_unfinished", name, f"status {status}", file=uri)
            if wl.status in (pb2.STATUS_FAILED, pb2.STATUS_CANCELED):
                status = pb2.WorkloadStatus.Name(wl.status).removeprefix("STATUS_").lower()
                return Issue("skipped_failed", name, f"status {status}", file=uri)
            if not wl.experiment.tasks:
                return Issue("missing_metrics", name, "experiment has no tasks", file=uri)
            try:
                jobs = list(
                    b.job.list(org=org, task=wl.experiment.tasks[0], sort_field="created", limit=1)
                )
                if not jobs:
                    return Issue("skipped_unfinished", name, "no job yet", file=uri)
                job = jobs[0]
                if not job.status.HasField("finalized"):
                    return Issue("skipped_unfinished", name, "latest job not finalized", file=uri)
                if job.status.exit_code != 0 or job.status.HasField("canceled"):
                    return Issue(
                        "skipped_failed",
                        name,
                        f"latest job exit code {job.status.exit_code}",
                        file=uri,
                    )
                ds_id = job.assignment_details.result_dataset_id
                if not ds_id:
                    return Issue("missing_metrics", name, "job has no result dataset", file=uri)
                # stream_file needs only the dataset's id: no GetDataset round trip.
                raw = b"".join(b.dataset.stream_file(pb2.Dataset(id=ds_id), METRICS_FILE))
            except FileNotFoundError:
                return Issue(
                    "missing_metrics", name, f"no {METRICS_FILE} in the result dataset", file=uri
                )
            except BeakerChecksumFailedError as exc:
                return Issue("malformed_metrics", name, str(exc), file=uri)
            except BeakerNotFoundError:
                return Issue("missing_metrics", name, "result dataset not found", file=uri)
            except BeakerError as exc:
                raise CollectError(
                    f"Beaker: cannot read results of experiment {name!r} ({uri}): {exc}"
                ) from None
            parsed = parse_metrics(name, f"{uri}/{METRICS_FILE}", raw)
            if isinstance(parsed, RunMetrics):
                parsed = RunMetrics(parsed.name, parsed.uri, parsed.metrics, created)
            return parsed

        # Each worker thread keeps one HTTP session (beaker-py's sessions are per thread and
        # otherwise opened and closed around every request).
        for result in _bounded_map(
            fetch, listing(), max_concurrency, desc="beaker", initializer=b.__enter__
        ):
            (runs if isinstance(result, RunMetrics) else issues).append(result)
    return runs, issues


# --------------------------------------------------------------------------- metrics


def parse_metrics(name: str, uri: str, raw: bytes) -> RunMetrics | Issue:
    """Validate one metrics.json: a JSON object, every RewardBench subset present with an
    accuracy in [0, 1]. Returns the run or the issue that keeps it out."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Issue("malformed_metrics", name, f"not JSON ({exc})", file=uri)
    if not isinstance(obj, dict):
        return Issue(
            "malformed_metrics", name, f"expected an object, got {type(obj).__name__}", file=uri
        )
    bad = []
    for subset in scoring.SUBSETS:
        if subset not in obj:
            continue
        v = obj[subset]
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or math.isnan(v)
            or not 0.0 <= v <= 1.0
        ):
            bad.append(f"{subset}={v!r}")
    if bad:
        return Issue(
            "malformed_metrics",
            name,
            f"accuracies must be numbers in [0, 1]: {', '.join(bad)}",
            file=uri,
        )
    missing = [s for s in scoring.SUBSETS if s not in obj]
    if missing:
        return Issue(
            "incomplete_metrics",
            name,
            f"{len(missing)} subset(s) missing: {', '.join(missing)}",
            file=uri,
        )
    return RunMetrics(name, uri, obj)


def metrics_row(run: RunMetrics) -> dict[str, Any]:
    """Meta, section scores, Overall and subset accuracies of one run."""
    acc = scoring.subset_accuracies(run.metrics)
    row: dict[str, Any] = {
        "model_type": _meta_text(run.metrics.get("model_type")),
        "chat_template": _meta_text(run.metrics.get("chat_template")),
        NAME: run.name,
        SCORING: formats.scoring_of_label(run.metrics.get("chat_template")) or "",
        WEIGHTS: scoring.WEIGHTS_ID,
    }
    row.update(scoring.summarize(acc))
    row.update({s: acc[s] for s in SUBSET_COLUMNS})
    return row


def _count_nonfinite(scores_uri: str) -> tuple[int, int] | None:
    """``(rows with a NaN or Inf number, rows)`` of a scores.jsonl, or ``None`` when it
    cannot be read as JSON lines (then it tells nothing)."""
    try:
        text = storage.read_text(scores_uri)
    except (StoreError, UnicodeDecodeError):
        return None
    bad = total = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)  # reads NaN / Infinity as floats, as json.dumps writes them
        except json.JSONDecodeError:
            return None
        if not isinstance(row, dict):
            return None
        total += 1
        bad += any(isinstance(v, float) and not math.isfinite(v) for v in row.values())
    return bad, total


def nonfinite_issue(run: RunMetrics) -> Issue | None:
    """The ``nonfinite_rewards`` issue of a run whose accuracies come from NaN or Inf
    rewards, when that can be told (see the module doc); ``None`` otherwise."""
    zeros = [s for s in SUBSET_COLUMNS if run.metrics.get(s) == 0]
    if not zeros:
        return None
    counted = _count_nonfinite(run.scores_uri) if run.scores_uri else None
    if counted is not None:
        bad, total = counted
        if not bad:
            return None  # finite rewards: the zeros are real
        return Issue(
            "nonfinite_rewards",
            run.name,
            f"{bad} of {total} pairs in {SCORES_FILE} have a NaN or Inf reward, so their "
            "comparisons are false; fix the checkpoint (or --dtype) and evaluate it again",
            file=run.scores_uri,
        )
    if len(zeros) < len(SUBSET_COLUMNS):
        return None
    return Issue(
        "nonfinite_rewards",
        run.name,
        "every subset accuracy is 0.0, which is what NaN or Inf rewards give (every comparison "
        "false); check the checkpoint for non-finite values and evaluate it again",
        file=run.uri,
    )


def _meta_text(v: Any) -> str:
    return "" if v is None else str(v)


# --------------------------------------------------------------------------- features


def load_feature_counts(
    directory: str,
) -> tuple[dict[str, list[tuple[int, dict, str]]], list[Issue]]:
    """``uuid -> [(budget, {feature: count}, file)]`` from ``directory``'s ``*.json``."""
    by_uuid: dict[str, list[tuple[int, dict, str]]] = {}
    issues: list[Issue] = []
    try:
        objs = list(storage.list_objects(directory, match="*.json"))
    except StoreError as exc:
        raise CollectError(f"feature counts dir {directory}: {exc}") from None
    for obj in objs:
        if "/" in obj.name:
            continue  # only the directory's own files
        parsed = naming.parse_feature_counts_filename(obj.name)
        if parsed is None:
            issues.append(
                Issue(
                    "unparsable_name",
                    obj.name,
                    "not regressor_feats_ID__<uuid>__SWAPS_<n>.json",
                    file=obj.uri,
                )
            )
            continue
        uuid, budget = parsed
        try:
            data = json.loads(storage.read_bytes(obj.uri).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            issues.append(Issue("bad_feature_file", obj.name, f"not JSON ({exc})", file=obj.uri))
            continue
        if not isinstance(data, dict):
            issues.append(
                Issue(
                    "bad_feature_file",
                    obj.name,
                    f"expected an object, got {type(data).__name__}",
                    file=obj.uri,
                )
            )
            continue
        bad = [
            k
            for k, v in data.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ]
        if bad:
            issues.append(
                Issue(
                    "bad_feature_file",
                    obj.name,
                    f"values must be finite numbers; not for key(s) {', '.join(map(repr, bad[:3]))}",
                    file=obj.uri,
                )
            )
            continue
        by_uuid.setdefault(uuid, []).append((budget, data, obj.uri))
    return by_uuid, issues


def load_experiments_file(path: str) -> tuple[dict[str, tuple[str, list[str], int]], list[Issue]]:
    """``feature hash -> (experiment, [features], line)`` from an experiments file."""
    try:
        text = storage.read_text(path)
    except (StoreError, UnicodeDecodeError) as exc:
        raise CollectError(f"experiments file {path}: {exc}") from None
    out: dict[str, tuple[str, list[str], int]] = {}
    issues: list[Issue] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "::" not in line:
            issues.append(
                Issue(
                    "bad_experiments_line", line[:80], "no '::' separator", file=path, line=lineno
                )
            )
            continue
        exp, _, feats = line.partition("::")
        exp = exp.strip()
        names = [
            naming.experiments_file_feature(f.strip()) for f in feats.split("___") if f.strip()
        ]
        if not exp or not names:
            issues.append(
                Issue(
                    "bad_experiments_line",
                    line[:80],
                    "empty experiment or feature list",
                    file=path,
                    line=lineno,
                )
            )
            continue
        h = naming.parse_feature_hash(exp)
        if h is None:
            issues.append(
                Issue(
                    "unparsable_name",
                    exp,
                    "no FEATS_<hash>_SWAPS in the experiment",
                    file=path,
                    line=lineno,
                )
            )
            continue
        if h in out:
            issues.append(
                Issue(
                    "ambiguous_features",
                    exp,
                    f"hash {h} already given on line {out[h][2]} (first kept)",
                    file=path,
                    line=lineno,
                )
            )
            continue
        out[h] = (exp, names, lineno)
    return out, issues


# --------------------------------------------------------------------------- the table


def _join_key(r: RunMetrics, mode: str, issues: list[Issue]) -> tuple[str, int | None] | None:
    """The run's join key: (uuid, budget) in counts mode, (feature hash, budget or None) in
    experiments mode, ``None`` in scores mode or when the name lacks it (an issue then)."""
    if mode == "counts":
        uuid = naming.parse_uuid(r.name)
        budget = naming.parse_budget(r.name)
        if uuid is None or budget is None:
            missing = "ID__<uuid>__" if uuid is None else "SWAPS_<n>"
            issues.append(
                Issue(
                    "unparsable_name",
                    r.name,
                    f"no {missing} in the run name (counts files are keyed by uuid and budget)",
                    file=r.uri,
                )
            )
            return None
        return uuid, budget
    if mode == "experiments":
        h = naming.parse_feature_hash(r.name)
        if h is None:
            issues.append(
                Issue(
                    "unparsable_name", r.name, "no FEATS_<hash>_SWAPS in the run name", file=r.uri
                )
            )
            return None
        return h, naming.parse_budget(r.name)
    return None


def _drop_duplicate_keys(
    keyed: list[tuple[RunMetrics, Any]], mode: str, issues: list[Issue]
) -> list[tuple[RunMetrics, Any]]:
    """One run per join key: the newest (then the first by name); the others are
    ``duplicate_key`` issues naming the run kept."""
    groups: dict[Any, list[RunMetrics]] = {}
    for r, key in keyed:
        groups.setdefault(key, []).append(r)
    out = []
    for key, group in groups.items():
        group.sort(key=lambda r: (-r.created, r.name))
        out.append((group[0], key))
        what = "uuid" if mode == "counts" else "feature hash"
        budget = f" and SWAPS_{key[1]}" if key[1] is not None else ""
        for dup in group[1:]:
            issues.append(
                Issue(
                    "duplicate_key",
                    dup.name,
                    f"same {what} {key[0]}{budget} as {group[0].name}, which is kept (newer, "
                    "or first by name)",
                    file=dup.uri,
                )
            )
    return out


def _mixed_scoring(rows: list[dict[str, Any]]) -> list[Issue]:
    """One ``mixed_scoring`` issue when the rows come from more than one scoring format."""
    by_format: dict[str, list[str]] = {}
    for row in rows:
        by_format.setdefault(row[SCORING] or "unknown", []).append(row[NAME])
    if len(by_format) < 2:
        return []
    parts = []
    for fmt, names in sorted(by_format.items()):
        names.sort()
        more = f", … (+{len(names) - 3})" if len(names) > 3 else ""
        parts.append(f"{fmt}: {', '.join(names[:3])}{more}")
    counts = ", ".join(f"{fmt}={len(names)}" for fmt, names in sorted(by_format.items()))
    return [
        Issue(
            "mixed_scoring",
            counts,
            f"a table should hold one scoring format (its {SCORING} column, from chat_template); "
            + "; ".join(parts),
        )
    ]


def build_table(
    runs: Iterable[RunMetrics],
    *,
    feature_counts: Mapping[str, list[tuple[int, dict, str]]] | None = None,
    experiments: Mapping[str, tuple[str, list[str], int]] | None = None,
    experiments_file: str | None = None,
    dataset_total_size: int | None = None,
    gpt4_threshold: float | None = None,
) -> Table:
    """Rows from validated runs, joined with features (at most one of the two modes)."""
    if feature_counts is not None and experiments is not None:
        raise UsageError("give either --feature-counts-dir or --experiments-file, not both")
    if gpt4_threshold is not None and not 0.0 <= gpt4_threshold <= 1.0:
        raise UsageError(
            f"--gpt4-threshold {gpt4_threshold} is outside [0, 1]; scores are fractions (e.g. 0.85)"
        )
    issues: list[Issue] = []
    # Duplicates: keep the newest (then the first by URI); report the rest.
    by_name: dict[str, list[RunMetrics]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    unique: list[RunMetrics] = []
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda r: (-r.created, r.uri))
        unique.append(group[0])
        for dup in group[1:]:
            issues.append(
                Issue("duplicate_run", name, f"also at {group[0].uri} (kept)", file=dup.uri)
            )
    runs_seen = sum(len(g) for g in by_name.values())
    for r in unique:
        unknown = scoring.unknown_subsets(r.metrics)
        if unknown:
            issues.append(Issue("unknown_keys", r.name, ", ".join(unknown), file=r.uri))
    finite: list[RunMetrics] = []
    for r in unique:
        bad = nonfinite_issue(r)
        if bad is not None:
            issues.append(bad)
        else:
            finite.append(r)

    mode = (
        "counts"
        if feature_counts is not None
        else "experiments"
        if experiments is not None
        else "scores"
    )
    meta = list(META_COLUMNS) + (list(JOIN_COLUMNS) if mode == "counts" else [])
    rows: list[dict[str, Any]] = []
    features: set[str] = set()
    used: set[str] = set()  # joined feature keys (counts file URI / hash)
    named: set[str] = set()  # counts files a budget_mismatch issue already names

    keyed: list[tuple[RunMetrics, tuple[str, int | None] | None]] = []
    for r in finite:
        key = _join_key(r, mode, issues)
        if key is not None or mode == "scores":
            keyed.append((r, key))
    if mode != "scores":
        keyed = _drop_duplicate_keys(keyed, mode, issues)

    for r, key in keyed:
        row = metrics_row(r)
        if mode == "counts":
            uuid, budget = key  # type: ignore[misc]
            entries = feature_counts.get(uuid, [])  # type: ignore[union-attr]
            if not entries:
                issues.append(
                    Issue(
                        "run_without_features",
                        r.name,
                        f"no counts file for uuid {uuid}",
                        file=r.uri,
                    )
                )
                continue
            matching = [e for e in entries if e[0] == budget]
            if not matching:
                files = ", ".join(sorted(storage.basename(e[2]) for e in entries))
                named.update(e[2] for e in entries)
                issues.append(
                    Issue(
                        "budget_mismatch",
                        r.name,
                        f"the run says SWAPS_{budget}, but uuid {uuid} has counts for other "
                        f"budgets only: {files}",
                        file=r.uri,
                    )
                )
                continue
            if len(matching) > 1:
                files = ", ".join(sorted(storage.basename(e[2]) for e in matching))
                issues.append(
                    Issue(
                        "ambiguous_features", r.name, f"several counts files: {files}", file=r.uri
                    )
                )
                continue
            _, counts, counts_uri = matching[0]
            used.add(counts_uri)
            row["uuid"] = uuid
            if dataset_total_size is not None:
                budget = naming.rescale_budget(budget, dataset_total_size)
            row["budget"] = budget
            row.update(counts)
            features.update(counts)
        elif mode == "experiments":
            h = key[0]  # type: ignore[index]
            entry = experiments.get(h)  # type: ignore[union-attr]
            if entry is None:
                issues.append(
                    Issue(
                        "run_without_features",
                        r.name,
                        f"hash {h} not in the experiments file",
                        file=r.uri,
                    )
                )
                continue
            used.add(h)
            for f in entry[1]:
                row[f] = 1
            features.update(entry[1])
        rows.append(row)

    if mode == "counts":
        # Per file, not per uuid: a file of a joined uuid with another budget is reported too.
        joined_uuids = {
            u for u, entries in feature_counts.items() if any(e[2] in used for e in entries)
        }  # type: ignore[union-attr]
        for uuid in sorted(feature_counts):  # type: ignore[arg-type]
            for budget, _, uri in feature_counts[uuid]:  # type: ignore[index]
                if uri in used or uri in named:
                    continue
                detail = (
                    f"no run with uuid {uuid} and SWAPS_{budget}"
                    if uuid in joined_uuids
                    else f"no run with uuid {uuid}"
                )
                issues.append(
                    Issue("features_without_run", storage.basename(uri), detail, file=uri)
                )
    elif mode == "experiments":
        for h in sorted(set(experiments) - used):  # type: ignore[arg-type]
            exp, _, lineno = experiments[h]  # type: ignore[index]
            issues.append(
                Issue(
                    "features_without_run",
                    exp,
                    f"no run with hash {h}",
                    file=experiments_file,
                    line=lineno,
                )
            )

    feature_columns = sorted(features)
    clash = set(feature_columns) & {*meta, *SECTION_COLUMNS, TARGET, LABEL, *SUBSET_COLUMNS}
    if clash:
        raise CollectError(
            f"feature name(s) {sorted(clash)} clash with table columns; rename them in the feature files"
        )
    for row in rows:
        for f in feature_columns:
            row.setdefault(f, 0)
        if gpt4_threshold is not None:
            row[LABEL] = int(row[TARGET] > gpt4_threshold)
    issues += _mixed_scoring(rows)
    rows.sort(key=lambda row: (-row[TARGET], row[NAME]))
    return Table(
        rows=rows,
        meta_columns=meta,
        feature_columns=feature_columns,
        label=gpt4_threshold is not None,
        issues=sorted(
            issues,
            key=lambda i: (list(ISSUE_KINDS).index(i.kind), i.name, i.file or "", i.line or 0),
        ),
        mode=mode,
        runs_seen=runs_seen,
    )


# --------------------------------------------------------------------------- output


def format_value(v: Any) -> str:
    """Fixed, platform-independent text for one cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{FLOAT_DIGITS}f}"
    return str(v)


def render_csv(table: Table) -> str:
    """The table as CSV text (``\\n`` line ends, minimal quoting)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = table.columns
    w.writerow(cols)
    for row in table.rows:
        w.writerow([format_value(row.get(c)) for c in cols])
    return buf.getvalue()


def render_columns(table: Table) -> str:
    return json.dumps(table.columns_spec(), indent=2, ensure_ascii=False) + "\n"


def render_issues(table: Table) -> str:
    doc = {
        "source": table.source,
        "experiment_prefix": table.experiment_prefix,
        "counts": table.issue_counts(),
        "issues": [i.as_dict() for i in table.issues],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def sidecar(table_path: str | os.PathLike, suffix: str) -> str:
    """``x.csv`` -> ``x.columns.json`` / ``x.issues.json`` (``.csv`` stripped if present)."""
    p = os.fspath(table_path)
    base = p[:-4] if p.endswith(".csv") else p
    return base + suffix


def columns_path(table_path: str | os.PathLike) -> str:
    """Where the columns sidecar of a table lives (for the fit command)."""
    return sidecar(table_path, COLUMNS_SUFFIX)


def read_columns(table_path: str | os.PathLike) -> dict[str, Any]:
    """The columns sidecar of a table: ``target``, ``features``, ``meta`` …"""
    path = columns_path(table_path)
    try:
        return json.loads(storage.read_text(path))
    except StoreError as exc:
        raise CollectError(f"{path}: {exc}; collect the table again to write it") from None
    except json.JSONDecodeError as exc:
        raise CollectError(f"{path}: not JSON ({exc}); collect the table again") from None


def count_rows(csv_text: str) -> int:
    """Data rows of a CSV text (the header and blank lines not counted)."""
    return max(0, sum(1 for row in csv.reader(io.StringIO(csv_text)) if row) - 1)


def check_shrink(where: str, old_rows: int, new_rows: int, allow_shrink: bool = False) -> None:
    """Refuse to replace a table of ``old_rows`` rows by one with fewer than half as many (an
    empty or mistyped source looks like that), unless ``allow_shrink``."""
    if allow_shrink or 2 * new_rows >= old_rows:
        return
    raise CollectError(
        f"{where}: the new table has {new_rows} row(s), the one there {old_rows}; refusing to "
        "drop more than half of its rows (check --source; pass --allow-shrink to replace it)"
    )


def write_table(table: Table, output: str, *, overwrite: bool = False) -> list[str]:
    """Write the CSV and its columns and issues sidecars; each appears whole or not at all.
    Refuses to replace an existing table unless ``overwrite``. Returns the paths."""
    paths = [output, sidecar(output, COLUMNS_SUFFIX), sidecar(output, ISSUES_SUFFIX)]
    if not overwrite:
        for p in paths:
            if storage.exists(p):
                raise CollectError(f"{p}: already exists; pass --overwrite to replace it")
    texts = [render_csv(table), render_columns(table), render_issues(table)]
    # Sidecars first, the table last: a reader that sees the table sees its sidecars. If a
    # write fails, the sidecars this call created are removed again.
    created: list[str] = []
    try:
        for p, text in zip(paths[1:] + paths[:1], texts[1:] + texts[:1], strict=True):
            existed = overwrite and storage.exists(p)
            storage.write_text(p, text, overwrite=overwrite)
            if not existed:
                created.append(p)
    except BaseException:
        for p in created:
            with contextlib.suppress(Exception):
                storage.delete(p)
        raise
    return paths


# --------------------------------------------------------------------------- entry point


def collect(
    source: str,
    *,
    experiment_prefix: str | None = None,
    names: Collection[str] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    feature_counts_dir: str | None = None,
    experiments_file: str | None = None,
    dataset_total_size: int | None = None,
    gpt4_threshold: float | None = None,
    beaker_timeout: float | None = None,
) -> Table:
    """Fetch the source's metrics and build the table (see the module doc). For a Beaker
    source the experiment prefix defaults to ``rm-eval-``; a store takes every run.
    ``names``: only these exact run (store) or experiment (Beaker) names.
    ``beaker_timeout``: see :func:`rmeval.backends.beaker.client`."""
    if feature_counts_dir and experiments_file:
        raise UsageError("give either --feature-counts-dir or --experiments-file, not both")
    if dataset_total_size is not None and not feature_counts_dir:
        raise UsageError("--dataset-total-size rescales budgets of --feature-counts-dir runs only")
    if dataset_total_size is not None and dataset_total_size <= 0:
        raise UsageError(f"--dataset-total-size must be positive, got {dataset_total_size}")
    # Read the (small) feature inputs first, so a bad path fails before any fetching.
    counts = exps = None
    issues: list[Issue] = []
    if feature_counts_dir:
        counts, more = load_feature_counts(feature_counts_dir)
        issues += more
    if experiments_file:
        exps, more = load_experiments_file(experiments_file)
        issues += more
    if is_beaker_source(source):
        prefix = (
            naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
            if experiment_prefix is None
            else experiment_prefix
        )
        runs, more = fetch_beaker(
            beaker_workspace(source),
            experiment_prefix=prefix,
            names=names,
            max_concurrency=max_concurrency,
            timeout=beaker_timeout,
        )
    else:
        prefix = experiment_prefix
        try:
            runs, more = fetch_store(
                source, experiment_prefix=prefix, names=names, max_concurrency=max_concurrency
            )
        except StoreError as exc:
            raise CollectError(f"results store: {exc}") from None
    issues += more
    table = build_table(
        runs,
        feature_counts=counts,
        experiments=exps,
        experiments_file=experiments_file,
        dataset_total_size=dataset_total_size,
        gpt4_threshold=gpt4_threshold,
    )
    table.issues = sorted(
        table.issues + issues,
        key=lambda i: (list(ISSUE_KINDS).index(i.kind), i.name, i.file or "", i.line or 0),
    )
    table.source = source
    table.experiment_prefix = prefix
    return table


def check_strict(table: Table) -> None:
    """Raise CollectError when the table has any issue (``--strict``)."""
    if table.issues:
        counts = ", ".join(f"{k}={n}" for k, n in table.issue_counts().items())
        first = table.issues[0]
        raise CollectError(
            f"--strict: {len(table.issues)} issue(s) ({counts}); first: {first}; nothing written"
        )


@dataclass
class Outcome:
    """What :func:`run` did: the table, the files written, the history record (results
    mode) and whether the results were unchanged."""

    table: Table
    written: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None
    unchanged: bool = False


def run(
    source: str,
    *,
    output: str | None = None,
    overwrite: bool = False,
    results_dir: str | None = None,
    dataset: str | None = None,
    table_name: str | None = None,
    strict: bool = False,
    dry_run: bool = False,
    command: str | None = None,
    allow_shrink: bool = False,
    **options: Any,
) -> Outcome:
    """The ``collect`` command: :func:`collect`, then (unless ``dry_run``) write the table to
    ``output`` or into the results directory with history (:func:`rmeval.results.update`).
    ``strict`` refuses to write anything when there is any issue; replacing a table by one
    with fewer than half its rows needs ``allow_shrink`` (:func:`check_shrink`)."""
    results_mode = any(x is not None for x in (results_dir, dataset, table_name))
    if results_mode and not all(x is not None for x in (results_dir, dataset, table_name)):
        raise UsageError("--results-dir, --dataset and --table go together")
    if results_mode and output is not None:
        raise UsageError("give either --output or --results-dir/--dataset/--table, not both")
    if not results_mode and output is None and not dry_run:
        raise UsageError("nowhere to write: give --output, or --results-dir/--dataset/--table")
    if output is not None and not overwrite and not dry_run:
        for p in (output, sidecar(output, COLUMNS_SUFFIX), sidecar(output, ISSUES_SUFFIX)):
            if storage.exists(p):
                raise CollectError(f"{p}: already exists; pass --overwrite to replace it")
    if results_mode:
        from rmeval import results

        results.table_path(results_dir, dataset, table_name)  # validate before fetching
    table = collect(source, **options)
    if strict:
        check_strict(table)
    out = Outcome(table)
    if dry_run:
        return out
    if output is not None:
        if storage.exists(output):  # only with overwrite: checked above
            old_rows = count_rows(storage.read_text(output))
            check_shrink(output, old_rows, len(table.rows), allow_shrink)
        out.written = write_table(table, output, overwrite=overwrite)
    else:
        from rmeval import results

        out.record = results.update(
            table, results_dir, dataset, table_name, command=command, allow_shrink=allow_shrink
        )
        out.unchanged = out.record is None
        if out.record is not None:
            path = results.table_path(results_dir, dataset, table_name)
            out.written = [str(path), sidecar(path, COLUMNS_SUFFIX), sidecar(path, ISSUES_SUFFIX)]
    return out
