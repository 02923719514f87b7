"""The CLI shell: help, usage errors, one-line failures, logging only configured by main()."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import subprocess
import sys

import pytest

import rmeval
from rmeval import cli


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmeval", *args], capture_output=True, text=True, timeout=120
    )


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_help_lists_every_subcommand():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in _subcommands():
        assert name in proc.stdout


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: rmeval " + name in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["ls"], ["ls", "a", "--bogus"]])
def test_usage_errors_exit_2(argv):
    proc = _run(*argv)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_importing_the_package_configures_no_logging():
    before = list(logging.getLogger().handlers)
    for mod in pkgutil.walk_packages(rmeval.__path__, "rmeval."):
        if mod.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError:  # optional extras (jax, beaker, sklearn) may be absent
            continue
    assert logging.getLogger().handlers == before


def test_verbose_flag_turns_on_debug(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    proc = _run("-v", "ls", str(tmp_path))
    assert proc.returncode == 0
    assert "f.txt" in proc.stdout
