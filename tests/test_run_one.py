"""run-one end to end with real components: a flax-written checkpoint, the streaming
converter, the RewardBench evaluator, and a store that is a local dir or gs:// (emulator)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from rmeval import __version__, naming, run, storage
from rmeval import store as store_layout
from rmeval.errors import AlreadyExistsError, RmevalError
from tests.run_fixtures import HEADS, make_material


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return make_material(tmp_path_factory.mktemp("material"))


def _go(material, store, **kw):
    kw.setdefault("num_heads", HEADS)
    kw.setdefault("progress", False)
    kw.setdefault("eval_data", material.dataset)
    kw.setdefault("tokenizer", material.tokenizer)
    return run.run_one(material.checkpoints[0], store, prefix="t", **kw)


def test_run_one_publishes_metrics_scores_provenance(material, store_root, tmp_path):
    work = tmp_path / "work"
    keep = storage.join(store_root, "models", "m")
    res = _go(material, store_root, keep_model=keep, work_dir=str(work))
    expected_run = naming.run_name(material.checkpoints[0], "t")
    assert res.status == "ok" and res.run == expected_run
    dest = storage.join(store_root, expected_run)
    names = sorted(o.name for o in storage.list_objects(dest))
    assert names == ["metrics.json", "provenance.json", "scores.jsonl"]

    metrics = json.loads(storage.read_text(storage.join(dest, "metrics.json")))
    scores = [
        json.loads(x) for x in storage.read_text(storage.join(dest, "scores.jsonl")).splitlines()
    ]
    # metrics.json agrees with the per-pair scores it was computed from
    by_subset = defaultdict(list)
    for row in scores:
        by_subset[row["subset"]].append(row["correct"])
        assert row["correct"] == (row["chosen_reward"] > row["rejected_reward"])
    for subset, hits in by_subset.items():
        assert metrics[subset] == pytest.approx(sum(hits) / len(hits))
    assert metrics["model_type"] == "Seq. Classifier"
    assert metrics["model"] == expected_run

    prov = json.loads(storage.read_text(storage.join(dest, "provenance.json")))
    assert prov["checkpoint"] == material.checkpoints[0]
    assert prov["run"] == expected_run
    assert prov["rmeval_version"] == __version__
    assert set(prov["timings_s"]) == {"convert", "evaluate", "publish"}
    assert prov["evaluate"]["n_pairs"] == len(scores)
    assert prov["hostname"]
    assert any("rope_theta" in n for n in prov["convert"]["notes"])

    kept = {o.name for o in storage.list_objects(keep)}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= kept
    assert list(work.iterdir()) == []  # temporary files removed


def test_unfinished_run_is_redone_then_skipped_then_forced(material, tmp_path):
    store = str(tmp_path / "store")
    run_dir = storage.join(store, naming.run_name(material.checkpoints[0], "t"))
    # a crash between uploads left scores but no metrics.json: not done, redone
    storage.write_text(storage.join(run_dir, "scores.jsonl"), "partial\n")
    keep = tmp_path / "keep"
    first = _go(material, store, keep_model=str(keep))
    assert first.status == "ok"
    assert (keep / "config.json").is_file()
    assert storage.read_text(storage.join(run_dir, "scores.jsonl")) != "partial\n"
    metrics_uri = storage.join(run_dir, "metrics.json")
    before = storage.read_bytes(metrics_uri)
    prov_before = storage.read_bytes(storage.join(run_dir, "provenance.json"))
    second = _go(material, store)
    assert second.status == "skipped"
    assert storage.read_bytes(metrics_uri) == before
    assert storage.read_bytes(storage.join(run_dir, "provenance.json")) == prov_before
    (keep / "stale.txt").write_text("from an older model")
    forced = _go(material, store, force=True, keep_model=str(keep))
    assert forced.status == "ok"
    assert sorted(p.name for p in keep.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja"]
    )  # fmt: skip
    prov_after = json.loads(storage.read_text(storage.join(run_dir, "provenance.json")))
    assert prov_after["timings_s"] != json.loads(prov_before)["timings_s"]


def test_failure_cleans_up_and_publishes_nothing(material, tmp_path):
    """A failure after the preflight (the evaluator's: the dataset went away while the model
    was converted) leaves no temporary files and publishes nothing."""
    store = tmp_path / "store"
    work = tmp_path / "work"
    data = tmp_path / "rb.jsonl"
    data.write_text(Path(material.dataset).read_text())
    checked = run_preflight_then_remove(material, store, data)
    with pytest.raises(RmevalError):
        _go(material, str(store), eval_data=str(data), work_dir=str(work), checked=checked)
    assert list(work.iterdir()) == []
    assert not store.exists() or not any(p.name == "metrics.json" for p in store.rglob("*"))


def run_preflight_then_remove(material, store, data):
    """A Checked that says the data was readable; then the data goes away (as a file
    deleted while the conversion runs), so the evaluator fails after the conversion."""
    from rmeval import preflight

    checked = preflight.Checked()
    preflight.check_run(
        material.checkpoints[0],
        str(store),
        checked=checked,
        eval_data=str(data),
        tokenizer=material.tokenizer,
        num_heads=HEADS,
    )
    data.unlink()
    return checked


@pytest.mark.slow  # two interpreter start-ups with torch: ~20-30 s on a shared 2-core box
def test_cli_run_one_and_result_json(material, tmp_path):
    store = tmp_path / "store"
    result_json = tmp_path / "r.json"
    cmd = [
        sys.executable, "-m", "rmeval", "run-one", material.checkpoints[1],
        "--store", str(store), "--tokenizer", material.tokenizer,
        "--eval-data", material.dataset, "--num-heads", str(HEADS),
        "--result-json", str(result_json),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(result_json.read_text())["status"] == "ok"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0
    assert json.loads(result_json.read_text())["status"] == "skipped"
    assert "already done" in r.stderr


def test_cli_run_one_failure_is_recorded_and_hints_force(material, tmp_path):
    """A kept model already there: the library names the path, run-one says --force (not
    --overwrite), and the status file records the failure as the CLI printed it."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "someone-elses-model.bin").write_text("x")
    result_json = tmp_path / "r.json"
    cmd = [
        sys.executable, "-m", "rmeval", "run-one", material.checkpoints[0],
        "--store", str(tmp_path / "store"), "--tokenizer", material.tokenizer,
        "--eval-data", material.dataset, "--num-heads", str(HEADS),
        "--keep-model", str(keep), "--result-json", str(result_json),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1
    line = f"{keep}: already exists; pass --force to replace it"
    assert r.stderr.strip().splitlines()[-1] == f"rmeval: error: {line}"
    record = json.loads(result_json.read_text())
    assert record == {
        "status": "failed",
        "error_type": "AlreadyExistsError",
        "message": line,
        "exit_code": 1,
    }
    assert [p.name for p in keep.iterdir()] == ["someone-elses-model.bin"]


def test_scoring_is_passed_to_the_evaluator_and_checked_first(material, tmp_path):
    from rmeval.errors import EvalError, UsageError

    res = _go(material, str(tmp_path / "store"), scoring="run_rm")
    assert res.metrics["chat_template"] == "tokenizer"  # run_rm's label: ours has a template
    prov = json.loads(storage.read_text(storage.join(res.result_uri, "provenance.json")))
    assert prov["evaluate"]["scoring"] == "run_rm"
    default = _go(material, str(tmp_path / "store2"))
    assert default.metrics["chat_template"] == "easylm-trained"
    work = tmp_path / "work"
    for kw, error in (({"scoring": "tulu"}, UsageError), ({"dtype": "fp16"}, EvalError)):
        with pytest.raises(error):
            _go(material, str(tmp_path / "s3"), device="cpu", work_dir=str(work), **kw)
        assert not work.exists() and not (tmp_path / "s3").exists()  # nothing converted


def test_cli_bad_scoring_is_a_usage_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", "run-one", str(tmp_path / "x" / "streaming_params"),
         "--store", str(tmp_path / "s"), "--scoring", "tulu"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "invalid choice: 'tulu' (choose from 'trained', 'run_rm')" in r.stderr


def test_cli_bad_checkpoint_name_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", "run-one", str(tmp_path / "model.bin"),
         "--store", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("rmeval: error:")
    assert "streaming_params" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()


def test_keep_model_never_clobbers(material, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "someone-elses-model.bin").write_text("x")
    store = tmp_path / "store"
    with pytest.raises(AlreadyExistsError, match=r"already exists$") as info:
        _go(material, str(store), keep_model=str(keep), work_dir=str(tmp_path / "w"))
    assert info.value.path == str(keep)
    assert [p.name for p in keep.iterdir()] == ["someone-elses-model.bin"]
    assert not any(p.name == "metrics.json" for p in store.rglob("*"))
    assert list((tmp_path / "w").iterdir()) == []


def test_gcs_keep_model_resumes_an_interrupted_upload(material, gcs_bucket, tmp_path):
    """A preempted task leaves a partial upload (no config.json, written last): the retry
    replaces it; a complete model is only replaced with force."""
    store = gcs_bucket + "/store"
    keep = gcs_bucket + "/models/m"
    storage.write_bytes(storage.join(keep, "model.safetensors"), b"half an upload")
    res = _go(material, store, keep_model=keep, work_dir=str(tmp_path / "w"))
    assert res.status == "ok"
    assert storage.exists(storage.join(keep, "config.json"))
    assert storage.read_bytes(storage.join(keep, "model.safetensors")) != b"half an upload"
    # the model is complete; with the run not done, a rerun must not replace it silently
    storage.delete(storage.join(store, res.run, "metrics.json"))
    with pytest.raises(AlreadyExistsError, match=r"already holds a model$"):
        _go(material, store, keep_model=keep, work_dir=str(tmp_path / "w2"))
    assert _go(material, store, keep_model=keep, force=True).status == "ok"


# --------------------------------------------------------------------------- concurrent runs


def test_20_concurrent_run_ones_on_the_emulator_exactly_one_converts(
    material, gcs_bucket, tmp_path
):
    """20 run-ones of one checkpoint at once against gs:// (the emulator enforces the
    claim's generation precondition): exactly one converts and publishes; every other one
    returns at once, "claimed by" the winner (or "skipped": it started after the winner
    finished), having converted nothing."""
    store = f"{gcs_bucket}/store"
    n = 20
    barrier = threading.Barrier(n)
    results, errors = [], []

    def go(i):
        barrier.wait()
        try:
            results.append(_go(material, store, work_dir=str(tmp_path / f"w{i}")))
        except Exception as exc:  # the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [], errors
    winners = [r for r in results if r.status == "ok"]
    assert len(winners) == 1, [r.status for r in results]
    others = [r for r in results if r.status != "ok"]
    assert len(others) == n - 1
    assert all(r.status in ("claimed", "skipped") and not r.timings for r in others)
    claimed = [r for r in others if r.status == "claimed"]
    assert claimed and all(r.detail.startswith("claimed by ") for r in claimed)
    assert "convert" in winners[0].timings
    prov = json.loads(storage.read_text(storage.join(winners[0].result_uri, "provenance.json")))
    assert prov["attempt"] == winners[0].attempt
    names = sorted(o.name for o in storage.list_objects(winners[0].result_uri))
    assert names == ["metrics.json", "provenance.json", "scores.jsonl"]  # claim released


def test_a_live_claim_blocks_a_dead_one_is_taken_over(material, tmp_path):
    from rmeval import state

    store = str(tmp_path / "store")
    dest = storage.join(store, naming.run_name(material.checkpoints[0], "t"))
    uri = storage.join(dest, store_layout.CLAIM_FILE)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        holder = state.Claim(store, naming.run_name(material.checkpoints[0], "t"),
                             checkpoint=material.checkpoints[0], gpus=None)  # fmt: skip
        holder.attempt = holder.attempt.replace(f"-{os.getpid()}-", f"-{sleeper.pid}-")
        assert holder.acquire() is None  # a claim of a live process of this host
        res = _go(material, store)
        assert res.status == "claimed" and res.detail.startswith("claimed by ")
        assert sorted(o.name for o in storage.list_objects(dest)) == [store_layout.CLAIM_FILE]
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone now (as after a kill -9): its claim is expired at once, taken over
    res = _go(material, store)
    assert res.status == "ok", res
    assert sorted(o.name for o in storage.list_objects(dest)) == [
        "metrics.json", "provenance.json", "scores.jsonl"
    ]  # fmt: skip
    assert not storage.exists(uri)


def test_run_name_overrides_the_derived_name(material, tmp_path):
    store = str(tmp_path / "store")
    res = _go(material, store, run_name="t-my-run.2")
    assert res.status == "ok" and res.run == "t-my-run.2"
    assert storage.exists(storage.join(store, "t-my-run.2", "metrics.json"))
    with pytest.raises(RmevalError, match="run name 'a/b'"):
        _go(material, store, run_name="a/b")


@pytest.mark.slow  # a killed run-one and a rerun, each an interpreter with torch
def test_kill_9_leaves_temp_dirs_that_the_next_run_removes(material, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    cmd = [
        sys.executable, "-m", "rmeval", "run-one", material.checkpoints[0],
        "--store", str(tmp_path / "store"), "--tokenizer", material.tokenizer,
        "--eval-data", material.dataset, "--num-heads", str(HEADS),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(tmpdir.glob("rmeval-run-*")):  # past the preflight: converting
            break
        time.sleep(0.005)
    assert list(tmpdir.glob("rmeval-run-*")), "run-one finished before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    def ours() -> list[Path]:  # rmeval's entries, not torch's own cache directories
        return sorted(p for p in tmpdir.iterdir() if p.name.startswith("rmeval-"))

    left = sorted(p.name.split("-")[1] for p in ours())
    # what a kill -9 leaves (nothing could clean up): the run's directory, and the
    # tokenizer's when the kill came while it was prepared
    assert "run" in left and set(left) <= {"run", "tok"}, left
    # The kill may come before or after the tokenizer's directory exists; make sure one the
    # killed process owned is there either way (same owner part: host, pid namespace, pid).
    (killed_run,) = tmpdir.glob("rmeval-run-*")
    (tmpdir / killed_run.name.replace("rmeval-run-", "rmeval-tok-", 1)).mkdir(exist_ok=True)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert ours() == []
    assert "left by an interrupted run" in rerun.stderr


@pytest.mark.slow  # a run-one killed as it keeps the model, in its own interpreter
def test_kill_9_while_replacing_a_kept_model_keeps_the_old_one(material, tmp_path):
    """--keep-model with --force onto a kept model, killed as the new model moves in: the
    old one stays whole (the old run-one deleted it first); a rerun replaces it cleanly."""
    from tests.kill_at import run_killed

    keep, store = tmp_path / "keep", str(tmp_path / "store")
    assert _go(material, store, keep_model=str(keep)).status == "ok"
    before = {p.relative_to(keep): p.read_bytes() for p in keep.rglob("*") if p.is_file()}
    run_killed(
        "rename", r"/\.?keep\.partial-",  # the new model moving next to the old one
        "rmeval", "run-one", material.checkpoints[0], "--store", store, "--prefix", "t",
        "--tokenizer", material.tokenizer, "--eval-data", material.dataset,
        "--num-heads", str(HEADS), "--keep-model", str(keep), "--force",
        "--work-dir", str(tmp_path / "w"),
    )  # fmt: skip
    assert {p.relative_to(keep): p.read_bytes() for p in keep.rglob("*") if p.is_file()} == before
    assert _go(material, store, keep_model=str(keep), force=True).status == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "store", "w"]
