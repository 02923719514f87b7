"""The CLI shell: help, usage errors, one-line failures, logging only configured by main()."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil

import pytest

import rmeval
from rmeval import cli
from tests.cli_runner import run_rmeval

_run = run_rmeval  # the shared runner (tests/cli_runner.py); tests take the rmeval_cli fixture


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_help_lists_every_subcommand(rmeval_cli):
    proc = rmeval_cli("--help")
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
def test_usage_errors_exit_2(rmeval_cli, argv):
    proc = rmeval_cli(*argv)
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


def _debug_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("DEBUG rmeval")]


def test_verbose_flag_turns_on_debug(rmeval_cli, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    proc = rmeval_cli("-v", "ls", str(tmp_path))
    assert proc.returncode == 0
    assert "f.txt" in proc.stdout
    debug = _debug_lines(proc.stderr)
    assert debug and f"rmeval {rmeval.version()} from " in debug[0], proc.stderr
    quiet = rmeval_cli("ls", str(tmp_path))  # the same command without -v: no debug line
    assert quiet.returncode == 0 and _debug_lines(quiet.stderr) == []
    assert "DEBUG" not in quiet.stderr


def test_verbose_shows_the_root_cause_plain_is_one_line(fake_beaker, tmp_path, capsys):
    """A wrapped library error keeps its cause (``raise … from exc``): -v prints
    beaker-py's own error under the traceback; without -v the failure is one line."""
    argv = ["collect", "--source", "beaker://ai2/nope", "--output", str(tmp_path / "t.csv")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("rmeval: error: ") and err.count("\n") == 1
    assert "workspace 'ai2/nope' not found" in err and "BeakerWorkspaceNotFound" not in err
    assert cli.main(["-v", *argv]) == 1
    err = capsys.readouterr().err
    assert "BeakerWorkspaceNotFound" in err  # the root cause, beaker-py's exception
    assert "The above exception was the direct cause of the following exception" in err
    assert not (tmp_path / "t.csv").exists()


# --------------------------------------------------------------------------- output exists


def test_an_existing_output_gets_each_commands_own_hint(tmp_path, capsys):
    """The library names the path only; each command says how to replace it: its own
    flag (run-one's --force: tests/test_run_one.py), a pipeline's config key."""
    out = tmp_path / "sample.jsonl"
    out.write_text("someone else's\n")
    assert cli.main(["rewardbench-sample", str(out)]) == 1
    line = capsys.readouterr().err.strip()
    assert line == f"rmeval: error: {out}: already exists; pass --overwrite to replace it"
    assert out.read_text() == "someone else's\n"

    from rmeval.pipeline import exists_hint

    cfg = {"store": str(tmp_path / "store"), "results_dir": str(tmp_path / "results")}
    cfg["log_dir"] = str(tmp_path / "results" / "logs")
    config = tmp_path / "pipeline.yml"
    hint = exists_hint(cfg, str(tmp_path / "results" / "logs" / "a.log"), config)
    assert hint == f"move it away, or set log_dir in {config} to another location"
    hint = exists_hint(cfg, str(tmp_path / "store" / "run" / "metrics.json"), config)
    assert hint == f"move it away, or set store in {config} to another location"
    hint = exists_hint(cfg, str(tmp_path / "elsewhere"), config)
    assert hint == f"move it away, or change where {config} writes"
    assert "--" not in exists_hint(cfg, str(tmp_path / "results" / "t.csv"), config)


def test_failures_are_recorded_in_the_status_file(rmeval_cli, tmp_path):
    """``--result-json`` (every command): ok, or the failure's type and message, the line
    the CLI printed; what the local backend and the plan-runs action read."""
    status_file = tmp_path / "status.json"
    missing = tmp_path / "missing"
    proc = rmeval_cli("ls", str(missing), "--result-json", str(status_file))
    assert proc.returncode == 1
    record = json.loads(status_file.read_text())
    assert record == {
        "status": "failed",
        "error_type": "StoreError",
        "message": f"{missing}: no such file or directory",
        "exit_code": 1,
    }
    assert proc.stderr.strip() == f"rmeval: error: {record['message']}"
    proc = rmeval_cli("ls", str(tmp_path), "--result-json", str(status_file))
    assert proc.returncode == 0
    assert json.loads(status_file.read_text()) == {"status": "ok", "exit_code": 0}
