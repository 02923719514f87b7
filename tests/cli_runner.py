"""The one CLI runner of the tests: ``rmeval ARGS`` as a user runs it, in a fresh process.

``python -m rmeval`` with this interpreter (tests/conftest.py makes every child import this
checkout's rmeval), output captured as text, never raising on a non-zero exit. Tests take
the ``rmeval_cli`` fixture (tests/conftest.py loads this module as a plugin); module-level
helpers call :func:`run_rmeval`, which is the same function::

    def test_x(rmeval_cli, tmp_path):
        proc = rmeval_cli("ls", tmp_path)
        assert proc.returncode == 0

Tests that need the exit code and captured output of an in-process run call
``rmeval.cli.main([...])`` with ``capsys`` instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping

import pytest

# A safety net against a hung child, not a performance bound (a pipeline run takes minutes).
DEFAULT_TIMEOUT_S = 900

CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_rmeval(
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``rmeval *args`` in a child process (``env``: its whole environment, default ours)."""
    return subprocess.run(
        [sys.executable, "-m", "rmeval", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def rmeval_cli() -> CliRunner:
    """:func:`run_rmeval`: ``rmeval_cli("plan", "--source", src, cwd=tmp_path)``."""
    return run_rmeval
