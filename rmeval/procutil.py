"""Small process helpers shared by the stages: the git commit of a directory, and SIGTERM
turned into a clean exit so ``finally`` clauses (temporary files, key files) run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator


def git_head(where: str | os.PathLike) -> str | None:
    """HEAD of the git work tree containing ``where``, or None (no git, not a repo)."""
    try:
        out = subprocess.run(
            ["git", "-C", os.fspath(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Inside the block, SIGTERM (Beaker preemption, a cancelled runner) raises
    ``SystemExit(143)`` so that ``finally`` clauses run; the default action would kill the
    process and leave temporary files behind. Main thread only, and only when nobody else
    installed a SIGTERM handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
