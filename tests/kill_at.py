"""kill -9 at a chosen real operation, for the crash tests.

``python -m tests.kill_at EVENT REGEX [--nth N] [--no-exchange] -- COMMAND ARGS...``
runs COMMAND in this process and sends itself SIGKILL just before the N-th operation
EVENT whose path (or request line) matches REGEX (``re.search``). The point is found with
an audit hook (:func:`sys.addaudithook`) on the real operations, so rmeval carries no
test hook. Events:

- ``open``: a file opened for writing (``open``, ``os.open``); the path;
- ``rename``: ``os.rename`` / ``os.replace``; the destination;
- ``link``: ``os.link``; the destination (a no-clobber commit);
- ``remove``: ``os.remove`` / ``os.unlink``; the path;
- ``rmtree``: ``shutil.rmtree``; the path;
- ``listdir``: a directory listed (``os.listdir``, ``os.scandir``); the path. The
  exchange of two directories (``renameat2`` through ctypes) raises no audit event: the
  listing of the destination just before it marks the point;
- ``http``: an HTTP request sent by ``http.client`` (the GCS client's transport); its
  request line, e.g. ``DELETE /storage/v1/b/B/o/models%2Frm%2Fconfig.json?...``.

COMMAND is ``rmeval ARGS`` (the CLI), ``staged DEST VERSION [--overwrite]`` (publish
:func:`tree` of VERSION with :func:`rmeval.storage.staged_dir`, marker config.json) or
``together VERSION [--overwrite] URI...`` (:func:`rmeval.storage.write_together` of
:func:`file_text` of VERSION for each URI). ``--no-exchange`` makes the run see a file
system without RENAME_EXCHANGE (renameat2 refuses the flag, as such a file system does),
to test the two-rename path.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys

MARKER = "config.json"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def tree(version: str) -> dict[str, bytes]:
    """The files of version ``version`` of a staged tree: a marker, files every version
    has, and one file only this version has (so a mix of two versions shows)."""
    names = [MARKER, "a.bin", "sub/b.txt", f"only-{version}.txt"]
    return {n: f"{version}:{n}\n".encode() * (1 + len(n)) for n in names}


def file_text(version: str, uri: str) -> bytes:
    return f"{version}:{os.path.basename(uri)}\n".encode()


def _path_arg(ev: str, args: tuple) -> list[str]:
    """The paths (or request line) of an audit event that EVENT kinds look at."""

    def s(x) -> str:
        return os.fsdecode(x) if isinstance(x, (str, bytes, os.PathLike)) else ""

    if ev == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wxa+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        return [s(path)] if writing else []
    if ev in ("os.rename", "os.link"):
        return [s(args[1])]
    if ev in ("os.remove", "shutil.rmtree", "os.listdir", "os.scandir"):
        return [s(args[0])]
    if ev == "http.client.send":
        data = bytes(args[1][:2000]) if isinstance(args[1], (bytes, bytearray, memoryview)) else b""
        return [data.split(b"\r\n", 1)[0].decode("latin-1")]
    return []


_EVENTS = {  # EVENT -> the audit events it means
    "open": ("open",),
    "rename": ("os.rename",),
    "link": ("os.link",),
    "remove": ("os.remove",),
    "rmtree": ("shutil.rmtree",),
    "listdir": ("os.listdir", "os.scandir"),
    "http": ("http.client.send",),
}


def install(event: str, pattern: str, nth: int = 1) -> None:
    """SIGKILL this process just before the ``nth`` ``event`` that matches ``pattern``."""
    names, regex = _EVENTS[event], re.compile(pattern)
    seen = [0]

    def hook(ev: str, args: tuple) -> None:
        if ev not in names:
            return
        if any(regex.search(p) for p in _path_arg(ev, args) if p):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def _without_exchange() -> None:
    from rmeval import storage

    storage._exchange = lambda a, b: False  # what renameat2 answers there (EINVAL)


def _staged(argv: list[str]) -> int:
    from rmeval import storage

    dest, version, overwrite = argv[0], argv[1], "--overwrite" in argv
    with storage.staged_dir(dest, marker=MARKER, overwrite=overwrite) as build:
        for name, data in tree(version).items():
            (build / name).parent.mkdir(parents=True, exist_ok=True)
            (build / name).write_bytes(data)
    return 0


def _together(argv: list[str]) -> int:
    from rmeval import storage

    version, overwrite = argv[0], "--overwrite" in argv
    uris = [a for a in argv[1:] if a != "--overwrite"]
    storage.write_together([(u, file_text(version, u), overwrite) for u in uris])
    return 0


def main(argv: list[str]) -> int:
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m tests.kill_at")
    ap.add_argument("event", choices=sorted(_EVENTS))
    ap.add_argument("pattern")
    ap.add_argument("--nth", type=int, default=1)
    ap.add_argument("--no-exchange", action="store_true")
    opts = ap.parse_args(argv[:cut])
    command, rest = argv[cut + 1], argv[cut + 2 :]
    from rmeval import cli  # imports first: the hook sees only the command's own work

    run = {"rmeval": cli.main, "staged": _staged, "together": _together}[command]
    if opts.no_exchange:
        _without_exchange()
    install(opts.event, opts.pattern, opts.nth)
    return run(rest)


def run_killed(event: str, pattern: str, *args: str, nth: int = 1, no_exchange: bool = False):
    """Run ``python -m tests.kill_at EVENT PATTERN -- ARGS`` and check that it was killed
    there (a run that ends on its own means the kill point was never reached)."""
    extra = [f"--nth={nth}"] + (["--no-exchange"] if no_exchange else [])
    cmd = [sys.executable, "-m", "tests.kill_at", event, pattern, *extra, "--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at {event} {pattern} #{nth} (rc {proc.returncode}):\n{proc.stderr}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
