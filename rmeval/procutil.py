"""Small process helpers shared by the stages: the git commit of a directory, the
environment of a child Python process that must run this same rmeval, SIGTERM turned into
a clean exit so ``finally`` clauses (temporary files, key files) run, names that say which
process owns them, so that what a ``kill -9`` left behind is removed by the next run
(:func:`rmeval.storage.owned_tempdir` and the staged outputs of :mod:`rmeval.storage` build
on them), and a bounded thread map for concurrent reads.

Owned names: ``<prefix><owner>-<pid>-<random>``, where ``<owner>`` is the host name and
the pid namespace (two containers on one host do not mistake each other's processes). A
name whose owner is this host and namespace and whose pid is no longer running is stale:
nothing can still be writing it. Names of other hosts are never touched.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rmeval.errors import UsageError

log = logging.getLogger(__name__)


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


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a child Python process that imports rmeval
    (a local-backend worker, a report kernel): when rmeval runs from a source checkout,
    that checkout goes first on PYTHONPATH, so the child runs this code and not another
    copy installed in the environment, whatever its working directory."""
    from rmeval import source_root

    out = dict(os.environ if env is None else env)
    root = source_root()
    if root is not None:
        rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(root)]
        out["PYTHONPATH"] = os.pathsep.join([str(root), *rest])
    return out


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


# --------------------------------------------------------------------------- owned names


def _owner() -> str:
    host = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{host}.{ns}"


def owned_name(prefix: str) -> str:
    """A fresh name ``<prefix><owner>-<pid>-<random>`` that records its owning process."""
    return f"{prefix}{_owner()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def owner_pid(name: str, prefix: str) -> int | None:
    """The pid in an owned name made by this host and pid namespace; None for any other
    name (another host's, an older rmeval's, not an owned name)."""
    if not name.startswith(prefix):
        return None
    owner, _, rest = name[len(prefix) :].partition("-")
    pid, sep, _ = rest.partition("-")
    if owner != _owner() or not sep or not pid.isdigit():
        return None
    return int(pid)


def is_stale(name: str, prefix: str) -> bool:
    """True when ``name`` is owned by a process of this host that is no longer running."""
    pid = owner_pid(name, prefix)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def remove_stale(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the entries ``<parent>/<prefix>*`` whose owner is dead; returns them."""
    removed = []
    for path in Path(parent).glob(glob.escape(prefix) + "*"):
        if is_stale(path.name, prefix):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            log.debug("removed %s, left by an interrupted run (its process is gone)", path)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- threads


def bounded_map(
    fn: Callable[[Any], Any],
    items: Iterator[Any],
    max_concurrency: int,
    total: int | None = None,
    desc: str = "collect",
    initializer: Callable[[], Any] | None = None,
) -> Iterator[Any]:
    """``fn`` over ``items`` on ``max_concurrency`` threads, never more than that many in
    flight (items are pulled lazily, so a paged listing overlaps with the fetches), with a
    progress bar (off when not a TTY). Results come back in completion order."""
    from tqdm.auto import tqdm

    if max_concurrency < 1:
        raise UsageError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    with (
        cf.ThreadPoolExecutor(max_workers=max_concurrency, initializer=initializer) as pool,
        tqdm(total=total, desc=desc, unit="run", disable=None, leave=False) as bar,
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
