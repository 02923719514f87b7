"""``rmeval diff OLD NEW``: what changed between two versions of a results table.

Each side is a CSV path, a results dataset directory (its table as it is now), or a version
of one: ``results/<dataset>@v3`` (a HISTORY.jsonl version), ``results/<dataset>@HEAD~1`` (a
git revision); a bare ``v3`` / ``HEAD~1`` with ``--dataset-dir results/<dataset>``. A
version is found in git: the commit of the dataset directory whose table's sha256 is the
one its HISTORY record names; ``v0`` is the empty table before the first version, and
``--last`` compares the newest version with the one before it (:func:`last_versions`).

Rows are matched by run name (:func:`rmeval.results.diff_rows`) and shown by their
distinct labels (:func:`rmeval.figures.run_labels`: uuid, FEATS, SWAPS): added, removed and
changed, with each changed run's Overall and section deltas, and the best run before and
after. :func:`markdown` renders it for GitHub (a job summary, a pull-request body or
comment), :func:`as_json` for machines. Tables scored in different formats or with
different section weights (the ``scoring`` and ``weights`` meta columns) are refused unless
``force``: their scores are not comparable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmeval.errors import ResultsError
from rmeval.figures import run_labels
from rmeval.results import dataset_table
from rmeval.table import NAME, SCORING, SECTION_COLUMNS, TARGET, V2_OVERALL, WEIGHTS

VERSION_RE = re.compile(r"^v(?P<n>\d+)$")
SCORE_COLUMNS = (TARGET, *SECTION_COLUMNS)


@dataclass(frozen=True)
class Side:
    """One side of a diff: what the user named (``label``) and the CSV text."""

    label: str
    text: str
    path: str  # the table's file (for messages)


# --------------------------------------------------------------------------- resolving


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ResultsError(f"{cwd}: cannot run git ({exc}); give CSV paths instead") from None


def _at_revision(csv_path: Path, rev: str) -> bytes:
    top = _git(csv_path.parent, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise ResultsError(f"{csv_path.parent}: not in a git work tree, so {rev!r} names nothing")
    rel = csv_path.resolve().relative_to(Path(top.stdout.decode().strip()).resolve())
    shown = _git(csv_path.parent, "show", f"{rev}:{rel.as_posix()}")
    if shown.returncode != 0:
        err = shown.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ResultsError(
            f"{csv_path} at {rev}: {err[-1] if err else 'not found'} (check the revision)"
        )
    return shown.stdout


def _at_version(csv_path: Path, version: int) -> bytes:
    from rmeval.results import read_history

    if version == 0:  # before the first version: no runs
        return b""
    records = [
        r
        for r in read_history(csv_path.parent)
        if r.get("version") == version and r.get("table") == csv_path.name
    ]
    if not records or not records[-1].get("sha256"):
        known = [
            f"v{r['version']}"
            for r in read_history(csv_path.parent)
            if r.get("table") == csv_path.name and "version" in r
        ]
        raise ResultsError(
            f"{csv_path.parent}/HISTORY.jsonl: no version {version} of {csv_path.name}; "
            f"known: {', '.join(known) or 'none'}"
        )
    want = records[-1]["sha256"]
    if csv_path.is_file() and hashlib.sha256(csv_path.read_bytes()).hexdigest() == want:
        return csv_path.read_bytes()
    revs = _git(csv_path.parent, "log", "--format=%H", "--", csv_path.name)
    for rev in revs.stdout.decode().split():
        data = _at_revision(csv_path, rev)
        if hashlib.sha256(data).hexdigest() == want:
            return data
    raise ResultsError(
        f"{csv_path}: version {version} (sha256 {want[:12]}) is in no commit of this "
        "repository (a shallow clone? fetch more history)"
    )


def resolve(spec: str, *, dataset_dir: str | None = None, table: str | None = None) -> Side:
    """The table ``spec`` names (module doc)."""
    where, rev = spec, None
    if "@" in spec and not os.path.exists(spec):
        where, rev = spec.rsplit("@", 1)
    elif dataset_dir is not None and not os.path.exists(spec):
        where, rev = dataset_dir, spec
        spec = f"{dataset_dir.rstrip('/')}@{rev}"
    path = Path(where)
    if rev is None and path.is_file():
        return Side(spec, path.read_text(encoding="utf-8"), str(path))
    if not path.is_dir():
        raise ResultsError(
            f"{spec}: no such table; give a CSV, a results dataset directory, DIR@v3 / "
            "DIR@<git rev>, or v3 / <git rev> with --dataset-dir"
        )
    csv_path = dataset_table(path, table)
    if rev is None:
        if not csv_path.is_file():
            raise ResultsError(f"{csv_path}: no such table")
        data = csv_path.read_bytes()
    elif m := VERSION_RE.match(rev):
        data = _at_version(csv_path, int(m["n"]))
    else:
        data = _at_revision(csv_path, rev)
    return Side(spec, data.decode("utf-8"), str(csv_path))


# --------------------------------------------------------------------------- comparing


def _rows(side: Side) -> dict[str, dict[str, str]]:
    if not side.text.strip():
        return {}
    reader = csv.DictReader(io.StringIO(side.text))
    if reader.fieldnames is None or NAME not in reader.fieldnames:
        raise ResultsError(f"{side.path}: no {NAME!r} column; not a results table")
    return {row[NAME]: row for row in reader}


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _meta_values(rows: dict[str, dict[str, str]], column: str) -> set[str]:
    return {r[column] for r in rows.values() if r.get(column)}


def _best(rows: dict[str, dict[str, str]], label_of: dict[str, str]) -> dict[str, Any] | None:
    scored = [(v, n) for n, r in rows.items() if (v := _num(r.get(TARGET))) is not None]
    if not scored:
        return None
    value, name = max(scored, key=lambda t: (t[0], t[1]))
    return {"name": name, "label": label_of[name], TARGET: value}


def compare(old: Side, new: Side, *, force: bool = False) -> dict[str, Any]:
    """The diff of two tables as a JSON-ready dict (see :func:`markdown`)."""
    from rmeval.results import diff_rows

    a, b = _rows(old), _rows(new)
    for column in (SCORING, WEIGHTS):
        va, vb = _meta_values(a, column), _meta_values(b, column)
        if va and vb and va != vb and not force:
            raise ResultsError(
                f"{old.label} has {column} {', '.join(sorted(va))}, {new.label} has "
                f"{', '.join(sorted(vb))}: their scores are not comparable (pass --force to "
                "diff anyway)"
            )
    rows = diff_rows(old.text, new.text)
    # RewardBench 2's Overall beside RewardBench's when either table has it; a run whose
    # RewardBench 2 cells alone changed is a changed run marked as such (results.diff_rows)
    has_v2 = any(V2_OVERALL in r for t in (a, b) for r in t.values())
    columns = [*SCORE_COLUMNS, *([V2_OVERALL] if has_v2 else [])]
    # one label per run, distinct over both tables (longer uuids where short ones collide)
    names = sorted(a.keys() | b.keys())
    label_of = dict(zip(names, run_labels(names), strict=True)) if names else {}
    changed = []
    v1_changed, v2_changed = set(rows.changed_names), set(rows.changed_v2_names)
    for name in sorted(v1_changed | v2_changed):
        deltas = {}
        for col in columns:
            x, y = _num(a[name].get(col)), _num(b[name].get(col))
            if x is not None and y is not None and x != y:
                deltas[col] = {"old": x, "new": y, "delta": y - x}
        cols = sorted(c for c in set(a[name]) | set(b[name]) if a[name].get(c) != b[name].get(c))
        changed.append(
            {
                "name": name,
                "label": label_of[name],
                "deltas": deltas,
                "columns": cols,
                "benchmarks": [
                    bench
                    for bench, seen in (("rewardbench", v1_changed), ("rewardbench2", v2_changed))
                    if name in seen
                ],
            }
        )

    def brief(r: dict[str, str], name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "label": label_of[name]}
        out.update({c: _num(r.get(c)) for c in columns})
        return out

    return {
        "old": {"label": old.label, "path": old.path, "rows": len(a)},
        "new": {"label": new.label, "path": new.path, "rows": len(b)},
        "added": [brief(b[n], n) for n in rows.added_names],
        "removed": [brief(a[n], n) for n in rows.removed_names],
        "changed": changed,
        "columns": columns,
        "best": {"before": _best(a, label_of), "after": _best(b, label_of)},
    }


def last_versions(dataset_dir: str, table: str | None = None) -> tuple[str, str]:
    """``(v<N-1>, v<N>)`` for the newest HISTORY version N of the dataset's table
    (``v0``: the empty table before the first version): what ``--last`` compares."""
    from rmeval.results import read_history

    csv_path = dataset_table(dataset_dir, table)
    versions = [
        int(r["version"])
        for r in read_history(dataset_dir)
        if r.get("table") == csv_path.name and isinstance(r.get("version"), int)
    ]
    if not versions:
        raise ResultsError(f"{dataset_dir}: no HISTORY version of {csv_path.name} yet")
    newest = max(versions)
    older = [v for v in versions if v < newest]
    return f"v{max(older) if older else 0}", f"v{newest}"


def diff(
    old: str,
    new: str,
    *,
    dataset_dir: str | None = None,
    table: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Resolve both sides (:func:`resolve`) and :func:`compare` them."""
    return compare(
        resolve(old, dataset_dir=dataset_dir, table=table),
        resolve(new, dataset_dir=dataset_dir, table=table),
        force=force,
    )


