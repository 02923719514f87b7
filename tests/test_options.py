"""Each option declared once (rmeval/options.py): convert, evaluate, run-one, plan and
pipeline take the same choices, defaults and help; the Beaker template passes each run-one
variable as its flag; one config schema for pipeline.yml and eval-schedule.yml; renamed
flags keep their old names; -v after the subcommand; the docs and README say the same."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmeval import cli, options, plan, specs
from rmeval.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def _actions(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(name)._actions if a.option_strings}


@pytest.mark.parametrize(
    "dest",
    ["model_size", "num_heads", "rope_theta", "rope_scaling", "tokenizer", "dtype", "verify"],
)
def test_convert_options_are_the_same_in_convert_and_run_one(dest):
    convert, run_one = _actions("convert")[dest], _actions("run-one")[dest]
    for attr in ("option_strings", "choices", "default", "help", "type", "nargs"):
        assert getattr(convert, attr) == getattr(run_one, attr), (dest, attr)


@pytest.mark.parametrize(
    "dest", ["eval_data", "subsets", "scoring", "device", "dtype", "max_length", "max_tokens"]
)
def test_evaluate_options_are_the_same_in_evaluate_and_run_one(dest):
    evaluate, run_one = _actions("evaluate")[dest], _actions("run-one")[dest]
    for attr in ("option_strings", "choices", "default", "help", "type", "nargs"):
        assert getattr(evaluate, attr) == getattr(run_one, attr), (dest, attr)


def test_plan_and_launch_take_run_ones_options_as_template_variables():
    for command in ("plan", "launch"):
        actions = _actions(command)
        for o in options.TEMPLATE_OPTIONS:
            a, mine = actions[o.dest], _actions("run-one")[o.dest]
            assert a.choices == mine.choices and a.type == mine.type, (command, o.dest)
            assert a.default is None  # unset: the template's default, which is run-one's


def _every_template_value() -> dict:
    """A value for every run-one template variable, of the option's type and choices."""
    out = {}
    for o in options.TEMPLATE_OPTIONS:
        choices = o.resolved_choices()
        if choices:
            value = [c for c in choices if c != o.resolved_default()][-1]
            out[o.dest] = [value] if o.nargs else value
        elif o.nargs:
            out[o.dest] = ["chat", "hep-go"]
        elif o.type is options.positive_int:
            out[o.dest] = 7
        elif o.type is options.positive_float:
            out[o.dest] = 250000.0
        else:
            out[o.dest] = f"gs://bucket/{o.dest}"
    return out


def test_the_template_passes_every_run_one_variable_as_its_flag(tmp_path):
    """Plan with every run-one option set, then read each task back with run-one's own
    parser: every value arrives, under its flag (the template derives from the table)."""
    ckpt = tmp_path / "src" / "tulu2_13b_rm_counts_ID__abc__SWAPS_5" / "streaming_params_2"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    wanted = _every_template_value()
    _, spec = plan.make_plan(str(tmp_path / "src"), store=str(tmp_path / "s"), options=wanted)
    header = specs.DEFAULT_TEMPLATE.read_text().split("-#}")[0]
    (task,) = yaml.safe_load(spec.text)["tasks"]
    ns = options.parser("run-one").parse_args(task["arguments"])
    for dest, value in wanted.items():
        assert getattr(ns, dest) == value, dest
        assert re.search(rf"^\s+{dest}\s+{re.escape(options.BY_DEST[dest].name)}\b", header, re.M)


def test_old_flag_names_are_aliases(capsys):
    evaluate = options.parser("evaluate")
    ns = evaluate.parse_args(["m", "--dataset", "rb.jsonl", "--out", "metrics.json"])
    assert (ns.eval_data, ns.output) == ("rb.jsonl", "metrics.json")
    assert "--dataset is deprecated; use --eval-data" in capsys.readouterr().err
    ns = evaluate.parse_args(["m", "--eval-data", "rb.jsonl", "--output", "x.json"])
    assert (ns.eval_data, ns.output) == ("rb.jsonl", "x.json")
    assert capsys.readouterr().err == ""  # the new names say nothing
    ns = _subparser("collect").parse_args(["--source", "s", "--dataset", "hs2"])
    assert ns.results_dataset == "hs2"
    assert "--dataset is deprecated; use --results-dataset" in capsys.readouterr().err
    for command in ("fit", "report"):
        for flag in ("--output", "--out"):
            assert _subparser(command).parse_args(["t.csv", flag, "o"]).output == "o"


def test_a_task_parser_raises_instead_of_exiting():
    with pytest.raises(UsageError, match="rmeval run-one: argument --dtype: invalid choice"):
        options.parser("run-one").parse_args(["c", "--dtype", "fp8"])


