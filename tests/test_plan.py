"""rmeval plan: listing, naming, superseded steps, done-by-exact-name, rendering, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmeval import naming, plan, specs, storage
from rmeval.errors import StoreError
from tests.cli_runner import run_rmeval

TEMPLATE = str(specs.DEFAULT_TEMPLATE)
REAL_DIR = (
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__"
    "SWAPS_4026--a6bf226b9e8e43f387810e0da3096526"
)

TOKENIZER = {"tokenizer": "gs://bucket/tokenizer.model"}  # plan checks one is given, not read


def _make_plan(*args, **kwargs):
    """plan.make_plan with a tokenizer for the tasks (plan refuses run-one tasks without)."""
    if "tokenizer" not in (kwargs.get("values") or {}):
        kwargs["options"] = {**TOKENIZER, **kwargs.get("options", {})}
    return plan.make_plan(*args, **kwargs)


def _layout(root: str) -> dict[str, str]:
    """A checkpoint tree with every case the planner must tell apart."""
    files = {
        f"{REAL_DIR}/streaming_params_437": b"a",
        f"{REAL_DIR}/streaming_train_state_437": b"x",
        "x--1/streaming_params_2": b"b",
        "x--1/streaming_params_10": b"c",
        "x--1/streaming_params": b"final",  # the final save wins over any step
        "x_more--2/streaming_params_3": b"d",
        "y.1--3/streaming_params_9": b"e",
        "y.1--3/config.json": b"{}",
        "relaunch--aaa/streaming_params_5": b"f",
        "relaunch--bbb/streaming_params_7": b"g",  # same run name, higher step
        "notes.txt": b"n",
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(root, name), data)
    return files


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The shared runner (tests/cli_runner.py) with plan's default tokenizer."""
    if args and args[0] == "plan" and "--tokenizer" not in args:
        args = (*args, "--tokenizer", TOKENIZER["tokenizer"])
    return run_rmeval(*args, cwd=cwd)


@pytest.fixture
def source(store_root) -> str:
    root = storage.join(store_root, "ckpts")
    _layout(root)
    return root


def test_plan_names_supersedes_and_counts(source, store_root):
    store = storage.join(store_root, "results")
    p = plan.plan(source, prefix="hs", store=store)
    runs = {r.run: r for r in p.to_run}
    exp = naming.parse_checkpoint(f"{source}/{REAL_DIR}/streaming_params_437").experiment
    assert set(runs) == {f"hs-{exp}", "hs-x", "hs-x_more", "hs-y-1", "hs-relaunch"}
    assert p.found == 8  # train state, config.json and notes.txt are not checkpoints
    assert runs["hs-x"].checkpoint == storage.join(source, "x--1/streaming_params")
    assert runs["hs-relaunch"].checkpoint == storage.join(
        source, "relaunch--bbb/streaming_params_7"
    )
    assert runs["hs-x"].experiment == "rm-eval-hs-x"
    assert runs[f"hs-{exp}"].uuid == "07add08aa33a4fa6a5294c7bc41ae1f9"
    assert runs[f"hs-{exp}"].budget == 4026
    assert runs["hs-x"].result == storage.join(store, "hs-x")
    superseded = {s.checkpoint: s.kept for s in p.superseded}
    assert superseded == {
        storage.join(source, "x--1/streaming_params_2"): runs["hs-x"].checkpoint,
        storage.join(source, "x--1/streaming_params_10"): runs["hs-x"].checkpoint,
        storage.join(source, "relaunch--aaa/streaming_params_5"): runs["hs-relaunch"].checkpoint,
    }
    assert p.done == []
    assert (
        p.summary()
        == "found 8 checkpoint(s), 3 superseded: 0 done, 0 running, 0 failed (retried), 0 given up, 5 to run"
    )


def test_done_is_exact_name_and_needs_metrics(source, store_root):
    store = storage.join(store_root, "results")
    storage.write_text(storage.join(store, "hs-x/metrics.json"), "{}")
    # an unfinished run: scores but no metrics -> still to run
    storage.write_text(storage.join(store, "hs-y-1/scores.jsonl"), "")
    # metrics one level deeper do not count as the run's own
    storage.write_text(storage.join(store, "hs-x_more/old/metrics.json"), "{}")
    p = plan.plan(source, prefix="hs", store=store)
    assert [r.run for r in p.done] == ["hs-x"]
    assert "hs-x_more" in {r.run for r in p.to_run}  # "hs-x" is its prefix: not done
    assert "hs-y-1" in {r.run for r in p.to_run}
    forced = plan.plan(source, prefix="hs", store=store, force=True)
    assert forced.done == [] and len(forced.to_run) == 5


