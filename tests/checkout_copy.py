"""A copy of this working tree: its tracked files and its new files that git does not
ignore (what a clone of this commit with its uncommitted edits would hold), optionally as a
git repository of its own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def copy_checkout(dst: Path) -> Path:
    """The working tree's files under ``dst`` (no .git)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, (f.decode() for f in out.split(b"\0"))):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def commit_all(repo: Path, message: str) -> str:
    """``git init`` (if needed), add everything, commit; the new HEAD."""
    if not (repo / ".git").exists():
        subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=repo, check=True)
    return git(repo, "rev-parse", "HEAD")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
