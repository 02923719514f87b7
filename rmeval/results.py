"""The committed results tables and their versioned history.

``update(table, results_dir, dataset, name)`` writes ``<results_dir>/<dataset>/<name>.csv``
(with its ``.columns.json`` and ``.issues.json`` sidecars, see :mod:`rmeval.collect`) and
appends one record to ``<results_dir>/<dataset>/HISTORY.jsonl``::

    {"version": 3, "time": "2026-11-28T12:00:00+00:00", "table": "counts-runs.csv",
     "source": "beaker://ai2/evals", "prefix": "rm-eval-helpsteer2-count",
     "rows": {"total": 120, "added": 4, "changed": 1, "removed": 0}, "issues": 2,
     "sha256": "<of the CSV bytes>", "rmeval_version": "0.1.0", "git_sha": "<HEAD or null>",
     "command": "rmeval collect …"}

Rows are matched by their ``name`` column. An update whose CSV and sidecars are byte-equal
to what is there writes nothing and returns ``None``. Every file is replaced atomically;
the history line is appended last, so a record always describes files that exist.

The results directory is a local path (it is committed to git by the fetch-results
workflow).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rmeval import __version__, naming, storage
from rmeval.collect import (
    COLUMNS_SUFFIX,
    ISSUES_SUFFIX,
    NAME,
    Table,
    render_columns,
    render_csv,
    render_issues,
    sidecar,
)
from rmeval.errors import NamingError, ResultsError, UsageError
from rmeval.procutil import git_head

log = logging.getLogger(__name__)

HISTORY_FILE = "HISTORY.jsonl"


@dataclass(frozen=True)
class RowDiff:
    total: int
    added: int
    changed: int
    removed: int


def table_path(results_dir: str | os.PathLike, dataset: str, name: str) -> Path:
    """``<results_dir>/<dataset>/<name>.csv``; dataset and name must be plain file names."""
    results_dir = os.fspath(results_dir)
    if storage.is_gcs(results_dir):
        raise UsageError(
            f"--results-dir {results_dir}: must be a local directory (it is committed to git)"
        )
    try:
        naming.safe_component(dataset, what="--dataset")
        naming.safe_component(name, what="--table")
    except NamingError as exc:
        raise UsageError(str(exc)) from None
    stem = name[:-4] if name.endswith(".csv") else name
    return storage.local_path(results_dir) / dataset / f"{stem}.csv"


def _rows_by_name(text: str) -> dict[str, tuple[str, ...]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return {}
    if NAME not in header:
        raise ResultsError(f"existing table has no {NAME!r} column; move it away and collect again")
    i = header.index(NAME)
    out: dict[str, tuple[str, ...]] = {}
    for row in reader:
        if len(row) != len(header):
            raise ResultsError(
                f"existing table row {len(out) + 2} has {len(row)} cells, header has {len(header)}"
            )
        out[row[i]] = tuple(zip(header, row, strict=True))  # type: ignore[arg-type]
    return out


def diff_rows(old_csv: str, new_csv: str) -> RowDiff:
    """Rows added / changed / removed between two CSV texts, matched on ``name``. A row
    counts as changed when any cell differs or the columns changed."""
    old = _rows_by_name(old_csv)
    new = _rows_by_name(new_csv)
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    changed = sum(1 for k in new.keys() & old.keys() if new[k] != old[k])
    return RowDiff(total=len(new), added=added, changed=changed, removed=removed)


def _existing_ancestor(p: Path) -> Path:
    """The nearest existing directory at or above ``p`` (the results dir may be new)."""
    p = p.absolute()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def read_history(dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``<dataset_dir>/HISTORY.jsonl``, oldest first."""
    path = storage.local_path(os.fspath(dataset_dir)) / HISTORY_FILE
    text = _read_if_exists(path)
    if text is None:
        if not path.parent.is_dir():
            raise ResultsError(f"{path.parent}: no such results directory")
        return []
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(
                f"{path}:{lineno}: not JSON ({exc}); fix or remove the line"
            ) from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{lineno}: expected a JSON object")
        records.append(rec)
    return records


def default_command() -> str:
    """The running command line, with the program shown as ``rmeval``."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("rmeval", "__main__.py", "cli.py")):
        argv[0] = "rmeval"
    return shlex.join(argv)


def update(
    table: Table,
    results_dir: str | os.PathLike,
    dataset: str,
    name: str,
    *,
    command: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Write the table into the results directory and append its history record; return
    the record, or ``None`` when nothing changed (then nothing is written)."""
    path = table_path(results_dir, dataset, name)
    files = {
        path: render_csv(table),
        Path(sidecar(path, COLUMNS_SUFFIX)): render_columns(table),
        Path(sidecar(path, ISSUES_SUFFIX)): render_issues(table),
    }
    old = {p: _read_if_exists(p) for p in files}
    if all(old[p] == text for p, text in files.items()):
        log.info("%s: unchanged; nothing written", path)
        return None
    history = read_history(path.parent) if path.parent.is_dir() else []
    diff = diff_rows(old[path] or "", files[path])
    record = {
        "version": 1 + max((int(r.get("version", 0)) for r in history), default=0),
        "time": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "table": path.name,
        "source": table.source,
        "prefix": table.experiment_prefix,
        "mode": table.mode,
        "rows": {
            "total": diff.total,
            "added": diff.added,
            "changed": diff.changed,
            "removed": diff.removed,
        },
        "issues": len(table.issues),
        "sha256": hashlib.sha256(files[path].encode("utf-8")).hexdigest(),
        "rmeval_version": __version__,
        "git_sha": git_head(_existing_ancestor(path.parent)),
        "command": command if command is not None else default_command(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Sidecars, then the table, then the history line (the record describes what exists).
    for p in [*list(files)[1:], path]:
        if old[p] != files[p]:
            with storage.atomic_local_file(p, overwrite=True) as tmp:
                tmp.write_text(files[p], encoding="utf-8", newline="")
    hist = path.parent / HISTORY_FILE
    previous = _read_if_exists(hist) or ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    line = json.dumps(record, ensure_ascii=False, sort_keys=False)
    with storage.atomic_local_file(hist, overwrite=True) as tmp:
        tmp.write_text(previous + line + "\n", encoding="utf-8", newline="")
    return record


def format_history(records: list[dict[str, Any]]) -> str:
    """One line per version, newest last."""
    lines = [
        f"{'ver':>4}  {'time':<25}  {'table':<24}  {'rows':>6}  {'+':>4} {'~':>4} {'-':>4}  {'sha256':<12}  source"
    ]
    for r in records:
        rows = r.get("rows") or {}
        lines.append(
            f"{r.get('version', '?'):>4}  {r.get('time', ''):<25}  {r.get('table', ''):<24}  "
            f"{rows.get('total', ''):>6}  {rows.get('added', ''):>4} {rows.get('changed', ''):>4} "
            f"{rows.get('removed', ''):>4}  {str(r.get('sha256', ''))[:12]:<12}  "
            f"{r.get('source', '')}{' ' + r['prefix'] if r.get('prefix') else ''}"
        )
    return "\n".join(lines)
