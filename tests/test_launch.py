"""rmeval launch: the local process pool (real worker processes) and the Beaker backend
(real beaker-py against the fake Beaker service on loopback)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmeval import launch, naming, plan, specs, storage
from rmeval.backends import beaker as beaker_backend
from rmeval.backends import local
from rmeval.errors import BackendError, UsageError
from tests.call_counter import CallCounter
from tests.run_fixtures import HEADS, make_material

WS = "ai2/rm-evals"

TOKENIZER = {"tokenizer": "gs://bucket/tokenizer.model"}  # plan checks one is given, not read


def _make_plan(*args, **kwargs):
    """plan.make_plan with a tokenizer for the tasks (plan refuses run-one tasks without)."""
    if "tokenizer" not in (kwargs.get("values") or {}):
        kwargs["options"] = {**TOKENIZER, **kwargs.get("options", {})}
    return plan.make_plan(*args, **kwargs)


def _task(name: str, *args: str, result: str | None = "/output") -> dict:
    t = {
        "name": name,
        "image": {"docker": "ghcr.io/rmeval/rmeval:latest"},
        "context": {"priority": "normal", "preemptible": True},
        "command": ["rmeval"],
        "arguments": list(args),
        "resources": {"gpuCount": 1},
        "envVars": [{"name": "HF_TOKEN", "secret": "HF_TOKEN"}],
    }
    if result:
        t["result"] = {"path": result}
    return t


def _spec(*tasks: dict) -> dict:
    return {"version": "v2", "description": "test", "tasks": list(tasks)}


def _published(tmp_path: Path) -> tuple[str, str]:
    """A checkpoint path whose run is already published in a store."""
    ckpt = str(tmp_path / "src" / "run_a--1" / "streaming_params_3")
    store = str(tmp_path / "store")
    storage.write_text(storage.join(store, naming.run_name(ckpt), "metrics.json"), "{}")
    return ckpt, store


# --------------------------------------------------------------------------- local


def test_local_pool_reports_ok_skipped_failed_and_keeps_going(tmp_path):
    ckpt, store = _published(tmp_path)
    (tmp_path / "listing").mkdir()
    (tmp_path / "listing" / "f.txt").write_text("x")
    spec = _spec(
        _task("a-fails", "ls", str(tmp_path / "missing")),
        _task("b-ok", "ls", str(tmp_path / "listing")),
        # published already: only its values are checked (the tokenizer is never read)
        _task("c-skipped", "run-one", ckpt, "--store", store, "--tokenizer", "t.model"),
    )
    logs = tmp_path / "logs"
    summary = launch.launch(spec, backend="local", log_dir=logs, max_parallel=2, progress=False)
    status = {o.name: o.status for o in summary.outcomes}
    assert status == {"a-fails": "failed", "b-ok": "ok", "c-skipped": "skipped"}
    assert summary.exit_code == 1
    failed = summary.failed[0]
    assert "no such file or directory" in failed.detail
    assert failed.log == str(logs / "a-fails.log")
    # the outcome is what the worker's status file says, not a line parsed from its log
    record = json.loads((logs / "a-fails.result.json").read_text())
    assert record["status"] == "failed" and record["error_type"] == "StoreError"
    assert failed.detail == f"exit 1: {record['message']}"
    assert json.loads((logs / "b-ok.result.json").read_text())["status"] == "ok"
    assert "f.txt" in (logs / "b-ok.log").read_text()
    assert "already done" in (logs / "c-skipped.log").read_text()
    lines = summary.lines()
    assert lines[0].startswith("failed   a-fails") and str(logs / "a-fails.log") in lines[0]
    assert lines[-1] == "local: 3 run(s): 1 ok, 1 skipped, 1 failed"


def test_local_result_path_is_emulated_and_commands_checked(tmp_path):
    spec = _spec(_task("r", "run-one", "c/streaming_params", "--keep-model", "/output/model"))
    (task,) = local.tasks_from_spec(spec, tmp_path)
    assert task.argv[-1] == str(tmp_path / "r" / "output" / "model")
    bad = _spec({**_task("x"), "command": ["python", "-c", "print(1)"]})
    with pytest.raises(BackendError, match=r"only 'rmeval …' commands"):
        local.tasks_from_spec(bad, tmp_path)
    mounted = _spec(
        {**_task("m", "evaluate"), "datasets": [{"mountPath": "/m", "source": {"beaker": "d"}}]}
    )
    with pytest.raises(BackendError, match="cannot mount Beaker datasets"):
        local.tasks_from_spec(mounted, tmp_path)


def test_local_dry_run_runs_nothing(tmp_path):
    spec = _spec(_task("a", "ls", str(tmp_path)))
    summary = launch.launch(spec, backend="local", log_dir=tmp_path / "logs", dry_run=True)
    assert [(o.name, o.status) for o in summary.outcomes] == [("a", "planned")]
    assert not (tmp_path / "logs").exists()


def test_local_dry_run_prints_command_lines_a_shell_runs_as_printed(tmp_path):
    odd = tmp_path / "it's a dir" / "with  spaces; $HOME"
    odd.mkdir(parents=True)
    (odd / "f.txt").write_text("x")
    spec = _spec(_task("a", "ls", str(odd), "--match", "*.txt"))
    (planned,) = launch.launch(spec, backend="local", log_dir=tmp_path / "l", dry_run=True).outcomes
    assert shlex.split(planned.detail) == ["rmeval", "ls", str(odd), "--match", "*.txt"]
    # and the printed line, pasted into a shell, runs exactly that command
    line = planned.detail.replace("rmeval", f"{shlex.quote(sys.executable)} -m rmeval", 1)
    r = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and str(odd / "f.txt") in r.stdout, r.stderr


def test_launch_rejects_invalid_spec_and_bad_arguments(tmp_path):
    bad = _spec(_task("a", "ls"))
    bad["tasks"][0]["resources"]["gpuCount"] = "two"
    with pytest.raises(Exception, match=r"gpuCount: expected an integer"):
        launch.launch(bad, backend="local", log_dir=tmp_path)
    with pytest.raises(UsageError):
        launch.launch(None, backend="local")
    with pytest.raises(UsageError, match="unknown backend"):
        launch.launch(_spec(_task("a", "ls")), backend="slurm")


@pytest.mark.slow  # two real conversions + evaluations in worker processes
def test_local_end_to_end_and_resume(tmp_path):
    m = make_material(tmp_path / "m")
    store = tmp_path / "store"
    p, spec = _make_plan(
        str(tmp_path / "m" / "ckpts"),
        store=str(store),
        prefix="e2e",
        values={
            "tokenizer": m.tokenizer,
            "eval_data": m.dataset,
            "num_heads": HEADS,
            "keep_model": False,
        },
    )
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(spec.text)
    cmd = [
        sys.executable, "-m", "rmeval", "launch", str(spec_file), "--backend", "local",
        "--max-parallel", "2", "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "local: 2 run(s): 2 ok, 0 failed"
    for run in p.to_run:
        assert (store / run.run / "metrics.json").is_file()
        assert (tmp_path / "logs" / f"{run.run}.log").is_file()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0
    assert r.stdout.strip().splitlines()[-1] == "local: 2 run(s): 2 skipped, 0 failed"
    again, _ = _make_plan(str(tmp_path / "m" / "ckpts"), store=str(store), prefix="e2e")
    assert (len(again.done), len(again.to_run)) == (2, 0)


# --------------------------------------------------------------------------- beaker


def _planned_spec(tmp_path: Path) -> tuple[plan.Plan, dict]:
    for d in ("x--1", "x_more--2", "weird:name #{{ a }}--3"):
        storage.write_bytes(str(tmp_path / "src" / d / "streaming_params_1"), b"c")
    p, spec = _make_plan(str(tmp_path / "src"), prefix="hs", store=str(tmp_path / "st"))
    data, _ = specs.validate_spec(spec.text)
    return p, data


def test_beaker_creates_one_experiment_per_run_then_reports_existing(fake_beaker, tmp_path):
    fake_beaker.add_workspace(WS)
    p, spec = _planned_spec(tmp_path)
    summary = launch.launch(spec, backend="beaker", workspace=WS)
    assert summary.exit_code == 0
    assert sorted(o.status for o in summary.outcomes) == ["created"] * 3
    created = fake_beaker.created_experiments()
    assert sorted(c.name for c in created) == sorted(r.experiment for r in p.to_run)
    for c in created:
        assert c.workspace == WS
        (task,) = c.spec["tasks"]
        assert naming.eval_experiment_name(task["name"]) == c.name
        assert task["result"] == {"path": "/output"}
        assert task["resources"]["gpuCount"] == 1
        secrets = {e["name"]: e.get("secret") for e in task["envVars"]}
        assert secrets["BEAKER_TOKEN"] == "BEAKER_TOKEN"
        assert secrets["GOOGLE_SERVICE_ACCOUNT"] == "GOOGLE_SERVICE_ACCOUNT"
        assert secrets["HF_TOKEN"] == "HF_TOKEN"
        assert not task.get("datasets")  # nothing re-uploaded or mounted
    again = launch.launch(spec, backend="beaker", workspace=WS)
    assert sorted(o.status for o in again.outcomes) == ["exists"] * 3
    assert again.exit_code == 0
    assert len(fake_beaker.created_experiments()) == 3


def test_beaker_dry_run_creates_nothing(fake_beaker, tmp_path):
    fake_beaker.add_workspace(WS)
    p, spec = _planned_spec(tmp_path)
    summary = launch.launch(spec, backend="beaker", workspace=WS, dry_run=True)
    assert {o.status for o in summary.outcomes} == {"planned"}
    assert all(r.experiment in o.detail for r, o in zip(p.to_run, summary.outcomes, strict=True))
    assert fake_beaker.created_experiments() == []


def test_beaker_workspace_errors(fake_beaker, tmp_path):
    _, spec = _planned_spec(tmp_path)
    with pytest.raises(UsageError, match="--backend beaker needs --workspace ORG/NAME"):
        launch.launch(spec, backend="beaker", workspace=None)
    with pytest.raises(BackendError, match=r"workspace 'ai2/nope' not found"):
        launch.launch(spec, backend="beaker", workspace="ai2/nope")


def test_plan_counts_existing_experiments_as_done_by_exact_name(fake_beaker, tmp_path):
    fake_beaker.add_workspace(WS)
    fake_beaker.add_experiment(WS, "rm-eval-hs-x")
    fake_beaker.add_experiment(WS, "rm-eval-hs-x_more-older")  # not an exact match
    assert beaker_backend.existing_experiments(WS, "rm-eval-") == {
        "rm-eval-hs-x",
        "rm-eval-hs-x_more-older",
    }
    for d in ("x--1", "x_more--2"):
        storage.write_bytes(str(tmp_path / "src" / d / "streaming_params_1"), b"c")
    p, spec = _make_plan(str(tmp_path / "src"), prefix="hs", store=str(tmp_path), workspace=WS)
    assert [r.run for r in p.done] == ["hs-x"]
    assert [t["name"] for t in yaml.safe_load(spec.text)["tasks"]] == ["hs-x_more"]


def test_cli_launch_beaker(fake_beaker, tmp_path):
    fake_beaker.add_workspace(WS)
    _, spec = _planned_spec(tmp_path)
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, **fake_beaker.env()}
    base = [sys.executable, "-m", "rmeval", "launch", str(spec_file), "--backend", "beaker"]
    r = subprocess.run(
        [*base, "--workspace", WS, "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "beaker: 3 run(s): 3 planned, 0 failed"
    assert fake_beaker.created_experiments() == []
    r = subprocess.run(
        [*base, "--workspace", WS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "beaker: 3 run(s): 3 created, 0 failed"
    assert len(fake_beaker.created_experiments()) == 3


# --------------------------------------------------------------------------- parsed once


def _spec_counter() -> CallCounter:
    """Counts, over the real code: YAML loads of a spec (any PyYAML loader, however it is
    reached), our strict check, and beaker-py's load of a whole experiment spec."""
    from beaker import BeakerExperimentSpec

    loaders = tuple(
        cls.__init__
        for cls in vars(yaml).values()
        if isinstance(cls, type) and cls.__name__.endswith("Loader") and "__init__" in vars(cls)
    )
    return CallCounter(
        when={
            "yaml": lambda args: isinstance(args.get("stream"), str) and "run-one" in args["stream"]
        },
        yaml=loaders,
        check=specs.check_spec,
        beaker=BeakerExperimentSpec.from_json,
    )


