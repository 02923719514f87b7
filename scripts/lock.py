"""Write or check ``requirements.lock``: rmeval's run-time dependencies, locked with hashes.

``make lock`` runs ``python scripts/lock.py --uv UV``; ``make lock-check`` (and CI) add
``--check``. The inputs are pyproject.toml's ``dependencies`` plus the extras in
:data:`LOCKED_EXTRAS`, without torch: pyproject leaves torch unpinned (a GPU machine keeps
its CUDA build), and the lock's header records the two variants rmeval is run with
(:data:`TORCH_VARIANTS`). ``uv pip compile --universal`` resolves them for every platform
and Python rmeval supports, with the sha256 of every file; its own header is replaced by
ours, which records the sha256 of the inputs, so a lock that no longer matches
pyproject.toml is caught without any network (:func:`stale_reason`, tests/test_lock.py).
The output names no package index (uv writes no ``--index-url`` line unless asked).

``--check`` also compiles again into a copy of the lock (uv keeps the versions already
locked), and fails when anything would change. Needs Python >= 3.11 (tomllib).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements.lock"  # rmeval.provenance.LOCK_FILE (tests check)
LOCKED_EXTRAS = ("beaker",)  # what the task image and the runners install
UNLOCKED = ("torch",)
PYTHON_FLOOR = "3.10"  # pyproject's requires-python
# name -> how to install it; the Makefile's TORCH_PIN and the Dockerfile's base say the same
# (tests/test_lock.py checks)
TORCH_VARIANTS = {
    "cpu": "torch==2.13.0 (the CPU wheel: the demo/test environment and CI)",
    "cuda": "torch 2.8.0+cu128 of the task image's base, "
    "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime (Dockerfile; GPU runners alike)",
}
INPUTS_LINE = "# inputs-sha256: "


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def inputs(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirements the lock is compiled from, in pyproject's order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [r for r in reqs if _name(r) not in UNLOCKED]


def inputs_sha256(reqs: list[str]) -> str:
    return hashlib.sha256("\n".join(reqs).encode()).hexdigest()


def header(reqs: list[str]) -> str:
    lines = [
        "# rmeval's run-time dependencies, locked with hashes. Do not edit: `make lock` writes",
        "# this file from pyproject.toml (dependencies + extras: "
        + ", ".join(LOCKED_EXTRAS)
        + "), `make lock-check` (CI) fails when it is stale.",
        f"{INPUTS_LINE}{inputs_sha256(reqs)}",
        "# torch is not locked (pyproject leaves it unpinned); install one variant first:",
        *(f"#   {k}: {v}" for k, v in TORCH_VARIANTS.items()),
        "# then: pip install --require-hashes --no-deps -r requirements.lock",
        "#       pip install --no-deps .   (rmeval itself; then pip check)",
    ]
    return "\n".join(lines) + "\n"


def stale_reason(lock_text: str, reqs: list[str]) -> str | None:
    """Why the lock does not match the inputs (None: it does), offline."""
    m = re.search(rf"^{re.escape(INPUTS_LINE)}([0-9a-f]{{64}})$", lock_text, re.M)
    if m is None:
        return "it has no inputs-sha256 line (not written by make lock)"
    if m.group(1) != inputs_sha256(reqs):
        return "pyproject.toml's dependencies changed since it was written"
    return None


def compile_lock(uv: str, reqs: list[str], out: Path) -> str:
    """``uv pip compile`` the inputs into ``out`` (uv prefers the versions ``out`` already
    pins) and return the lock text with our header."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(reqs) + "\n")
        cmd = [
            uv, "pip", "compile", str(src), "--universal", "--python-version", PYTHON_FLOOR,
            "--generate-hashes", "--no-header", "--quiet", "--output-file", str(out),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
    body = out.read_text()
    body = "".join(line for line in body.splitlines(True) if not line.startswith("--"))
    return header(reqs) + body.replace(str(src), "requirements.in")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uv", default="uv", help="the uv executable")
    p.add_argument("--check", action="store_true", help="fail when the lock is stale")
    args = p.parse_args(argv)
    reqs = inputs()
    if args.check:
        have = LOCK_FILE.read_text() if LOCK_FILE.is_file() else ""
        why = stale_reason(have, reqs) if have else "it does not exist"
        if why is None:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / LOCK_FILE.name
                shutil.copyfile(LOCK_FILE, copy)
                if compile_lock(args.uv, reqs, copy) != have:
                    why = "compiling it again changes it"
        if why:
            print(f"{LOCK_FILE.name} is stale: {why}; run `make lock`", file=sys.stderr)
            return 1
        print(f"{LOCK_FILE.name} is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / LOCK_FILE.name
        if LOCK_FILE.is_file():
            shutil.copyfile(LOCK_FILE, work)
        text = compile_lock(args.uv, reqs, work)
    tmp_out = LOCK_FILE.with_suffix(".lock.tmp")
    tmp_out.write_text(text)
    tmp_out.replace(LOCK_FILE)
    print(f"wrote {LOCK_FILE.name} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
