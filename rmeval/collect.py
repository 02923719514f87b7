"""Collect RewardBench metrics into the regressor table: read every run's metrics.json,
validate it, and join the runs with their features.

Sources (``--source``):

- a results store, a local directory or ``gs://`` prefix holding ``<run>/metrics.json`` as
  ``run-one`` publishes it (:mod:`rmeval.store`: metrics.json is written last, so its
  presence means done);
- ``beaker://ORG/WORKSPACE``: the workspace's experiments whose names contain the
  experiment prefix. Finalized, successful ones have their result dataset's
  ``metrics.json`` fetched (:func:`rmeval.backends.beaker.result_files`, concurrently,
  ``max_concurrency`` in flight at most). Unfinished and failed ones are listed as
  skipped; one whose results Beaker answers with an error is ``fetch_failed``.

Each run gives one row (columns: :mod:`rmeval.table`): ``model_type``, ``chat_template``,
``name``, ``scoring`` (the format that produced the accuracies, from ``chat_template``:
``trained`` or ``run_rm``, empty when unknown), ``weights``
(:data:`rmeval.rewardbench.scoring.WEIGHTS_ID`, the name and fingerprint of the section
weights), then the join's columns (counts: ``uuid`` and ``budget``), the four section
scores, ``Overall``, (``label``), the 23 subset accuracies and the feature columns. Scores
come from :mod:`rmeval.rewardbench.scoring` (official weights); accuracies are fractions. A
table whose rows come from more than one scoring format is reported (``mixed_scoring``).
A store run's provenance.json is read too: each row's score-changing settings
(:func:`rmeval.provenance.score_settings`: dtype, transformers major.minor, lock hash) go
into the columns sidecar (``settings``), and a table whose rows differ on one of them, or
mixes runs of unknown provenance with others, is reported (``mixed_settings``). Beaker
sources give no provenance: their rows' settings are ``unknown``.

A store's run directories without ``metrics.json`` are reported as ``incomplete_run``.
Metrics whose accuracies come from NaN or Inf rewards are left out (``nonfinite_rewards``):
when a subset's accuracy is exactly 0.0 and the run's ``scores.jsonl`` lies beside its
metrics.json, that file says whether any reward is not finite; without it, every subset at
0.0 (what NaN rewards give: every comparison is false) is taken as that sign.

Join modes, one :class:`Join` class each (names parsed by :mod:`rmeval.naming` only):

- :class:`CountsJoin` (``feature_counts_dir``): files
  ``regressor_feats_ID__<uuid>__SWAPS_<n>.json``, each a flat JSON object
  ``feature -> count``; joined on the key (uuid, budget) that both the run name and the file
  name carry. A run whose uuid has counts files for other budgets only is
  ``budget_mismatch`` (naming both). A feature absent from one file but present in others is
  a count of 0. ``budget`` is the run's ``SWAPS_<n>``, rescaled to a 7,000-example dataset
  when ``dataset_total_size`` is given.
- :class:`ExperimentsJoin` (experiments file): lines ``<experiment>::<feat1>___<feat2>…``;
  binary feature columns (``-`` in a feature name becomes ``=``), joined on the
  ``FEATS_<hash>_SWAPS`` hash.
- :class:`ScoresOnly`: neither; scores only.

Runs with the same join key ((uuid, budget), or (hash, budget)) under different names, e.g.
two prefixes, are ``duplicate_key``: the newest is kept.

Nothing is dropped silently: every run or file left out is an :class:`~rmeval.table.Issue`
(kind, name, detail, file and line where known), counted in the summary and written to the
issues sidecar; ``strict`` turns any issue into a :class:`~rmeval.errors.CollectError`.
Where the table goes (``--output`` or the results directory with history) is
:mod:`rmeval.results`'s.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

from rmeval import naming, provenance, results, storage
from rmeval import store as store_layout
from rmeval.backends import beaker as beaker_backend
from rmeval.errors import CollectError, StoreError, UsageError
from rmeval.procutil import bounded_map
from rmeval.rewardbench import formats, scoring, scoring_v2
from rmeval.store import METRICS_FILE, PROVENANCE_FILE, SCORES_FILE
from rmeval.table import (
    JOIN_COLUMNS,
    LABEL,
    META_COLUMNS,
    NAME,
    SCORING,
    SECTION_COLUMNS,
    SUBSET_COLUMNS,
    TARGET,
    TARGETS,
    V2_OVERALL,
    V2_PREFIX,
    WEIGHTS,
    Issue,
    Table,
    sorted_issues,
)

T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 32


@dataclass(frozen=True)
class RunMetrics:
    """One run's parsed metrics.json (``created``: when it was written, seconds since the
    epoch; ``scores_uri``: the run's scores.jsonl beside it, when the source has one)."""

    name: str
    uri: str
    metrics: dict[str, Any]
    created: float = 0.0
    scores_uri: str | None = None
    provenance: dict[str, Any] | None = None  # its provenance.json, when the source has one
    metrics_v2: dict[str, Any] | None = None  # the run's RewardBench 2 file, when it has one


