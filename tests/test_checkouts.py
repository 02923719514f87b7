"""Two checkouts on one machine share the cached dependency environment, and each runs its
own code: through make, in the subprocesses its tests start, and in the local backend's
workers, whatever the order in which they set the environment up.

Two copies of this working tree (each its own git repository) differ in one visible line:
the CLI's description names the copy. They use the environment this test runs in (the one
`make test` built), as a second clone on the machine would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.checkout_copy import commit_all, copy_checkout

pytestmark = pytest.mark.slow

VENV = Path(sys.prefix)
DESCRIPTION = 'description="Turn EasyLM'

# Written into each copy and run there by its own pytest: the subprocesses a test starts
# (in another directory) and a local-backend worker must both print this copy's name.
OWN_CODE_TEST = """
import subprocess
import sys

from rmeval.backends import local


def test_subprocesses_and_workers_run_this_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing found through the working directory
    out = subprocess.run(
        [sys.executable, "-m", "rmeval", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "[checkout {name}]" in out, out
    summary = local.run_local(
        [local.LocalTask("help", ("--help",))], log_dir=tmp_path / "logs", progress=False
    )
    assert [o.status for o in summary.outcomes] == ["ok"]
    log = (tmp_path / "logs" / "help.log").read_text()
    assert "[checkout {name}]" in log, log
"""


def _copy(dst: Path, name: str) -> Path:
    """This working tree as a git repository whose CLI says ``[checkout NAME]``."""
    copy_checkout(dst)
    cli = dst / "rmeval" / "cli.py"
    text = cli.read_text()
    assert DESCRIPTION in text
    cli.write_text(text.replace(DESCRIPTION, f'description="[checkout {name}] Turn EasyLM', 1))
    (dst / "tests" / "test_own_code.py").write_text(
        textwrap.dedent(OWN_CODE_TEST).format(name=name)
    )
    commit_all(dst, f"checkout {name}")
    return dst


def _env() -> dict[str, str]:
    """The caller's environment without this checkout's PYTHONPATH (which make test sets)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _make(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["make", "-s", "-C", str(checkout), *args, f"VENV={VENV}", f"ENV_ROOT={VENV.parent}"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _site_packages() -> list[str]:
    site = next(VENV.glob("lib/python*/site-packages"))
    return sorted(p.name for p in site.iterdir())


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    if not (VENV / ".deps-ok").is_file():
        pytest.skip(f"{VENV} is not an environment that make built (run make test)")
    base = tmp_path_factory.mktemp("checkouts")
    a, b = _copy(base / "a", "A"), _copy(base / "b", "B")
    before = _site_packages()
    for checkout in (a, b, a):  # set up in turn, as two developers would
        r = _make(checkout, "env")
        assert r.returncode == 0, r.stdout + r.stderr
    assert _site_packages() == before, "make env changed the shared environment"
    return {"A": a, "B": b}


def test_the_shared_environment_holds_no_rmeval(checkouts):
    r = subprocess.run(
        [sys.executable, "-c", "import rmeval"], cwd="/", env=_env(), capture_output=True
    )
    assert r.returncode != 0, "rmeval is importable from the shared environment itself"


@pytest.mark.parametrize("name", ["A", "B", "A"])
def test_make_runs_this_checkouts_code(checkouts, name):
    r = _make(checkouts[name], "run", "ARGS=--help")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[checkout {name}]" in r.stdout


@pytest.mark.parametrize("name", ["A", "B"])
def test_tests_and_workers_of_each_checkout_run_its_code(checkouts, name):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["tests/test_own_code.py"]
    r = subprocess.run(
        cmd, cwd=checkouts[name], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
