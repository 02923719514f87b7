"""rmeval reproduce on runs published by the real run-one (kept model and re-converted
checkpoint), through the CLI, and on the demo's runs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from rmeval import cli, reproduce
from rmeval.store import SCORES_FILE
from tests.provenance_fixtures import copy_store, edit_provenance, publish


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return publish(tmp_path_factory.mktemp("published"))


def _cli(capsys, *args):
    capsys.readouterr()
    rc = cli.main(["reproduce", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_equal_settings_from_the_kept_model_reproduce_exactly(pub, capsys):
    rc, out, _ = _cli(capsys, pub.runs[0], "--store", pub.store)
    assert rc == 0, out
    assert f"model from kept model {pub.kept[pub.runs[0]]}" in out
    assert "kept model's weights are identical to the recorded sha256" in out
    assert "0 decisions changed, max reward diff 0 " in out
    assert out.rstrip().endswith("result: reproduced")


def test_a_changed_stored_reward_is_caught(pub, tmp_path, capsys):
    store = copy_store(pub, tmp_path / "store")
    scores = Path(store) / pub.runs[0] / SCORES_FILE
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    rows[0]["chosen_reward"], rows[0]["rejected_reward"] = (
        rows[0]["rejected_reward"],
        rows[0]["chosen_reward"],
    )
    rows[0]["correct"] = not rows[0]["correct"]
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, _ = _cli(capsys, pub.runs[0], "--store", store)
    assert rc == 1
    assert "1 decisions changed" in out and "NOT reproduced at equal settings" in out


def test_bf16_override_on_cpu_states_the_difference(pub, capsys):
    res = reproduce.reproduce(pub.runs[0], pub.store, dtype="bf16", progress=False)
    assert res.overridden == ["--dtype bf16"] and res.settings["dtype"] == "bf16"
    assert res.max_reward_diff is not None and res.max_reward_diff > 0
    assert res.ok == (res.max_reward_diff <= reproduce.DEFAULT_REWARD_TOLERANCE)
    text = "\n".join(res.lines())
    assert "dtype bf16 (recorded fp32)" in text
    assert f"max reward diff {res.max_reward_diff:.3g}" in text
    # a tolerance above the measured difference accepts it
    rc, out, _ = _cli(
        capsys, pub.runs[0], "--store", pub.store, "--dtype", "bf16",
        "--reward-tolerance", str(res.max_reward_diff * 2),
    )  # fmt: skip
    assert rc == 0 and "within tolerance" in out


def test_without_a_kept_model_the_checkpoint_is_converted_again(pub, tmp_path, capsys):
    store = copy_store(pub, tmp_path / "store")
    run = pub.runs[1]
    edit_provenance(store, run, lambda p: p.update(kept_model=str(tmp_path / "gone")))
    rc, out, _ = _cli(capsys, run, "--store", store)
    assert rc == 0, out
    assert f"model from re-converted {pub.material.checkpoints[1]}" in out
    assert "re-converted weights are identical to the recorded sha256" in out
    assert "result: reproduced" in out


def test_nothing_to_rescore_is_one_line(pub, tmp_path, capsys):
    store = copy_store(pub, tmp_path / "store")
    run = pub.runs[1]
    gone = tmp_path / "no-ckpt" / "streaming_params_5"
    edit_provenance(store, run, lambda p: p.update(kept_model=None, checkpoint=str(gone)))
    rc, out, err = _cli(capsys, run, "--store", store)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1
    assert "it kept no model" in err and f"its checkpoint {gone} is not reachable" in err
    rc, _, err = _cli(capsys, "no-such-run", "--store", store)
    assert rc == 1 and "not a published run" in err and err.count("\n") == 1


def test_settings_and_data_that_cannot_work_fail_before_converting(pub, tmp_path, capsys):
    """fp16 on a CPU and a recorded dataset that is gone are one line each, before the
    checkpoint is converted again (counted, not mocked)."""
    from rmeval.checkpoints.convert import convert
    from tests.call_counter import CallCounter

    store = copy_store(pub, tmp_path / "store")
    run = pub.runs[1]
    edit_provenance(store, run, lambda p: p.update(kept_model=str(tmp_path / "gone")))
    with CallCounter(convert=convert) as calls:
        rc, _, err = _cli(capsys, run, "--store", store, "--dtype", "fp16", "--device", "cpu")
    assert rc == 1 and err.count("\n") == 1 and "fp16" in err, err
    gone = tmp_path / "gone.jsonl"
    edit_provenance(store, run, lambda p: p.update(dataset=str(gone)))
    with CallCounter(convert=convert) as more:
        rc, _, err = _cli(capsys, run, "--store", store)
    assert rc == 1 and err.count("\n") == 1 and str(gone) in err, err
    assert calls["convert"] == 0 and more["convert"] == 0


def test_old_provenance_is_unknown_and_still_reproduced_from_the_kept_model(pub, tmp_path, capsys):
    store = copy_store(pub, tmp_path / "store")
    run = pub.runs[0]
    old = ("software", "device")
    edit_provenance(store, run, lambda p: [p.pop(k) for k in old] + [p["convert"].clear()])
    rc, out, _ = _cli(capsys, run, "--store", store)
    assert rc == 0, out
    assert "note: unknown provenance" in out and "result: reproduced" in out


def test_random_new_picks_a_row_the_collect_added(pub, tmp_path, capsys):
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    after.write_text("name,Overall\n" + "".join(f"{r},0.5\n" for r in pub.runs))
    before.write_text(f"name,Overall\n{pub.runs[0]},0.5\n")
    assert reproduce.pick_new(str(before), str(after), random.Random(0)) == pub.runs[1]
    assert reproduce.pick_new(str(tmp_path / "none.csv"), str(after)) in pub.runs
    rc, out, _ = _cli(capsys, "--random-new", str(before), str(after), "--store", pub.store)
    assert rc == 0 and f"reproduce {pub.runs[1]}:" in out
    rc, out, _ = _cli(capsys, "--random-new", str(after), str(after), "--store", pub.store)
    assert rc == 0 and "no new run" in out


@pytest.mark.slow
def test_demo_runs_reproduce_at_equal_settings_and_state_the_bf16_difference(tmp_path, capsys):
    from rmeval import store as store_layout

    assert cli.main(["demo", "--workdir", str(tmp_path / "w"), "--results-dir",
                     str(tmp_path / "r"), "--runs", "2"]) == 0  # fmt: skip
    store = str(tmp_path / "w" / "store")
    runs = sorted(store_layout.completed_runs(store))
    assert len(runs) == 2
    for run in runs:
        rc, out, _ = _cli(capsys, run, "--store", store)
        assert rc == 0 and "re-converted weights are identical" in out, out
        assert "0 decisions changed, max reward diff 0 " in out
    res = reproduce.reproduce(runs[0], store, dtype="bf16", progress=False)
    assert res.max_reward_diff is not None and res.max_reward_diff > 0
    shutil.rmtree(tmp_path / "w", ignore_errors=True)


def test_fetch_results_reproduce_step_reports_a_new_run_in_the_summary(pub, tmp_path):
    """The workflow step's own script, run by bash against a git repository whose table
    gained a row since the commit the workflow started from."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parent.parent
    wf = yaml.safe_load((root / ".github/workflows/fetch-results.yml").read_text())
    job = wf["jobs"]["reproduce"]
    assert job["if"].startswith("vars.RMEVAL_REPRODUCE == 'true'")
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"]
    (script,) = [s["run"] for s in job["steps"] if "rmeval reproduce" in s.get("run", "")]
    repo = tmp_path / "repo"
    table = repo / "results" / "ds" / "t.csv"
    table.parent.mkdir(parents=True)
    table.write_text(f"name,Overall\n{pub.runs[0]},0.5\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "before"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    table.write_text(f"name,Overall\n{pub.runs[0]},0.5\n{pub.runs[1]},0.6\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "rmeval"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rmeval "$@"\n')
    launcher.chmod(0o755)
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "GITHUB_SHA": sha.stdout.strip(),
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_STEP_SUMMARY": str(summary),
        "STORE": pub.store,
        "DATASET": "ds",
        "TABLE": "t",
        "TOLERANCE": "",
    }
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = summary.read_text()
    assert text.startswith("### rmeval reproduce: ds\n")
    assert f"reproduce {pub.runs[1]}:" in text and "result: reproduced" in text


def test_usage_errors_exit_2_in_one_line(tmp_path, capsys):
    for args in (
        ["--store", str(tmp_path)],
        ["r", "--random-new", "a.csv", "b.csv", "--store", str(tmp_path)],
        ["r"],
    ):
        rc, out, err = _cli(capsys, *args)
        assert rc == 2 and out == "" and err.count("\n") == 1, args