def test_existing_beaker_experiments_count_as_done_by_exact_name(source):
    p = plan.plan(source, prefix="hs", existing_experiments={"rm-eval-hs-x", "rm-eval-hs-y"})
    assert [r.run for r in p.done] == ["hs-x"]


def test_render_plan_is_valid_and_one_task_per_run(source, store_root):
    store = storage.join(store_root, "results")
    p, spec = _make_plan(source, template=TEMPLATE, prefix="hs", store=store)
    data, beaker_spec = specs.validate_spec(spec.text)
    assert [t["name"] for t in data["tasks"]] == [r.run for r in p.to_run]
    for task, run in zip(data["tasks"], p.to_run, strict=True):
        args = task["arguments"]
        assert args[0] == run.checkpoint
        assert args[args.index("--store") + 1] == store
        assert args[args.index("--prefix") + 1] == "hs"
    assert len(beaker_spec.tasks) == len(p.to_run)


def test_scoring_reaches_the_run_one_command_line(source, tmp_path):
    _, spec = _make_plan(
        source, template=TEMPLATE, store=str(tmp_path / "s"), values={"scoring": "run_rm"}
    )
    for task in yaml.safe_load(spec.text)["tasks"]:
        args = task["arguments"]
        assert args[args.index("--scoring") + 1] == "run_rm"
    _, spec = _make_plan(source, template=TEMPLATE, store=str(tmp_path / "s"))
    assert all("--scoring" not in t["arguments"] for t in yaml.safe_load(spec.text)["tasks"])


def test_preset_supplies_prefix_and_experiment_prefix(tmp_path):
    _layout(str(tmp_path / "src"))
    p, spec = _make_plan(str(tmp_path / "src"), preset="multipref", store=str(tmp_path / "s"))
    assert p.prefix == "multipref-counts"
    assert {r.run for r in p.to_run} >= {"multipref-counts-x"}
    data = yaml.safe_load(spec.text)
    assert data["tasks"][0]["constraints"]["cluster"] == specs.load_preset("multipref")["clusters"]
    p2, _ = _make_plan(str(tmp_path / "src"), preset="multipref", prefix="mine", render=False)
    assert {r.run for r in p2.to_run} >= {"mine-x"}


def test_seed_aliases(gcs_bucket):
    _layout(storage.join(gcs_bucket, "human-preferences/rm_checkpoints"))
    bucket = gcs_bucket.removeprefix("gs://")
    a, _ = _make_plan(
        gcs_bucket=bucket, gcs_dir_path="human-preferences/rm_checkpoints", render=False
    )
    b, _ = _make_plan(storage.join(gcs_bucket, "human-preferences/rm_checkpoints"), render=False)
    assert [r.checkpoint for r in a.to_run] == [r.checkpoint for r in b.to_run]
    assert len(a.to_run) == 5


def test_unreadable_bucket_is_one_clear_error(gcs_bucket):
    with pytest.raises(StoreError, match=r"^cannot list checkpoints: gs://no-such-bucket-x"):
        plan.plan("gs://no-such-bucket-x/prefix")


# --------------------------------------------------------------------------- CLI


