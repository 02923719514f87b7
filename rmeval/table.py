"""The collected table and its files: columns, rows and issues; the CSV and its JSON sidecars;
the paths of what is built beside it (fit, report, figures, the dataset's history).

This module imports no stage: collect builds a :class:`Table`, results writes it with
history, fit reads its columns sidecar, the pipeline and report find their files through
:class:`TablePaths`.

Columns, in order: meta (``model_type``, ``chat_template``, ``name``, ``scoring``,
``weights``, then the join's own, e.g. ``uuid`` and ``budget``), the four section scores,
``Overall``, (``label``), the 23 subset accuracies, the feature columns sorted by name.

The CSV is deterministic: that column order, rows by Overall descending then name, floats
with :data:`FLOAT_DIGITS` decimals, ``\\n`` line ends. It is written atomically next to a
``<table>.columns.json`` sidecar that says which columns are features and which is the
target (the fit command reads it) and a ``<table>.issues.json`` sidecar naming every run or
file left out (:class:`Issue`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rmeval import storage
from rmeval.errors import AlreadyExistsError, CollectError, StoreError
from rmeval.rewardbench import scoring, scoring_v2

FLOAT_DIGITS = 6
TARGET = scoring.OVERALL  # the default target; ``--target`` picks another score column
LABEL = "label"
NAME = "name"
SCORING = "scoring"
WEIGHTS = "weights"
META_COLUMNS = ("model_type", "chat_template", NAME, SCORING, WEIGHTS)
JOIN_COLUMNS = ("uuid", "budget")
SUBSET_COLUMNS: tuple[str, ...] = scoring.SUBSETS
SECTION_COLUMNS: tuple[str, ...] = scoring.SECTION_NAMES
# RewardBench 2 columns, after the v1 ones when any run has RewardBench 2 metrics: its six
# subset scores and its Overall (their mean), each under this prefix.
V2_PREFIX = "rb2_"
V2_OVERALL = V2_PREFIX + scoring_v2.OVERALL
V2_SUBSET_COLUMNS: tuple[str, ...] = tuple(V2_PREFIX + s for s in scoring_v2.SUBSETS)
V2_COLUMNS: tuple[str, ...] = (V2_OVERALL, *V2_SUBSET_COLUMNS)
TARGETS: tuple[str, ...] = (TARGET, V2_OVERALL)

# Files of a table, beside its CSV (<stem>.csv) and in its dataset directory.
COLUMNS_SUFFIX = ".columns.json"
ISSUES_SUFFIX = ".issues.json"
FIT_SUFFIX = ".fit"  # <stem>.<model>.fit/: the fit says its model kind
REPORT_SUFFIX = ".report.ipynb"
FIGURES_SUFFIX = "_figures"  # beside a notebook: <notebook stem>_figures/
HISTORY_FILE = "HISTORY.jsonl"
README_FILE = "README.md"  # the dataset's browsable report (rmeval.readme)

# Issue kinds, in the order the summary lists them.
ISSUE_KINDS: dict[str, str] = {
    "skipped_unfinished": "experiment not finished yet",
    "skipped_failed": "experiment failed or was canceled",
    "incomplete_run": "run directory without metrics.json (unfinished, failed or interrupted)",
    "missing_metrics": "finished, but no metrics.json in its results",
    "fetch_failed": "Beaker answered the request for its results with an error (row left out)",
    "malformed_metrics": "metrics.json is not a valid RewardBench metrics object",
    "incomplete_metrics": "metrics.json lacks RewardBench subsets",
    "nonfinite_rewards": "accuracies computed from NaN or Inf rewards (row left out)",
    "unknown_keys": "metrics.json has keys that are neither subsets nor meta (row kept)",
    "duplicate_run": "the same run name appears more than once (one kept)",
    "duplicate_key": "several runs share one join key, e.g. uuid and budget (newest kept)",
    "mixed_scoring": "rows scored in different formats (see the scoring column)",
    "mixed_settings": "rows from different software or settings: dtype, transformers "
    "major.minor, lock file (the columns sidecar's settings name each run's)",
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


def sorted_issues(issues: Iterable[Issue]) -> list[Issue]:
    """Issues in the order the summary and the sidecar list them: by kind, then name."""
    kinds = list(ISSUE_KINDS)
    return sorted(issues, key=lambda i: (kinds.index(i.kind), i.name, i.file or "", i.line or 0))


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
    # run name -> the settings that can change its scores (rmeval.provenance.score_settings)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    v2: bool = False  # whether the RewardBench 2 columns are in the table
    target: str = TARGET

    @property
    def columns(self) -> list[str]:
        return [
            *self.meta_columns,
            *SECTION_COLUMNS,
            TARGET,
            *([LABEL] if self.label else []),
            *SUBSET_COLUMNS,
            *(V2_COLUMNS if self.v2 else ()),
            *self.feature_columns,
        ]

    def columns_spec(self) -> dict[str, Any]:
        """What the columns.json sidecar holds (the fit command reads ``features`` and
        ``target``)."""
        extra = {"rewardbench2": list(V2_COLUMNS)} if self.v2 else {}
        return {
            "target": self.target,
            **extra,
            "meta": self.meta_columns,
            "sections": list(SECTION_COLUMNS),
            "label": LABEL if self.label else None,
            "subsets": list(SUBSET_COLUMNS),
            "features": self.feature_columns,
            "mode": self.mode,
            "float_digits": FLOAT_DIGITS,
            WEIGHTS: {"id": scoring.WEIGHTS_ID, "counts": dict(scoring.EXAMPLE_COUNTS)},
            "settings": {name: self.settings[name] for name in sorted(self.settings)},
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


# --------------------------------------------------------------------------- rendering


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


def count_rows(csv_text: str) -> int:
    """Data rows of a CSV text (the header and blank lines not counted)."""
    return max(0, sum(1 for row in csv.reader(io.StringIO(csv_text)) if row) - 1)


# --------------------------------------------------------------------------- paths


def _stem(table_path: str | os.PathLike) -> str:
    p = os.fspath(table_path)
    return p[:-4] if p.endswith(".csv") else p


def sidecar(table_path: str | os.PathLike, suffix: str) -> str:
    """``x.csv`` -> ``x.columns.json`` / ``x.issues.json`` (``.csv`` stripped if present)."""
    return _stem(table_path) + suffix


def columns_path(table_path: str | os.PathLike) -> str:
    """Where the columns sidecar of a table lives (for the fit command)."""
    return sidecar(table_path, COLUMNS_SUFFIX)


def table_files(table_path: str | os.PathLike) -> list[str]:
    """The files one table is: the CSV, its columns sidecar and its issues sidecar."""
    p = os.fspath(table_path)
    return [p, sidecar(p, COLUMNS_SUFFIX), sidecar(p, ISSUES_SUFFIX)]


def figures_dir(notebook: str | os.PathLike) -> Path:
    """Where the PNGs of a report ``notebook`` go: ``<stem>_figures`` beside it."""
    p = Path(notebook)
    return p.with_name(f"{p.stem}{FIGURES_SUFFIX}")


@dataclass(frozen=True)
class TablePaths:
    """Every file of a table in a results directory (``<dataset>/<table>.csv``): its
    sidecars, the fit directory (one per model kind) and the report the pipeline builds
    beside it, the report's figures, the dataset's HISTORY.jsonl and README.md."""

    csv: Path

    @property
    def columns(self) -> Path:
        return Path(sidecar(self.csv, COLUMNS_SUFFIX))

    @property
    def issues(self) -> Path:
        return Path(sidecar(self.csv, ISSUES_SUFFIX))

    def fit_dir(self, model: str = "linear") -> Path:
        """``<stem>.<model>.fit``: the fit of one model kind (linear, quadratic …)."""
        return Path(sidecar(self.csv, f".{model}{FIT_SUFFIX}"))

    @property
    def report(self) -> Path:
        return Path(sidecar(self.csv, REPORT_SUFFIX))

    @property
    def figures(self) -> Path:
        return figures_dir(self.report)

    @property
    def history(self) -> Path:
        return self.csv.parent / HISTORY_FILE

    @property
    def readme(self) -> Path:
        return self.csv.parent / README_FILE


# --------------------------------------------------------------------------- files


def read_columns(table_path: str | os.PathLike) -> dict[str, Any]:
    """The columns sidecar of a table: ``target``, ``features``, ``meta`` …"""
    path = columns_path(table_path)
    try:
        return json.loads(storage.read_text(path))
    except StoreError as exc:
        raise CollectError(f"{path}: {exc}; collect the table again to write it") from exc
    except json.JSONDecodeError as exc:
        raise CollectError(f"{path}: not JSON ({exc}); collect the table again") from exc


def refuse_existing(table_path: str | os.PathLike) -> None:
    """CollectError naming the first of the table's files that exists already."""
    for p in table_files(table_path):
        if storage.exists(p):
            raise AlreadyExistsError(p)


def write_table(table: Table, output: str, *, overwrite: bool = False) -> list[str]:
    """Write the CSV and its columns and issues sidecars; each appears whole or not at all.
    Refuses to replace an existing table unless ``overwrite``. Returns the paths."""
    paths = table_files(output)
    if not overwrite:
        refuse_existing(output)
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