# --------------------------------------------------------------------------- sources


def is_beaker_source(source: str) -> bool:
    return str(source).startswith(beaker_backend.SCHEME)


def beaker_workspace(source: str) -> str:
    ws = str(source)[len(beaker_backend.SCHEME) :].strip("/")
    if ws.count("/") != 1 or not all(ws.split("/")):
        raise UsageError(f"{source}: expected beaker://ORG/WORKSPACE")
    return ws


def fetch_store(
    root: str,
    *,
    experiment_prefix: str | None = None,
    names: Collection[str] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> tuple[list[RunMetrics], list[Issue]]:
    """Read ``<root>/<run>/metrics.json`` for every run of the store (whose name contains
    ``experiment_prefix`` when given, and is one of ``names`` when given),
    ``max_concurrency`` reads at a time. Run directories without metrics.json are
    ``incomplete_run`` issues (:func:`rmeval.store.list_runs` says what a run is)."""
    stored = [
        r
        for r in store_layout.list_runs(root).values()
        if (not experiment_prefix or experiment_prefix in r.name)
        and (names is None or r.name in names)
    ]
    issues = [
        Issue(
            "incomplete_run",
            r.name,
            f"no {METRICS_FILE}: not finished, failed or interrupted",
            file=r.uri,
        )
        for r in sorted(stored, key=lambda r: r.name)
        if not r.complete
    ]
    complete = [r for r in stored if r.complete]
    v2 = _read_v2(complete, max_concurrency, issues)
    runs: list[RunMetrics] = []
    for run, info, parsed in _parsed(complete, parse_metrics, max_concurrency, issues):
        runs.append(
            RunMetrics(
                run.name,
                info.uri,
                parsed.metrics,
                created=info.updated.timestamp() if info.updated else 0.0,
                scores_uri=run.scores.uri if run.scores else None,
                metrics_v2=v2.get(run.name),
            )
        )
    return _with_provenance(root, runs, max_concurrency), issues


def _with_provenance(root: str, runs: list[RunMetrics], max_concurrency: int) -> list[RunMetrics]:
    """``runs`` with their provenance.json (None where it is missing or unreadable: the
    run's settings are then unknown, :mod:`rmeval.provenance`)."""

    def read(i: int) -> tuple[int, dict[str, Any] | None]:
        uri = store_layout.run_file(root, runs[i].name, PROVENANCE_FILE)
        try:
            obj = json.loads(storage.read_bytes(uri))
        except (StoreError, ValueError):
            return i, None
        return i, obj if isinstance(obj, dict) else None

    found = dict(bounded_map(read, iter(range(len(runs))), max_concurrency, desc="provenance"))
    return [replace(r, provenance=found.get(i)) for i, r in enumerate(runs)]


def _read_v2(
    complete: list[store_layout.StoredRun], max_concurrency: int, issues: list[Issue]
) -> dict[str, dict[str, Any]]:
    """The RewardBench 2 metrics of the runs that have them, by run name; a malformed file
    is a ``malformed_metrics`` issue (the run's v1 row stays, its v2 cells empty)."""
    have = [replace(r, metrics=r.metrics_v2) for r in complete if r.metrics_v2 is not None]
    return {
        run.name: parsed
        for run, _, parsed in _parsed(have, parse_metrics_v2, max_concurrency, issues)
    }


def _parsed(
    runs: list[store_layout.StoredRun],
    parse: Callable[[str, str, bytes], T | Issue],
    max_concurrency: int,
    issues: list[Issue],
) -> Iterator[tuple[store_layout.StoredRun, storage.ObjectInfo, T]]:
    """Each run's metrics file (``run.metrics``) read concurrently and parsed; a file that
    cannot be read or parsed becomes its issue instead."""
    for run, info, raw in store_layout.read_metrics(runs, max_concurrency, total=len(runs)):
        if isinstance(raw, StoreError):
            issues.append(Issue("missing_metrics", run.name, str(raw), file=info.uri))
            continue
        parsed = parse(run.name, info.uri, raw)
        if isinstance(parsed, Issue):
            issues.append(parsed)
        else:
            yield run, info, parsed


def parse_metrics_v2(name: str, uri: str, raw: bytes) -> dict[str, Any] | Issue:
    """A RewardBench 2 metrics file: a JSON object with a finite number for each of the six
    subsets (Ties' formula can go a little below 0 or above 1)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Issue("malformed_metrics", name, f"not JSON ({exc})", file=uri)
    if not isinstance(obj, dict):
        return Issue("malformed_metrics", name, "expected an object", file=uri)
    bad = [
        f"{s}={obj.get(s)!r}"
        for s in scoring_v2.SUBSETS
        if isinstance(obj.get(s), bool)
        or not isinstance(obj.get(s), (int, float))
        or not math.isfinite(obj[s])
    ]
    if bad:
        return Issue(
            "malformed_metrics",
            name,
            f"RewardBench 2 subset scores must be numbers: {', '.join(bad)}",
            file=uri,
        )
    return obj


def fetch_beaker(
    workspace: str,
    *,
    experiment_prefix: str | None = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    names: Collection[str] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    timeout: float | None = None,
) -> tuple[list[RunMetrics], list[Issue]]:
    """Metrics of the finalized, successful experiments of ``workspace`` whose names contain
    ``experiment_prefix`` (and are one of ``names`` when given); the others are returned as
    issues (:func:`rmeval.backends.beaker.result_files`; ``timeout``: see
    :func:`rmeval.backends.beaker.client`)."""
    runs: list[RunMetrics] = []
    issues: list[Issue] = []
    for got in beaker_backend.result_files(
        workspace,
        METRICS_FILE,
        experiment_prefix=experiment_prefix,
        names=names,
        max_concurrency=max_concurrency,
        timeout=timeout,
        error=CollectError,
    ):
        if isinstance(got, Issue):
            issues.append(got)
            continue
        parsed = parse_metrics(got.name, got.uri, got.data)
        if isinstance(parsed, Issue):
            issues.append(parsed)
        else:
            runs.append(RunMetrics(parsed.name, parsed.uri, parsed.metrics, got.created))
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
    v2 = run.metrics_v2 or {}
    row[V2_OVERALL] = scoring_v2.overall(v2)
    row.update({V2_PREFIX + s: v2.get(s) for s in scoring_v2.SUBSETS})
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
        raise CollectError(f"feature counts dir {directory}: {exc}") from exc
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
        raise CollectError(f"experiments file {path}: {exc}") from exc
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


# --------------------------------------------------------------------------- joins

JoinKey = tuple[str, int | None]  # (uuid or feature hash, budget)


@dataclass
class Joined:
    """A run that joined: its join columns (``cells``) and its feature columns."""

    run: RunMetrics
    cells: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)


class Join(ABC):
    """How rows get their features: one subclass per join mode. ``issues`` are what
    loading the feature input found (bad files, bad lines)."""

    mode: ClassVar[str]  # the table's (and its HISTORY record's) "mode"
    columns: ClassVar[tuple[str, ...]] = ()  # meta columns the join adds to each row

    def __init__(self, issues: list[Issue] | None = None) -> None:
        self.issues = list(issues or [])

    @abstractmethod
    def join(self, runs: list[RunMetrics]) -> tuple[list[Joined], list[Issue]]:
        """The runs that join, with their cells, and an issue for every run that does not
        and every feature entry no run matched."""


class ScoresOnly(Join):
    """No features: every run is a row of scores."""

    mode = "scores"

    def join(self, runs: list[RunMetrics]) -> tuple[list[Joined], list[Issue]]:
        return [Joined(r) for r in runs], []


class _KeyedJoin(Join):
    """A join on a key parsed from the run name; of several runs with one key the newest
    is kept (``duplicate_key``)."""

    what: ClassVar[str]  # the key's first part, as duplicate_key issues name it

    @abstractmethod
    def key(self, run: RunMetrics) -> JoinKey | Issue:
        """The run's join key, or the ``unparsable_name`` issue when its name lacks it."""

    @abstractmethod
    def match(self, keyed: list[tuple[RunMetrics, JoinKey]]) -> tuple[list[Joined], list[Issue]]:
        """Join runs with distinct keys to their feature entries (see :meth:`Join.join`)."""

    def join(self, runs: list[RunMetrics]) -> tuple[list[Joined], list[Issue]]:
        issues: list[Issue] = []
        groups: dict[JoinKey, list[RunMetrics]] = {}
        for r in runs:
            key = self.key(r)
            if isinstance(key, Issue):
                issues.append(key)
            else:
                groups.setdefault(key, []).append(r)
        keyed = []
        for key, group in groups.items():
            group.sort(key=lambda r: (-r.created, r.name))
            keyed.append((group[0], key))
            budget = f" and SWAPS_{key[1]}" if key[1] is not None else ""
            for dup in group[1:]:
                issues.append(
                    Issue(
                        "duplicate_key",
                        dup.name,
                        f"same {self.what} {key[0]}{budget} as {group[0].name}, which is kept "
                        "(newer, or first by name)",
                        file=dup.uri,
                    )
                )
        joined, more = self.match(keyed)
        return joined, issues + more


class CountsJoin(_KeyedJoin):
    """Feature counts files, joined on (uuid, budget); see the module doc."""

    mode = "counts"
    columns = JOIN_COLUMNS
    what = "uuid"

    def __init__(
        self,
        by_uuid: dict[str, list[tuple[int, dict, str]]],
        issues: list[Issue] | None = None,
        dataset_total_size: int | None = None,
    ) -> None:
        super().__init__(issues)
        self.by_uuid = by_uuid
        self.dataset_total_size = dataset_total_size

    @classmethod
    def load(cls, directory: str, dataset_total_size: int | None = None) -> CountsJoin:
        by_uuid, issues = load_feature_counts(directory)
        return cls(by_uuid, issues, dataset_total_size)

    def key(self, run: RunMetrics) -> JoinKey | Issue:
        uuid = naming.parse_uuid(run.name)
        budget = naming.parse_budget(run.name)
        if uuid is None or budget is None:
            missing = "ID__<uuid>__" if uuid is None else "SWAPS_<n>"
            return Issue(
                "unparsable_name",
                run.name,
                f"no {missing} in the run name (counts files are keyed by uuid and budget)",
                file=run.uri,
            )
        return uuid, budget

    def match(self, keyed: list[tuple[RunMetrics, JoinKey]]) -> tuple[list[Joined], list[Issue]]:
        joined: list[Joined] = []
        issues: list[Issue] = []
        used: set[str] = set()  # counts files joined
        named: set[str] = set()  # counts files a budget_mismatch issue already names
        for r, (uuid, budget) in keyed:
            entries = self.by_uuid.get(uuid, [])
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
            if self.dataset_total_size is not None and budget is not None:
                budget = naming.rescale_budget(budget, self.dataset_total_size)
            joined.append(Joined(r, {"uuid": uuid, "budget": budget}, dict(counts)))
        # Per file, not per uuid: a file of a joined uuid with another budget is reported too.
        joined_uuids = {
            u for u, entries in self.by_uuid.items() if any(e[2] in used for e in entries)
        }
        for uuid in sorted(self.by_uuid):
            for budget, _, uri in self.by_uuid[uuid]:
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
        return joined, issues


class ExperimentsJoin(_KeyedJoin):
    """An experiments file's binary features, joined on the feature hash; see the module
    doc."""

    mode = "experiments"
    what = "feature hash"

    def __init__(
        self,
        by_hash: dict[str, tuple[str, list[str], int]],
        issues: list[Issue] | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(issues)
        self.by_hash = by_hash
        self.path = path

    @classmethod
    def load(cls, path: str) -> ExperimentsJoin:
        by_hash, issues = load_experiments_file(path)
        return cls(by_hash, issues, path)

    def key(self, run: RunMetrics) -> JoinKey | Issue:
        h = naming.parse_feature_hash(run.name)
        if h is None:
            return Issue(
                "unparsable_name", run.name, "no FEATS_<hash>_SWAPS in the run name", file=run.uri
            )
        return h, naming.parse_budget(run.name)

    def match(self, keyed: list[tuple[RunMetrics, JoinKey]]) -> tuple[list[Joined], list[Issue]]:
        joined: list[Joined] = []
        issues: list[Issue] = []
        used: set[str] = set()  # hashes joined
        for r, (h, _) in keyed:
            entry = self.by_hash.get(h)
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
            joined.append(Joined(r, features=dict.fromkeys(entry[1], 1)))
        for h in sorted(set(self.by_hash) - used):
            exp, _, lineno = self.by_hash[h]
            issues.append(
                Issue(
                    "features_without_run",
                    exp,
                    f"no run with hash {h}",
                    file=self.path,
                    line=lineno,
                )
            )
        return joined, issues


def join_for(
    feature_counts_dir: str | None = None,
    experiments_file: str | None = None,
    dataset_total_size: int | None = None,
) -> Join:
    """The join the options ask for, its (small) feature input read already, so that a bad
    path fails before any metrics are fetched."""
    if feature_counts_dir and experiments_file:
        raise UsageError("give either --feature-counts-dir or --experiments-file, not both")
    if dataset_total_size is not None and not feature_counts_dir:
        raise UsageError("--dataset-total-size rescales budgets of --feature-counts-dir runs only")
    if dataset_total_size is not None and dataset_total_size <= 0:
        raise UsageError(f"--dataset-total-size must be positive, got {dataset_total_size}")
    if feature_counts_dir:
        return CountsJoin.load(feature_counts_dir, dataset_total_size)
    if experiments_file:
        return ExperimentsJoin.load(experiments_file)
    return ScoresOnly()


# --------------------------------------------------------------------------- the table


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


def _mixed_settings(settings: dict[str, dict[str, str]], unknown: list[str]) -> list[Issue]:
    """One ``mixed_settings`` issue when the rows disagree on a setting that can change a
    score (:data:`rmeval.provenance.SCORE_FIELDS`; scoring has its own issue), or when some
    rows' provenance is unknown (``unknown``: written before it was recorded) and others'
    is not: nobody can tell whether they agree."""
    fields = [f for f in provenance.SCORE_FIELDS if f != SCORING]
    old = set(unknown)
    known = (s for n, s in settings.items() if n not in old)
    differ = provenance.disagreements({f: s[f] for f in fields} for s in known)
    parts = [f"{f}: {' | '.join(v)}" for f, v in differ.items()]
    names = list(differ)
    if unknown and len(unknown) < len(settings):
        more = f", … (+{len(unknown) - 3})" if len(unknown) > 3 else ""
        parts.append(f"unknown provenance: {', '.join(unknown[:3])}{more}")
        names.append("provenance")
    if not parts:
        return []
    detail = "a table should come from one environment and dtype; " + "; ".join(parts)
    return [Issue("mixed_settings", ", ".join(names), detail)]


def build_table(
    runs: Iterable[RunMetrics],
    *,
    join: Join | None = None,
    gpt4_threshold: float | None = None,
    target: str = TARGET,
) -> Table:
    """Rows from validated runs, joined with features by ``join`` (default: scores only).
    ``target``: the score column the regressor predicts (``Overall`` or RewardBench 2's
    ``rb2_Overall``); rows are sorted by it, the columns sidecar names it."""
    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if gpt4_threshold is not None and not 0.0 <= gpt4_threshold <= 1.0:
        raise UsageError(
            f"--gpt4-threshold {gpt4_threshold} is outside [0, 1]; scores are fractions (e.g. 0.85)"
        )
    join = join if join is not None else ScoresOnly()
    issues: list[Issue] = list(join.issues)
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

    joined, more = join.join(finite)
    issues += more
    meta = [*META_COLUMNS, *join.columns]
    rows: list[dict[str, Any]] = []
    features: set[str] = set()
    for j in joined:
        row = metrics_row(j.run)
        row.update(j.cells)
        row.update(j.features)
        features.update(j.features)
        rows.append(row)

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
    run_of = {j.run.name: j.run for j in joined}
    settings = {r[NAME]: provenance.score_settings(run_of[r[NAME]].provenance) for r in rows}
    unknown = sorted(n for n in settings if provenance.is_unknown(run_of[n].provenance))
    issues += _mixed_settings(settings, unknown)
    has_v2 = any(r.metrics_v2 is not None for r in finite)
    if target != TARGET and not has_v2:
        raise CollectError(
            f"--target {target}: no run has RewardBench 2 metrics "
            f"({store_layout.METRICS_V2_FILE}); run with benchmarks: [rewardbench2]"
        )
    rows.sort(key=lambda row: (row[target] is None, -(row[target] or 0.0), row[NAME]))
    return Table(
        rows=rows,
        meta_columns=meta,
        feature_columns=feature_columns,
        label=gpt4_threshold is not None,
        issues=sorted_issues(issues),
        mode=join.mode,
        runs_seen=runs_seen,
        settings=settings,
        v2=has_v2,
        target=target,
    )


# --------------------------------------------------------------------------- entry points


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
    target: str = TARGET,
) -> Table:
    """Fetch the source's metrics and build the table (see the module doc). For a Beaker
    source the experiment prefix defaults to ``rm-eval-``; a store takes every run.
    ``names``: only these exact run (store) or experiment (Beaker) names.
    ``beaker_timeout``: see :func:`rmeval.backends.beaker.client`."""
    join = join_for(feature_counts_dir, experiments_file, dataset_total_size)
    prefix: str | None
    if is_beaker_source(source):
        prefix = (
            naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
            if experiment_prefix is None
            else experiment_prefix
        )
        runs, issues = fetch_beaker(
            beaker_workspace(source),
            experiment_prefix=prefix,
            names=names,
            max_concurrency=max_concurrency,
            timeout=beaker_timeout,
        )
    else:
        prefix = experiment_prefix
        try:
            runs, issues = fetch_store(
                source, experiment_prefix=prefix, names=names, max_concurrency=max_concurrency
            )
        except StoreError as exc:
            raise CollectError(f"results store: {exc}") from exc
    table = build_table(runs, join=join, gpt4_threshold=gpt4_threshold, target=target)
    table.issues = sorted_issues(table.issues + issues)
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


def collect_and_write(
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
) -> results.Outcome:
    """The ``collect`` command: check where the table goes
    (:func:`rmeval.results.destination`), :func:`collect`, then (unless ``dry_run``) write
    it there. ``strict`` refuses to write anything when there is any issue; ``options``
    are :func:`collect`'s."""
    where = results.destination(
        output=output,
        overwrite=overwrite,
        results_dir=results_dir,
        dataset=dataset,
        table_name=table_name,
        dry_run=dry_run,
    )
    table = collect(source, **options)
    if strict:
        check_strict(table)
    if where is None:
        return results.Outcome(table)
    return where.write(table, allow_shrink=allow_shrink, command=command)
