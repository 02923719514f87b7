"""Real faulty file systems for the OS-error tests: a read-only mount and a full disk.

As root (CI containers, the dev machines) both are small tmpfs mounts made for the test
and unmounted after it: ``ro`` is mounted read-only (writes fail with EROFS; root ignores
permission bits, so chmod would prove nothing), ``full`` is a 256 KiB tmpfs filled to the
last block by one filler file (writes fail with ENOSPC, while creating names still works,
as on a real full disk). Without root, ``ro`` falls back to a directory without write
permission (EACCES) and ``full`` is skipped: no unprivileged way to fill a file system
that other processes share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler.bin"
FULL_SIZE = "256k"


def _mount(where: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "rmeval-test", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def _fill(where: Path) -> None:
    """Write until the file system refuses: ENOSPC."""
    chunk = b"\0" * 4096
    fd = os.open(where / FILLER, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def faulty_dir(kind: str, base: Path) -> Iterator[Path]:
    """A directory where every write fails: ``kind`` is ``"ro"`` or ``"full"``."""
    where = base / f"{kind}-disk"
    where.mkdir()
    if kind == "ro":
        if _mount(where, f"ro,size={FULL_SIZE}"):
            try:
                yield where
            finally:
                _umount(where)
            return
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
        return
    if kind != "full":
        raise ValueError(kind)
    if not _mount(where, f"size={FULL_SIZE}"):
        pytest.skip("a full disk needs root to mount a small tmpfs")
    try:
        _fill(where)
        yield where
    finally:
        _umount(where)


def expected_error(kind: str) -> str:
    """How the error line spells the errno of ``kind``."""
    if kind == "full":
        return "no space left on device (ENOSPC)"
    return "read-only file system (EROFS)" if os.geteuid() == 0 else "permission denied (EACCES)"


def files_in(where: Path) -> list[str]:
    """Every file under ``where`` except the filler (what a failed command left)."""
    return sorted(
        str(p.relative_to(where)) for p in where.rglob("*") if p.is_file() and p.name != FILLER
    )