def test_cli_minimal_flags_render_a_valid_spec(tmp_path):
    _layout(str(tmp_path / "src"))
    r = _cli(
        "plan", "--source", str(tmp_path / "src"), "--template", TEMPLATE,
        "--prefix", "p", "--store", str(tmp_path / "store"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data, _ = specs.validate_spec(r.stdout)
    assert len(data["tasks"]) == 5
    assert (
        "found 8 checkpoint(s), 3 superseded: 0 done, 0 running, 0 failed (retried), 0 given up, 5 to run"
        in r.stderr
    )


def test_cli_output_json_and_no_clobber(tmp_path):
    _layout(str(tmp_path / "src"))
    out = tmp_path / "spec.yml"
    base = ["plan", "--source", str(tmp_path / "src"), "--store", str(tmp_path / "s")]
    r = _cli(*base, "--output_file", str(out), "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert (listing["found"], listing["done"], listing["to_run"]) == (8, 0, 5)
    assert [t["name"] for t in yaml.safe_load(out.read_text())["tasks"]] == [
        x["run"] for x in listing["runs"]
    ]
    before = out.read_text()
    r = _cli(*base, "--output", str(out), "--prefix", "other")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("rmeval: error:")
    assert "--overwrite" in r.stderr
    assert out.read_text() == before
    r = _cli(*base, "--output", str(out), "--prefix", "other", "--overwrite")
    assert r.returncode == 0 and "other-x" in out.read_text()


def test_cli_nothing_to_do_only_with_allow_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "spec.yml"
    args = ["plan", "--source", str(tmp_path / "empty"), "--store", "s", "--output", str(out)]
    r = _cli(*args)
    assert r.returncode == 1 and not out.exists()
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith(f"rmeval: error: {tmp_path / 'empty'}: no streaming_params* checkpoints")
    )
    r = _cli(*args, "--allow-empty")
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert not out.exists()


# The upstream guide's command: --gcs_dir_path names a prefix of the run directories, not a
# folder (upstream lists it with list_blobs(prefix=...)).
GUIDE_PREFIX = "human-preferences/rm_checkpoints/tulu2_13b_rm_human_datamodel_counts"


def test_source_is_a_name_prefix_as_upstream_lists_it(store_root):
    root = storage.join(store_root, "human-preferences/rm_checkpoints")
    runs = [
        f"tulu2_13b_rm_human_datamodel_counts_7000_ID__{i:032x}__SWAPS_{100 * (i + 1)}--ab{i}"
        for i in range(3)
    ]
    for r in runs:
        storage.write_bytes(storage.join(root, r, "streaming_params_10"), b"x")
    storage.write_bytes(storage.join(root, "tulu2_13b_other_model--z", "streaming_params"), b"y")
    source = storage.join(store_root, GUIDE_PREFIX)
    p = plan.plan(source)
    assert sorted(r.directory for r in p.to_run) == sorted(runs)  # not the other model
    # a folder still lists as a folder, with a trailing slash or without
    folder = storage.join(root, runs[0])
    assert [r.directory for r in plan.plan(folder).to_run] == [runs[0]]
    assert [r.directory for r in plan.plan(folder + "/").to_run] == [runs[0]]


def test_seed_flags_with_a_name_prefix(gcs_bucket):
    root = storage.join(gcs_bucket, "human-preferences/rm_checkpoints")
    run = "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026--a"
    storage.write_bytes(storage.join(root, run, "streaming_params_437"), b"x")
    bucket = gcs_bucket.removeprefix("gs://")
    p, _ = _make_plan(gcs_bucket=bucket, gcs_dir_path=GUIDE_PREFIX, render=False)
    assert [r.directory for r in p.to_run] == [run]


def test_mistyped_source_names_the_nearest_prefixes(store_root):
    root = storage.join(store_root, "rm_checkpoints")
    for name in ("helpsteer2", "helpsteer2_v2", "multipref"):
        storage.write_bytes(storage.join(root, name, "r--1", "streaming_params"), b"x")
    typo = storage.join(root, "helpstere2")
    with pytest.raises(StoreError) as e:
        plan.plan(typo)
    msg = str(e.value)
    assert msg.startswith(f"{typo}: no streaming_params* checkpoints")
    assert f"nearest existing: {storage.join(root, 'helpsteer2')}" in msg
    assert "--allow-empty" in msg
    assert plan.plan(typo, allow_empty=True).found == 0


def test_dotted_and_dashed_directories_are_two_runs(store_root):
    src = storage.join(store_root, "ckpts")
    store = storage.join(store_root, "results")
    storage.write_bytes(storage.join(src, "rm.v2--1", "streaming_params"), b"a")
    storage.write_bytes(storage.join(src, "rm-v2--2", "streaming_params"), b"b")
    storage.write_bytes(storage.join(src, "solo.v3--3", "streaming_params"), b"c")
    p = plan.plan(src, prefix="t", store=store)
    by_dir = {r.directory: r for r in p.to_run}
    assert p.superseded == [] and len(by_dir) == 3
    # names without a collision are what they always were (published names never change)
    assert by_dir["solo.v3--3"].run == "t-solo-v3" and not by_dir["solo.v3--3"].explicit_name
    assert by_dir["rm-v2--2"].run == "t-rm-v2" and not by_dir["rm-v2--2"].explicit_name
    dotted = by_dir["rm.v2--1"]
    assert dotted.run.startswith("t-rm-v2-") and dotted.explicit_name
    # the spec passes the renamed run's name to run-one; the others need none
    text = plan.render_plan(p, TEMPLATE, values=TOKENIZER).text
    tasks = {t["name"]: t["arguments"] for t in yaml.safe_load(text)["tasks"]}
    assert tasks[dotted.run][tasks[dotted.run].index("--run-name") + 1] == dotted.run
    assert "--run-name" not in tasks["t-rm-v2"]


def test_a_published_dotted_run_keeps_its_name(store_root):
    """a.b ran (as a-b) before a-b existed: the name stays a.b's, a-b gets a new one."""
    src = storage.join(store_root, "ckpts")
    store = storage.join(store_root, "results")
    dotted = storage.join(src, "rm.v2--1", "streaming_params")
    storage.write_bytes(dotted, b"a")
    storage.write_text(storage.join(store, "rm-v2", "metrics.json"), "{}")
    storage.write_text(
        storage.join(store, "rm-v2", "provenance.json"), json.dumps({"checkpoint": dotted})
    )
    storage.write_bytes(storage.join(src, "rm-v2--2", "streaming_params"), b"b")
    p = plan.plan(src, store=store)
    assert [r.directory for r in p.done] == ["rm.v2--1"] and p.done[0].run == "rm-v2"
    assert [r.directory for r in p.to_run] == ["rm-v2--2"]
    assert p.to_run[0].run.startswith("rm-v2-") and p.to_run[0].explicit_name


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--set", "gpus=two"], r"gpuCount: expected an integer, got 'two'"),
        (["--set", "priority=asap"], r"priority: 'asap' is not one of"),
        (["--set", "scoring=tulu"], r"scoring \(preset or --set\) must be one of trained, run_rm"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, extra, pattern):
    _layout(str(tmp_path / "src"))
    args = ["plan", "--source", str(tmp_path / "src")]
    args += ["--store", str(tmp_path / "s"), *extra]
    r = _cli(*args)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rmeval: error:")
    assert re.search(pattern, last), last
    assert "Traceback" not in r.stderr


def test_cli_template_with_undefined_variable(tmp_path):
    _layout(str(tmp_path / "src"))
    t = tmp_path / "t.yml.j2"
    t.write_text("version: v2\n# a comment\ntasks: {{ not_given }}\n")
    r = _cli("plan", "--source", str(tmp_path / "src"), "--template", str(t), "--store", "s")
    assert r.returncode == 1
    assert f"rmeval: error: {t}:3: 'not_given' is undefined" in r.stderr


def test_cli_missing_source_is_usage_error():
    r = _cli("plan", "--store", "s")
    assert r.returncode == 2
    assert "no checkpoint source" in r.stderr


def test_seed_script_generate_eval_runs(gcs_bucket, tmp_path):
    _layout(storage.join(gcs_bucket, "human-preferences/rm_checkpoints/helpsteer2"))
    out = tmp_path / "helpsteer2-eval-runs.yml"
    script = Path(__file__).resolve().parent.parent / "scripts" / "generate_eval_runs.py"
    r = subprocess.run(
        [
            sys.executable, str(script),
            "--template", "evals/template-helpsteer2-counts.yml",
            "--output_file", str(out),
            "--gcs_bucket", gcs_bucket.removeprefix("gs://"),
            "--gcs_dir_path", "human-preferences/rm_checkpoints/helpsteer2",
            "--is_reward_model", "--cleanup",
            "--store", storage.join(gcs_bucket, "results"),
            "--tokenizer", storage.join(gcs_bucket, "tokenizer.model"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data, _ = specs.validate_spec(out.read_text())
    names = sorted(t["name"] for t in data["tasks"])
    assert "helpsteer2-counts-x" in names and len(names) == 5
    assert data["tasks"][0]["context"]["priority"] == specs.load_preset("helpsteer2")["priority"]


def test_done_per_benchmark_adding_rewardbench2_plans_those_runs_again(source, store_root):
    from rmeval.store import METRICS_V2_FILE

    store = storage.join(store_root, "results")
    for run in ("hs-x", "hs-y-1"):
        storage.write_text(storage.join(store, run, "metrics.json"), "{}")
    storage.write_text(storage.join(store, "hs-y-1", METRICS_V2_FILE), "{}")
    v1 = plan.plan(source, prefix="hs", store=store)
    assert {r.run for r in v1.done} == {"hs-x", "hs-y-1"}
    both = plan.plan(source, prefix="hs", store=store, benchmarks=["rewardbench", "rewardbench2"])
    assert [r.run for r in both.done] == ["hs-y-1"]
    assert "hs-x" in {r.run for r in both.to_run}
    # the tasks carry the list to run-one, which evaluates only what is missing
    p, spec = _make_plan(
        source, template=TEMPLATE, prefix="hs", store=store,
        values={"benchmarks": ["rewardbench", "rewardbench2"]},
    )  # fmt: skip
    assert [r.run for r in p.done] == ["hs-y-1"]
    for task in yaml.safe_load(spec.text)["tasks"]:
        args = task["arguments"]
        i = args.index("--benchmarks")
        assert args[i + 1 : i + 3] == ["rewardbench", "rewardbench2"]
    with pytest.raises(Exception, match="unknown benchmark 'rewardbench3'"):
        _make_plan(source, template=TEMPLATE, store=store, values={"benchmarks": "rewardbench3"})