# --------------------------------------------------------------------------- rendering


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _d(v: float) -> str:
    return f"{v:+.4f}".replace("-", "−")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _best_line(b: dict[str, Any] | None) -> str:
    return "none" if b is None else f"{_f(b[TARGET])} `{_cell(b['label'])}`"


def markdown(d: dict[str, Any], *, limit: int = 50) -> str:
    """The diff as GitHub markdown: a count line, the best run before and after, and a
    table each of added, removed and changed runs (at most ``limit`` rows each)."""
    old, new = d["old"], d["new"]
    lines = [
        f"#### `{_cell(old['label'])}` → `{_cell(new['label'])}`",
        "",
        f"{old['rows']} → {new['rows']} runs: {len(d['added'])} added, "
        f"{len(d['removed'])} removed, {len(d['changed'])} changed{_v2_only(d)}.",
        "",
        f"Best Overall: before {_best_line(d['best']['before'])}, "
        f"after {_best_line(d['best']['after'])}.",
    ]

    def table(title: str, head: list[str], body: list[list[str]]) -> None:
        if not body:
            return
        lines.extend(["", f"**{title}**", "", "| " + " | ".join(head) + " |"])
        lines.append("|" + "---|" * len(head))
        lines.extend("| " + " | ".join(row) + " |" for row in body[:limit])
        if len(body) > limit:
            lines.append(f"| … {len(body) - limit} more | " + " | ".join([""] * (len(head) - 1)))

    columns = d.get("columns", list(SCORE_COLUMNS))
    head = ["run", *columns]
    for key, title in (("added", "Added"), ("removed", "Removed")):
        table(
            title,
            head,
            [[f"`{_cell(r['label'])}`", *(_f(r[c]) for c in columns)] for r in d[key]],
        )
    body = []
    for r in d["changed"]:
        cells = []
        for c in columns:
            x = r["deltas"].get(c)
            cells.append("" if x is None else f"{_f(x['new'])} ({_d(x['delta'])})")
        others = [c for c in r["columns"] if c not in columns]
        body.append([f"`{_cell(r['label'])}`", *cells, _cell(", ".join(others)) or "-"])
    table("Changed", [*head, "other columns changed"], body)
    return "\n".join(lines) + "\n"


def _v2_only(d: dict[str, Any]) -> str:
    n = sum(1 for r in d["changed"] if r.get("benchmarks") == ["rewardbench2"])
    return f" ({n} in RewardBench 2 only)" if n else ""


def as_json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"
