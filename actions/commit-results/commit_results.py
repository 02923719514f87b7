"""Commit a results directory and push it, retrying a bounded number of times.

    commit_results.py --path results/helpsteer2 [--branch main] [--remote origin]
                      [--attempts 5] [--refresh "rmeval collect ..."]

Nothing staged under --path: nothing is committed (exit 0, ``committed=false``). Otherwise one
commit whose message summarises the change from the newest HISTORY.jsonl record (rows added
/ changed / removed) and the table (best Overall). When the push is rejected because the
branch moved, ``git pull --rebase`` and push again. If the rebase conflicts (another run
wrote the same table), the local commit is dropped, the branch is reset to the remote, the
``--refresh`` command (the collect that produced the results) runs again on top of it, and
the loop goes on. After --attempts pushes the step fails with one line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
NAME_COLUMNS = ("name", "run", "experiment", "model")


class CommitFailed(Exception):
    """One line that says what went wrong and what to do."""


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise CommitFailed(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc


# ------------------------------------------------------------------------------ message


def last_history(path: Path) -> dict[str, Any]:
    """The newest record of ``<path>/HISTORY.jsonl`` ({} when there is none)."""
    history = path / "HISTORY.jsonl"
    if not history.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in history.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                last = record
    return last


def _count(record: dict[str, Any], key: str) -> int | None:
    for where in (record, record.get("rows") if isinstance(record.get("rows"), dict) else {}):
        for k in (f"rows_{key}", key):
            if isinstance(where.get(k), int):
                return where[k]
    return None


def best_overall(table: Path) -> tuple[str, float] | None:
    """(name, Overall) of the best row of a results CSV, or None."""
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "Overall" not in fields:
                return None
            name_col = next((c for c in NAME_COLUMNS if c in fields), fields[0])
            best: tuple[str, float] | None = None
            for row in reader:
                try:
                    value = float(row["Overall"])
                except (TypeError, ValueError):
                    continue
                if best is None or value > best[1]:
                    best = (row.get(name_col) or "?", value)
            return best
    except OSError:
        return None


def message(path: Path) -> str:
    """``results(<dataset>): <table> +A rows, C changed, R removed, T total; best Overall X (name)``."""
    record = last_history(path)
    table_file = str(record.get("table") or "")
    if table_file and not table_file.endswith(".csv"):
        table_file += ".csv"
    tables = sorted(path.glob("*.csv"))
    table = path / table_file if table_file else (tables[0] if tables else None)
    table_name = table.stem if table is not None else ""
    parts = []
    for key, fmt in (("added", "+{} rows"), ("changed", "{} changed"), ("removed", "{} removed")):
        n = _count(record, key)
        if n is not None:
            parts.append(fmt.format(n))
    total = _count(record, "total")
    if total is not None:
        parts.append(f"{total} total")
    head = f"results({path.name}): {table_name or 'tables'}"
    if parts:
        head += " " + ", ".join(parts)
    best = best_overall(table) if table is not None else None
    if best is not None:
        head += f"; best Overall {best[1]:.4f} ({best[0]})"
    body = []
    for key in ("version", "source", "prefix", "sha256", "rmeval_version", "command"):
        if record.get(key):
            body.append(f"{key}: {record[key]}")
    return head + ("\n\n" + "\n".join(body) if body else "")


# ------------------------------------------------------------------------------ commit


def check_not_ignored(path: Path) -> None:
    """CommitFailed naming the .gitignore rule that hides ``path`` or a file in it (git's
    own refusal ends in a hint line that names neither)."""
    files = [path, *sorted(p for p in path.rglob("*") if p.is_file())] if path.exists() else [path]
    proc = subprocess.run(
        ["git", "check-ignore", "-v", "--no-index", "--stdin"],
        input="\n".join(map(str, files)) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    first = proc.stdout.strip().splitlines()[:1]
    if proc.returncode == 0 and first:
        rule, _, hidden = first[0].partition("\t")
        source, line, pattern = rule.split(":", 2)
        raise CommitFailed(
            f"{hidden} is ignored by {source}:{line} ('{pattern}'), so {path} cannot be "
            "committed; change that rule or the dataset name"
        )


def stage(path: Path) -> bool:
    """Stage everything under path; True when something is staged there."""
    if not path.exists() and not git("ls-files", "--", str(path)).stdout.strip():
        return False
    check_not_ignored(path)
    git("add", "-A", "--", str(path))
    return git("diff", "--cached", "--quiet", "--", str(path), check=False).returncode != 0


def commit(path: Path) -> str:
    msg = message(path)
    env_name = os.environ.get("GIT_AUTHOR_NAME") or BOT_NAME
    env_email = os.environ.get("GIT_AUTHOR_EMAIL") or BOT_EMAIL
    ident = ["-c", f"user.name={env_name}", "-c", f"user.email={env_email}"]
    git(*ident, "commit", "-q", "-m", msg, "--", str(path))
    return msg.splitlines()[0]


def refresh(command: str) -> None:
    if not command:
        raise CommitFailed(
            "the rebase conflicts with results pushed meanwhile and no --refresh command was "
            "given; rerun the workflow"
        )
    proc = subprocess.run(command, shell=True, check=False)
    if proc.returncode != 0:
        raise CommitFailed(f"the refresh command exited {proc.returncode}: {command}")


def commit_and_push(
    path: Path, branch: str, remote: str, attempts: int, refresh_cmd: str = ""
) -> tuple[bool, str]:
    """Commit path (if changed) and push to remote/branch; (committed, summary line)."""
    if not stage(path):
        return False, f"{path}: nothing changed"
    subject = commit(path)
    ident = ["-c", f"user.name={BOT_NAME}", "-c", f"user.email={BOT_EMAIL}"]
    for attempt in range(1, attempts + 1):
        if git("push", "-q", remote, f"HEAD:refs/heads/{branch}", check=False).returncode == 0:
            return True, subject
        if attempt == attempts:
            break
        print(f"push rejected (attempt {attempt}/{attempts}); git pull --rebase", flush=True)
        time.sleep(min(8.0, 0.5 * attempt) * random.uniform(0.5, 1.5))
        pulled = git(*ident, "pull", "-q", "--rebase", remote, branch, check=False)
        if pulled.returncode == 0:
            continue
        # The other run wrote the same table: start again from what it pushed.
        git("rebase", "--abort", check=False)
        git("fetch", "-q", remote, branch)
        git("reset", "-q", "--hard", "FETCH_HEAD")
        refresh(refresh_cmd)
        if not stage(path):
            return False, f"{path}: nothing changed after the concurrent update"
        subject = commit(path)
    raise CommitFailed(f"push to {remote}/{branch} still rejected after {attempts} attempts")


def write_outputs(values: dict[str, str]) -> None:
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in values.items()))


def write_summary(text: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="results directory, e.g. results/helpsteer2")
    p.add_argument("--branch", required=True)
    p.add_argument("--remote", default="origin")
    p.add_argument("--attempts", type=int, default=5)
    p.add_argument("--refresh", default="", help="shell command that regenerates --path")
    args = p.parse_args(argv)
    try:
        committed, line = commit_and_push(
            Path(args.path), args.branch, args.remote, max(1, args.attempts), args.refresh
        )
    except CommitFailed as exc:
        print(f"::error title=commit-results::{exc}", flush=True)
        write_summary(f"### commit-results failed\n\n{exc}")
        return 1
    sha = git("rev-parse", "HEAD").stdout.strip() if committed else ""
    print(line, flush=True)
    write_outputs({"committed": str(committed).lower(), "sha": sha, "subject": line})
    write_summary(f"### results\n\n{line}" + (f" ({sha[:12]})" if sha else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
