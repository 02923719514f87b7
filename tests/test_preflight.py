"""Every run-one option is checked before any conversion (rmeval/preflight.py): one bad
option at a time, in run-one, launch (local pool: before any worker) and pipeline, and
plan refuses tasks without a tokenizer. Each test proves nothing was converted: the work
directory a conversion would be built in never appeared and the store holds nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from rmeval import launch, plan, preflight, run, storage
from rmeval.errors import CheckpointError, EvalError, RmevalError, StoreError, UsageError
from tests.checkpoint_fixtures import make_checkpoint
from tests.cli_runner import run_rmeval
from tests.run_fixtures import DIM, HEADS, INTER, KV_HEADS, LAYERS, RUN_DIRS, make_material


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return make_material(tmp_path_factory.mktemp("material"), n=1)


def _go(material, tmp_path, **kw):
    kw.setdefault("tokenizer", material.tokenizer)
    kw.setdefault("eval_data", material.dataset)
    kw.setdefault("num_heads", HEADS)
    kw.setdefault("progress", False)
    kw.setdefault("work_dir", str(tmp_path / "work"))
    store = kw.pop("store", str(tmp_path / "store"))
    return run.run_one(kw.pop("checkpoint", material.checkpoints[0]), store, **kw)


def _nothing_converted(tmp_path) -> None:
    assert not (tmp_path / "work").exists()  # the conversion's directory never appeared
    store = tmp_path / "store"
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def _causal(tmp_path) -> str:
    path = tmp_path / "causal" / (RUN_DIRS[0] + "c") / "streaming_params_5"
    path.parent.mkdir(parents=True)
    make_checkpoint(
        path, dim=DIM, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, inter=INTER,
        vocab=300, head="lm_head", float_dtype="fp32",
    )  # fmt: skip
    return str(path)


def _bad_data(tmp_path) -> str:
    path = tmp_path / "other-benchmark.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    return str(path)


def _a_file(tmp_path) -> str:
    (tmp_path / "plain-file").write_text("x")
    return str(tmp_path / "plain-file")


BAD = {
    "dtype fp16 on the CPU": (lambda t: {"dtype": "fp16", "device": "cpu"}, EvalError, "fp16"),
    "device cuda without a GPU": (lambda t: {"device": "cuda"}, EvalError, "no CUDA device"),
    "device tpu": (lambda t: {"device": "tpu"}, UsageError, "--device must be one of"),
    "dtype fp8": (lambda t: {"dtype": "fp8"}, UsageError, "--dtype must be one of"),
    "scoring tulu": (lambda t: {"scoring": "tulu"}, UsageError, "--scoring must be one of"),
    "model size 9b": (lambda t: {"model_size": "9b"}, UsageError, "--model-size must be one of"),
    "no tokenizer": (lambda t: {"tokenizer": None}, UsageError, "no --tokenizer"),
    "missing tokenizer": (
        lambda t: {"tokenizer": str(t / "nope.model")},
        CheckpointError,
        "tokenizer not found",
    ),
    "unknown subset": (
        lambda t: {"subsets": ["no-such-subset"]},
        EvalError,
        "--eval-data: .* no pairs for subset",
    ),
    "missing eval data": (
        lambda t: {"eval_data": str(t / "missing.jsonl")},
        EvalError,
        "--eval-data: .*missing.jsonl",
    ),
    "eval data of another format": (
        lambda t: {"eval_data": _bad_data(t)},
        EvalError,
        "missing column",
    ),
    "store not writable": (
        lambda t: {"store": os.path.join(_a_file(t), "store")},
        StoreError,
        "--store: .*not a directory",
    ),
    "keep-model not writable": (
        lambda t: {"keep_model": os.path.join(_a_file(t), "model")},
        StoreError,
        "--keep-model: .*not a directory",
    ),
    "model size against the shapes": (
        lambda t: {"model_size": "7b", "num_heads": None},
        CheckpointError,
        "check --model-size/--num-heads",
    ),
    "num heads against the shapes": (
        lambda t: {"num_heads": 3},
        UsageError,
        "--num-heads 3 does not divide",
    ),
    "no store": (lambda t: {"store": None}, UsageError, "--store is required"),
    "a causal LM": (lambda t: {"checkpoint": _causal(t)}, CheckpointError, "not a reward model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_option_fails_before_any_conversion(material, tmp_path, case):
    options, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        _go(material, tmp_path, **options(tmp_path))
    _nothing_converted(tmp_path)


def test_a_tokenizer_larger_than_the_vocabulary_fails_first(material, tmp_path):
    from rmeval.rewardbench.data import sample_records
    from rmeval.tokenizer import train_tokenizer

    texts = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in sample_records(4, 1)]
    big = train_tokenizer(texts, tmp_path / "big-tok", vocab_size=600)
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ ids but .* 300 rows"):
        _go(material, tmp_path, tokenizer=str(big))
    _nothing_converted(tmp_path)


def test_gcs_store_probe_and_missing_bucket(material, tmp_path, gcs_bucket):
    with pytest.raises(StoreError, match="--store: gs://no-such-bucket-rmeval"):
        _go(material, tmp_path, store="gs://no-such-bucket-rmeval/store")
    _nothing_converted(tmp_path)
    # a writable bucket: the probe leaves nothing behind
    from rmeval import preflight

    preflight.check_run(
        material.checkpoints[0],
        gcs_bucket + "/store",
        tokenizer=material.tokenizer,
        eval_data=material.dataset,
        num_heads=HEADS,
    )
    assert list(storage.list_objects_if_any(gcs_bucket)) == []


_cli = run_rmeval  # the shared runner (tests/cli_runner.py); tests take the rmeval_cli fixture


def _one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("rmeval: error:"), proc.stderr
    return lines[-1]


def test_cli_run_one_gcs_without_credentials_fails_first(rmeval_cli, material, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE", "STORAGE_EMU"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    proc = rmeval_cli(
        "run-one", material.checkpoints[0], "--store", "gs://some-bucket/store",
        "--tokenizer", material.tokenizer, "--eval-data", material.dataset,
        "--num-heads", str(HEADS), "--work-dir", str(tmp_path / "work"),
        env=env,
    )  # fmt: skip
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert line.startswith("rmeval: error: gs://some-bucket/store/")
    assert "no Google credentials found" in line
    _nothing_converted(tmp_path)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--dtype", "fp16"], 1, "--dtype fp16 needs a GPU"),
        (["--device", "tpu"], 2, "invalid choice: 'tpu'"),
        (["--no-store"], 2, "--store is required"),
        (["--no-tokenizer"], 2, "no --tokenizer"),
    ],
)
def test_cli_run_one_bad_option_is_one_line(rmeval_cli, material, tmp_path, args, code, needle):
    argv = ["run-one", material.checkpoints[0], "--eval-data", material.dataset]
    argv += ["--work-dir", str(tmp_path / "work"), "--num-heads", str(HEADS)]
    if args != ["--no-store"]:
        argv += ["--store", str(tmp_path / "store")]
    if args != ["--no-tokenizer"]:
        argv += ["--tokenizer", material.tokenizer]
    argv += [a for a in args if not a.startswith("--no-")]
    proc = rmeval_cli(*argv)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    _nothing_converted(tmp_path)


# --------------------------------------------------------------------------- launch, pipeline


def _run_one_task(name: str, *args: str) -> dict:
    return {
        "name": name,
        "image": {"docker": "rmeval"},
        "command": ["rmeval", "run-one"],
        "arguments": list(args),
        "context": {"priority": "normal"},
        "resources": {"gpuCount": 1},
    }


def test_launch_local_checks_every_task_before_any_worker_starts(material, tmp_path):
    common = ["--store", str(tmp_path / "store"), "--tokenizer", material.tokenizer]
    common += ["--eval-data", material.dataset, "--num-heads", str(HEADS)]
    common += ["--work-dir", str(tmp_path / "work")]
    good = _run_one_task("a-good", material.checkpoints[0], *common)
    bad = _run_one_task("b-bad", material.checkpoints[0], *common, "--dtype", "fp16")
    bad["arguments"] += ["--prefix", "other"]
    spec = {"version": "v2", "tasks": [good, bad]}
    logs = tmp_path / "logs"
    with pytest.raises(EvalError, match=r"^task b-bad: --dtype fp16 needs a GPU"):
        launch.launch(spec, backend="local", log_dir=logs, progress=False)
    assert not logs.exists()  # no worker started, not even the good one
    _nothing_converted(tmp_path)


def test_pipeline_fails_before_converting(rmeval_cli, material, tmp_path):
    cfg = tmp_path / "p.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "source": str(Path(material.checkpoints[0]).parent.parent),
                "store": str(tmp_path / "store"),
                "results_dir": str(tmp_path / "results"),
                "results_dataset": "d",
                "tokenizer": material.tokenizer,
                "eval_data": str(tmp_path / "missing.jsonl"),
                "num_heads": HEADS,
                "log_dir": str(tmp_path / "logs"),
            }
        )
    )
    proc = rmeval_cli("pipeline", str(cfg))
    assert proc.returncode == 1
    assert "--eval-data: " in _one_error_line(proc) and "missing.jsonl" in proc.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()
    _nothing_converted(tmp_path)


# --------------------------------------------------------------------------- plan


def _listing(root: Path) -> str:
    path = root / "src" / (RUN_DIRS[0] + "x") / "streaming_params_3"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    return str(root / "src")


def test_plan_refuses_a_preset_that_renders_tasks_without_a_tokenizer(tmp_path):
    source = _listing(tmp_path)
    with pytest.raises(UsageError, match=r"task helpsteer2-counts-.*: no --tokenizer"):
        plan.make_plan(source, preset="helpsteer2", store=str(tmp_path / "s"))
    _, spec = plan.make_plan(
        source, preset="helpsteer2", store=str(tmp_path / "s"), options={"tokenizer": "t.model"}
    )
    (task,) = yaml.safe_load(spec.text)["tasks"]
    assert task["arguments"][task["arguments"].index("--tokenizer") + 1] == "t.model"


def test_plan_accepts_a_template_that_names_the_tokenizer_itself(tmp_path):
    from rmeval import specs

    source = _listing(tmp_path)
    body = specs.DEFAULT_TEMPLATE.read_text().replace(
        '      - "--model-size"\n',
        '      - "--tokenizer"\n      - "/models/tok"\n      - "--model-size"\n',
    )
    template = tmp_path / "own.yml.j2"
    template.write_text(body)
    _, spec = plan.make_plan(source, template=template, store=str(tmp_path / "s"))
    assert "/models/tok" in spec.text
    bad = tmp_path / "bad.yml.j2"
    bad.write_text(specs.DEFAULT_TEMPLATE.read_text().replace('"--model-size"', '"--model-sise"'))
    with pytest.raises(UsageError, match=r"task .*: rmeval run-one: unrecognized arguments"):
        plan.make_plan(source, template=bad, store=str(tmp_path / "s"), options={"tokenizer": "t"})


def test_cli_plan_store_and_beaker_dry_run_workspace(rmeval_cli, tmp_path):
    source = _listing(tmp_path)
    proc = rmeval_cli("plan", "--source", source, "--tokenizer", "t.model")
    assert proc.returncode == 2 and "--store is required" in _one_error_line(proc)
    proc = rmeval_cli(
        "launch", "--source", source, "--store", str(tmp_path / "s"), "--tokenizer", "t",
        "--backend", "beaker", "--dry-run",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--backend beaker needs --workspace ORG/NAME" in _one_error_line(proc)


def test_launch_spec_file_refuses_planning_options(rmeval_cli, tmp_path):
    spec = tmp_path / "spec.yml"
    spec.write_text("version: v2\n")
    proc = rmeval_cli("launch", str(spec), "--tokenizer", "t.model")
    assert proc.returncode == 2 and "only with --source" in _one_error_line(proc)


def test_parse_tasks_gives_each_task_its_own_per_run_values():
    """Tasks that differ only in their per-run values are parsed once, but every task keeps
    its own checkpoint, run name and kept-model path (and a bad one is named as its own)."""
    common = ["--store", "s", "--tokenizer", "t.model", "--scoring", "run_rm"]
    tasks = [
        (
            f"t{i}",
            [
                "run-one",
                f"gs://b/r{i}--x/streaming_params_{i}",
                *common,
                "--run-name",
                f"run{i}",
                "--keep-model",
                f"/keep/run{i}",
            ],
        )
        for i in range(3)
    ]
    tasks.append(("other", ["run-one", "gs://b/o--y/streaming_params", *common, "--force"]))
    got = {name: ns for name, ns in preflight.parse_tasks(tasks, "spec")}
    assert [got[f"t{i}"].checkpoint for i in range(3)] == [t[1][1] for t in tasks[:3]]
    assert [got[f"t{i}"].run_name for i in range(3)] == ["run0", "run1", "run2"]
    assert [got[f"t{i}"].keep_model for i in range(3)] == ["/keep/run0", "/keep/run1", "/keep/run2"]
    assert all(got[n].scoring == "run_rm" and not got[n].force for n in ("t0", "t1", "t2"))
    assert got["other"].force and got["other"].run_name is None
    bad = [*tasks[:2], ("t9", ["run-one", "gs://b/r9--x/streaming_train_state_9", *common])]
    with pytest.raises(RmevalError, match=r"spec: task t9: gs://b/r9--x/streaming_train_state_9"):
        preflight.check_tasks(bad, "spec")