@pytest.mark.parametrize("backend", ["local", "beaker"])
def test_launch_source_dry_run_parses_checks_and_loads_the_spec_once(
    tmp_path,
    backend,
    request,
):
    from rmeval import cli

    if backend == "beaker":  # a Beaker dry run reads the workspace's experiments
        request.getfixturevalue("fake_beaker").add_workspace(WS)

    for d in ("x--1", "y--2"):
        storage.write_bytes(str(tmp_path / "src" / d / "streaming_params_1"), b"c")
    argv = ["launch", "--source", str(tmp_path / "src"), "--store", str(tmp_path / "st")]
    argv += ["--tokenizer", TOKENIZER["tokenizer"]]
    argv += ["--prefix", "hs", "--backend", backend, "--dry-run", "--log-dir", str(tmp_path / "l")]
    argv += ["--workspace", WS] if backend == "beaker" else []
    with _spec_counter() as calls:
        assert cli.main(argv) == 0
    assert dict(calls) == {"yaml": 1, "check": 1, "beaker": 1}


def test_launch_of_a_spec_file_and_plan_parse_it_once(tmp_path):
    from rmeval import cli

    storage.write_bytes(str(tmp_path / "src" / "x--1" / "streaming_params_1"), b"c")
    spec_file = tmp_path / "spec.yml"
    plan_argv = ["plan", "--source", str(tmp_path / "src"), "--store", str(tmp_path / "st")]
    plan_argv += ["--tokenizer", TOKENIZER["tokenizer"]]
    with _spec_counter() as calls:
        assert cli.main([*plan_argv, "--output", str(spec_file)]) == 0
    assert dict(calls) == {"yaml": 1, "check": 1, "beaker": 1}
    with _spec_counter() as calls:
        assert cli.main(["launch", str(spec_file), "--dry-run", "--log-dir", str(tmp_path)]) == 0
    assert dict(calls) == {"yaml": 1, "check": 1, "beaker": 1}


def test_pipeline_parses_its_planned_spec_once(tmp_path, monkeypatch):
    """One run to launch, whose worker fails at once (an empty checkpoint): the pipeline
    plans, launches and reports it, and parses the planned spec only once on the way."""
    from rmeval import cli

    storage.write_bytes(str(tmp_path / "ckpts" / "exp_a--h1" / "streaming_params_10"), b"")
    (tmp_path / "p.yml").write_text(
        "source: ckpts\nstore: store\nprefix: hs2\nresults_dir: results\ndataset: hs2\n"
        "table: runs\nfit: false\nreport: false\n"
    )
    monkeypatch.chdir(tmp_path)
    with _spec_counter() as calls:
        cli.main(["pipeline", "p.yml"])
    assert dict(calls) == {"yaml": 1, "check": 1, "beaker": 1}
