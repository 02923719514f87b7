"""Where a collected table is written: one CSV (``--output``), or the committed results
tables and their versioned history.

:func:`destination` checks where a table will go before anything is fetched;
:meth:`Output.write` / :meth:`Dataset.write` write it there.

``update(table, results_dir, dataset, name)`` writes ``<results_dir>/<dataset>/<name>.csv``
(with its ``.columns.json`` and ``.issues.json`` sidecars, see :mod:`rmeval.table`) and
appends one record to ``<results_dir>/<dataset>/HISTORY.jsonl``::

    {"version": 3, "time": "2026-11-28T12:00:00+00:00", "table": "counts-runs.csv",
     "source": "beaker://ai2/evals", "prefix": "rm-eval-helpsteer2-count", "mode": "counts",
     "rows": {"total": 120, "added": 4, "changed": 1, "removed": 0},
     "runs": {"added": ["<run name>", …], "changed": ["<run name>"], "removed": []}, "issues": 2,
     "sha256": "<of the CSV bytes>", "previous_sha256": "<of the CSV it replaced, or null>",
     "scoring": {"trained": 120}, "weights": "official-<fingerprint>",
     "rmeval_version": "0.0.1.dev5+g1a2b3c4", "git_sha": "<HEAD or null>", "command": "rmeval collect …"}

``runs`` names the rows counted in ``rows`` (sorted run names; :func:`diff_rows`).
``scoring`` counts the rows per scoring format (``""``: unknown), ``weights`` names the
section weights (:data:`rmeval.rewardbench.scoring.WEIGHTS_ID`). Records written before
these keys existed lack them (and ``previous_sha256``, ``runs``); readers use ``.get``.

Rows are matched by their ``name`` column. An update whose CSV and sidecars are byte-equal
to what is there writes nothing and returns ``None``. A table is not replaced by one with
fewer than half its rows unless ``allow_shrink`` (an empty or mistyped source looks so).

Writers of one dataset directory serialize on ``.HISTORY.lock`` (``flock``: the kernel
drops the lock of a dead holder, so a killed collect leaves no stale lock). Under it, each
update computes its record against the table it replaces, writes the record to
``.HISTORY.pending.json``, replaces the sidecars and the table (each atomically), appends
the record to HISTORY.jsonl and removes the pending file. An update killed in between is
repaired by the next one: a pending record whose table is in place is appended (marked
``"repaired": true``); one whose table never landed is dropped.

The results directory is a local path (it is committed to git by the fetch-results
workflow).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rmeval import naming, storage, version
from rmeval.errors import CollectError, NamingError, ResultsError, UsageError
from rmeval.procutil import git_head
from rmeval.rewardbench import scoring
from rmeval.table import (
    HISTORY_FILE,
    NAME,
    V2_PREFIX,
    Table,
    TablePaths,
    count_rows,
    refuse_existing,
    render_columns,
    render_csv,
    render_issues,
    table_files,
    write_table,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".HISTORY.lock"
PENDING_FILE = ".HISTORY.pending.json"
LOCK_TIMEOUT = 120.0  # seconds to wait for another writer of the same dataset


@dataclass(frozen=True)
class RowDiff:
    """The rows of a new table against the old one, matched by run name: the new table's
    row count and the names added, changed and removed (sorted)."""

    total: int
    added_names: tuple[str, ...] = ()
    changed_names: tuple[str, ...] = ()
    removed_names: tuple[str, ...] = ()

    @property
    def added(self) -> int:
        return len(self.added_names)

    @property
    def changed(self) -> int:
        return len(self.changed_names)

    @property
    def removed(self) -> int:
        return len(self.removed_names)

    # rows whose RewardBench 2 cells (rb2_…) changed, kept apart from ``changed_names``
    changed_v2_names: tuple[str, ...] = ()

    @property
    def changed_v2(self) -> int:
        return len(self.changed_v2_names)


def table_paths(results_dir: str | os.PathLike, dataset: str, name: str) -> TablePaths:
    """Every file of the table ``<results_dir>/<dataset>/<name>.csv`` (:func:`table_path`):
    sidecars, fit, report, figures, history."""
    return TablePaths(table_path(results_dir, dataset, name))


def check_shrink(where: str, old_rows: int, new_rows: int, allow_shrink: bool = False) -> None:
    """Refuse to replace a table of ``old_rows`` rows by one with fewer than half as many (an
    empty or mistyped source looks like that), unless ``allow_shrink``."""
    if allow_shrink or 2 * new_rows >= old_rows:
        return
    raise CollectError(
        f"{where}: the new table has {new_rows} row(s), the one there {old_rows}; refusing to "
        "drop more than half of its rows (check --source; pass --allow-shrink to replace it)"
    )


# --------------------------------------------------------------------------- destinations


@dataclass
class Outcome:
    """What writing a collected table did: the table, the files written, the history
    record (results directory only) and whether the results were unchanged."""

    table: Table
    written: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None
    unchanged: bool = False


@dataclass(frozen=True)
class Output:
    """``--output``: one CSV (local or gs://) and its sidecars, without history."""

    path: str
    overwrite: bool = False

    def check(self) -> None:
        """Before fetching: an existing table is refused unless ``overwrite``."""
        if not self.overwrite:
            refuse_existing(self.path)

    def write(
        self, table: Table, *, allow_shrink: bool = False, command: str | None = None
    ) -> Outcome:
        """Write the table (:func:`rmeval.table.write_table`); replacing one by a table with
        fewer than half its rows needs ``allow_shrink`` (:func:`check_shrink`)."""
        if storage.exists(self.path):  # only with overwrite: write_table refuses otherwise
            old_rows = count_rows(storage.read_text(self.path))
            check_shrink(self.path, old_rows, len(table.rows), allow_shrink)
        return Outcome(table, write_table(table, self.path, overwrite=self.overwrite))


@dataclass(frozen=True)
class Dataset:
    """``--results-dir/--dataset/--table``: ``<results_dir>/<dataset>/<name>.csv`` with its
    HISTORY (:func:`update`)."""

    results_dir: str
    dataset: str
    name: str

    def check(self) -> None:
        """Before fetching: the dataset and table names are plain, the directory local."""
        table_path(self.results_dir, self.dataset, self.name)

    def write(
        self, table: Table, *, allow_shrink: bool = False, command: str | None = None
    ) -> Outcome:
        record = update(
            table,
            self.results_dir,
            self.dataset,
            self.name,
            command=command,
            allow_shrink=allow_shrink,
        )
        out = Outcome(table, record=record, unchanged=record is None)
        if record is not None:
            out.written = table_files(table_path(self.results_dir, self.dataset, self.name))
        return out


def destination(
    *,
    output: str | None = None,
    overwrite: bool = False,
    results_dir: str | None = None,
    dataset: str | None = None,
    table_name: str | None = None,
    dry_run: bool = False,
) -> Output | Dataset | None:
    """Where ``collect`` writes its table, checked (cheaply) before anything is fetched:
    ``output``, or the results directory (``results_dir``, ``dataset`` and ``table_name``
    together). ``None`` for a dry run, which writes nothing (its results directory is still
    checked)."""
    results_mode = any(x is not None for x in (results_dir, dataset, table_name))
    if results_mode and (results_dir is None or dataset is None or table_name is None):
        raise UsageError("--results-dir, --dataset and --table go together")
    if results_mode and output is not None:
        raise UsageError("give either --output or --results-dir/--dataset/--table, not both")
    if not results_mode and output is None and not dry_run:
        raise UsageError("nowhere to write: give --output, or --results-dir/--dataset/--table")
    where: Output | Dataset | None = None
    if results_dir is not None and dataset is not None and table_name is not None:
        where = Dataset(results_dir, dataset, table_name)
        where.check()
    elif output is not None:
        where = Output(output, overwrite)
        if not dry_run:
            where.check()
    return None if dry_run else where


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
        raise UsageError(str(exc)) from exc
    stem = name[:-4] if name.endswith(".csv") else name
    return storage.local_path(results_dir) / dataset / f"{stem}.csv"


def _rows_by_name(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return {}
    if NAME not in header:
        raise ResultsError(f"existing table has no {NAME!r} column; move it away and collect again")
    i = header.index(NAME)
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for row in reader:
        if len(row) != len(header):
            raise ResultsError(
                f"existing table row {len(out) + 2} has {len(row)} cells, header has {len(header)}"
            )
        out[row[i]] = tuple(zip(header, row, strict=True))
    return out


def diff_rows(old_csv: str, new_csv: str) -> RowDiff:
    """Rows added / changed / removed between two CSV texts, matched on ``name``. A row
    counts as changed when any cell differs or the columns changed; RewardBench 2's cells
    (``rb2_…``) are counted apart (``changed_v2``), so adding RewardBench 2 to a table
    does not read as every RewardBench result changing."""
    old = _rows_by_name(old_csv)
    new = _rows_by_name(new_csv)

    def part(cells: tuple[tuple[str, str], ...], v2: bool) -> tuple[tuple[str, str], ...]:
        return tuple(c for c in cells if c[0].startswith(V2_PREFIX) == v2)

    both = sorted(new.keys() & old.keys())
    return RowDiff(
        total=len(new),
        added_names=tuple(sorted(new.keys() - old.keys())),
        changed_names=tuple(k for k in both if part(new[k], False) != part(old[k], False)),
        removed_names=tuple(sorted(old.keys() - new.keys())),
        changed_v2_names=tuple(k for k in both if part(new[k], True) != part(old[k], True)),
    )


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
            ) from exc
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{lineno}: expected a JSON object")
        records.append(rec)
    return records


def dataset_table(dataset_dir: str | os.PathLike, table: str | None = None) -> Path:
    """The table of a results dataset directory: ``<dataset_dir>/<table>.csv``, else the
    table its newest HISTORY record names, else its only CSV."""
    d = storage.local_path(os.fspath(dataset_dir))
    if table:
        try:
            naming.safe_component(table, what="--table")
        except NamingError as exc:
            raise UsageError(str(exc)) from None
        return d / f"{table[:-4] if table.endswith('.csv') else table}.csv"
    if not d.is_dir():
        raise ResultsError(f"{d}: no such results directory")
    history = read_history(d)
    if history and history[-1].get("table"):
        return d / naming.safe_component(str(history[-1]["table"]), what="HISTORY table")
    tables = sorted(d.glob("*.csv"))
    if len(tables) == 1:
        return tables[0]
    raise ResultsError(
        f"{d}: {'no' if not tables else 'several'} results table(s) there; name one with --table"
    )


def default_command() -> str:
    """The running command line, with the program shown as ``rmeval``."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("rmeval", "__main__.py", "cli.py")):
        argv[0] = "rmeval"
    return shlex.join(argv)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def dataset_lock(directory: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the write lock of one results dataset directory (see the module doc).

    ``flock`` on ``directory/LOCK_FILE``; the holder unlinks the file before it lets go,
    so a waiter that locked a file no longer at that path tries again. Waits up to
    ``timeout`` seconds, then one ResultsError line names the holder."""
    path = directory / LOCK_FILE
    give_up = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage.write_error(exc, path, "create the lock file", ResultsError) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another collect"
            os.close(fd)
            if time.monotonic() > give_up:
                raise ResultsError(
                    f"{path}: still held by {holder} after {timeout:g} s; wait for it to finish"
                ) from None
            time.sleep(0.01)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it while we waited: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _write(path: Path, text: str) -> None:
    with storage.atomic_local_file(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def _append_history(directory: Path, record: dict[str, Any]) -> None:
    hist = directory / HISTORY_FILE
    previous = _read_if_exists(hist) or ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    _write(hist, previous + json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")


def _next_version(history: list[dict[str, Any]]) -> int:
    return 1 + max((int(r.get("version", 0)) for r in history), default=0)


def repair(directory: Path) -> dict[str, Any] | None:
    """Finish or drop what an interrupted update left (call it under :func:`dataset_lock`):
    a pending record whose files are all in place and which HISTORY does not end with yet is
    appended; the pending file and the temporary files of the writes are removed. Returns
    the appended record, if any."""
    # Every write here happens under the lock, through storage.atomic_local_file (temporary
    # ".<name>.<random>.tmp" beside the file): while we hold it, any such file is a dead
    # writer's.
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            log.info("%s: removed, left by an interrupted collect", tmp)
    pending = directory / PENDING_FILE
    text = _read_if_exists(pending)
    if text is None:
        return None
    appended = None
    try:
        doc = json.loads(text)
        record, shas = dict(doc["record"]), dict(doc["files"])
        names = [naming.safe_component(str(n), what="file") for n in shas]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, NamingError):
        log.warning("%s: unreadable pending record; removed", pending)
    else:
        landed = all(
            (t := _read_if_exists(directory / n)) is not None and _sha256(t) == shas[n]
            for n in names
        )
        history = read_history(directory)
        last = history[-1] if history else {}
        done = (last.get("version"), last.get("sha256")) == (
            record.get("version"),
            record.get("sha256"),
        )
        if landed and not done:
            record["version"] = max(int(record.get("version", 0)), _next_version(history))
            record["repaired"] = True
            _append_history(directory, record)
            appended = record
            log.warning(
                "%s: appended version %s (%s), which an interrupted collect wrote without its "
                "history record",
                directory / HISTORY_FILE,
                record["version"],
                record.get("table"),
            )
    pending.unlink()
    return appended


def _current(files: dict[Path, str]) -> dict[Path, str | None]:
    """What each of ``files`` holds now (``None``: absent)."""
    return {p: _read_if_exists(p) for p in files}


def update(
    table: Table,
    results_dir: str | os.PathLike,
    dataset: str,
    name: str,
    *,
    command: str | None = None,
    now: datetime | None = None,
    allow_shrink: bool = False,
) -> dict[str, Any] | None:
    """Write the table into the results directory and append its history record; return
    the record, or ``None`` when nothing changed (then nothing is written). Concurrent
    updates of one dataset serialize; an interrupted one is repaired first (module doc)."""
    paths = table_paths(results_dir, dataset, name)
    path = paths.csv
    files = {
        path: render_csv(table),
        paths.columns: render_columns(table),
        paths.issues: render_issues(table),
    }
    # Unchanged and nothing to repair: touch nothing (no lock either; a read-only checkout
    # that is up to date stays fine). Checked again under the lock otherwise.
    if not (path.parent / PENDING_FILE).exists() and _current(files) == files:
        log.info("%s: unchanged; nothing written", path)
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage.write_error(
            exc, path.parent, "create the results directory", ResultsError
        ) from exc
    with dataset_lock(path.parent):
        repair(path.parent)
        old = _current(files)
        if old == files:
            log.info("%s: unchanged; nothing written", path)
            return None
        old_csv = old[path]
        if old_csv is not None:
            check_shrink(str(path), count_rows(old_csv), len(table.rows), allow_shrink)
        history = read_history(path.parent)
        diff = diff_rows(old_csv or "", files[path])
        record = {
            "version": _next_version(history),
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
                **({"changed_rewardbench2": diff.changed_v2} if table.v2 else {}),
            },
            "runs": {
                "added": list(diff.added_names),
                "changed": list(diff.changed_names),
                "removed": list(diff.removed_names),
            },
            "issues": len(table.issues),
            "sha256": _sha256(files[path]),
            "previous_sha256": _sha256(old_csv) if old_csv is not None else None,
            "scoring": table.scoring_counts(),
            "weights": scoring.WEIGHTS_ID,
            "benchmarks": ["rewardbench", *(["rewardbench2"] if table.v2 else [])],
            "target": table.target,
            "rmeval_version": version(),
            "git_sha": git_head(_existing_ancestor(path.parent)),
            "command": command if command is not None else default_command(),
        }
        # The record first (pending), then the sidecars, the table, and the history line.
        pending = path.parent / PENDING_FILE
        shas = {p.name: _sha256(text) for p, text in files.items()}
        _write(pending, json.dumps({"record": record, "files": shas}, ensure_ascii=False) + "\n")
        for p in [*list(files)[1:], path]:
            if old[p] != files[p]:
                _write(p, files[p])
        _append_history(path.parent, record)
        pending.unlink()
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