def test_verbose_after_the_subcommand(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    for argv in (["ls", str(tmp_path), "-v"], ["-v", "ls", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "rmeval", *argv], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "INFO rmeval: 1 object(s)" in proc.stderr  # -v's format


# --------------------------------------------------------------------------- config schema


def test_schedule_entries_and_pipeline_configs_share_one_schema():
    pipeline, schedule = options.keys_of(options.PIPELINE), options.keys_of(options.SCHEDULE)
    shared = set(pipeline) & set(schedule)
    assert {"source", "store", "results_dataset", "feature_counts_dir", "tokenizer"} <= shared
    assert {o.dest for o in options.TEMPLATE_OPTIONS} <= shared
    assert all("-" not in k for k in pipeline) and all("-" not in k for k in schedule)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'; known keys: source, store"),
        ({"num_heads": "forty"}, "num_heads must be an integer, got 'forty'"),
        ({"subsets": "chat"}, "subsets must be a list, got 'chat'"),
        ({"max_parallel": 2}, "unknown key 'max_parallel'"),  # a pipeline key only
        ({"backend": "local"}, "backend must be one of runners, beaker, got 'local'"),
    ],
)
def test_schedule_entry_is_checked_strictly(entry, message):
    raw = {"results_dataset": "d", "source": "/x", "store": "/y", **entry}
    with pytest.raises(UsageError) as exc:
        options.check_config(raw, "eval-schedule.yml: entries[0]", options.SCHEDULE)
    assert message in str(exc.value) and "entries[0]" in str(exc.value)


def test_schedule_old_dashed_keys_are_accepted_with_a_warning(tmp_path, capsys, monkeypatch):
    from tests.test_workflows import plan_runs

    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    path = tmp_path / "schedule.yml"
    path.write_text(
        "entries:\n  - {dataset: a, source: /x, store: /y, feature-counts-dir: /f,"
        " eval-dataset: rb.jsonl, model-size: 13b, num-heads: 40}\n"
    )
    assert plan_runs.main(["targets", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    (target,) = json.loads(out.split("targets=", 1)[1].splitlines()[0])
    assert target["results_dataset"] == "a" and target["feature_counts_dir"] == "/f"
    assert target["eval_data"] == "rb.jsonl" and target["num_heads"] == 40
    for old, new in (
        ("dataset", "results_dataset"),
        ("feature-counts-dir", "feature_counts_dir"),
        ("eval-dataset", "eval_data"),
        ("model-size", "model_size"),
        ("num-heads", "num_heads"),
    ):
        assert f"::warning title=rmeval schedule::{path}: entries[0]: key '{old}' is " in out
        assert f"deprecated; use '{new}'" in out


def test_a_runner_job_gets_run_ones_arguments_from_the_table(monkeypatch, capsys):
    from tests.test_workflows import plan_runs

    job = {
        "checkpoint": "gs://b/c/streaming_params",
        "store": "gs://b/store",
        "prefix": "hs",
        "run_name": "",
        "tokenizer": "gs://b/tok.model",
        "eval_data": "",
        "num_heads": 40,
        "subsets": ["chat", "hep-go"],
    }
    monkeypatch.setenv("RUN", json.dumps(job))
    assert plan_runs.main(["args", "run-one"]) == 0
    argv = capsys.readouterr().out.split("\0")[:-1]
    ns = options.parser("run-one").parse_args(argv)
    assert (ns.checkpoint, ns.store, ns.prefix) == (job["checkpoint"], job["store"], "hs")
    assert (ns.tokenizer, ns.num_heads, ns.subsets) == (job["tokenizer"], 40, ["chat", "hep-go"])


# --------------------------------------------------------------------------- docs


def test_docs_options_is_the_table():
    text = (ROOT / "docs" / "options.md").read_text()
    assert options.markdown_table() in text, "regenerate docs/options.md from rmeval.options"
    assert options.markdown_keys() in text


def test_readme_command_table_lists_every_command_with_the_new_names():
    readme = (ROOT / "README.md").read_text()
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| `rmeval ([a-z-]+)[^|]*\|.*$", readme, re.M)
    }
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert sorted(rows) == sorted(sub.choices)
    for command, flag in (
        ("evaluate", "--eval-data"),
        ("evaluate", "--output"),
        ("run-one", "--eval-data"),
        ("collect", "--results-dataset"),
        ("fit", "--output"),
        ("report", "--output"),
    ):
        assert flag in rows[command], (command, flag)
    assert "--dataset " not in readme and "--out " not in readme
