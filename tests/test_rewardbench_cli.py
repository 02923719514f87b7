"""`rmeval evaluate` and `rmeval rewardbench-sample` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rmeval.cli import main
from rmeval.rewardbench import scoring
from tests.rewardbench_helpers import make_reward_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("rm") / "model", layers=1)


def test_sample_then_evaluate(model_dir, tmp_path, capsys):
    data = tmp_path / "rb.jsonl"
    assert main(["rewardbench-sample", str(data), "--per-subset", "1"]) == 0
    assert len(data.read_text().splitlines()) == len(scoring.SUBSETS)
    assert main(["rewardbench-sample", str(data)]) == 1  # no clobbering
    assert "already exists; pass --overwrite" in capsys.readouterr().err

    out, scores = tmp_path / "metrics.json", tmp_path / "scores.jsonl"
    argv = ["evaluate", str(model_dir), "--eval-data", str(data), "--output", str(out)]
    extra = ["--save-scores", str(scores), "--device", "cpu", "--dtype", "fp32"]
    assert main([*argv, *extra, "--model-name", "org/rm-7b"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["model"] == "org/rm-7b"
    summary = scoring.summarize(scoring.subset_accuracies(metrics))
    for name, value in summary.items():
        assert f"{name:<26} {100 * value:6.2f}" in printed
    assert len(scores.read_text().splitlines()) == len(scoring.SUBSETS)
    assert main(argv) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_errors_are_one_line_with_exit_1(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "evaluate", str(model_dir), "--eval-data", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rmeval: error: {bad}: missing column(s) subset; a RewardBench dataset needs "
        "prompt, chosen, rejected, subset"
    )
    assert "Traceback" not in proc.stderr
    # fp16 (run_rm's default) needs a GPU: said before anything is loaded
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmeval",
            "evaluate",
            str(model_dir),
            "--eval-data",
            str(bad),
            "--device",
            "cpu",
            "--dtype",
            "fp16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "rmeval: error: --dtype fp16 needs a GPU (--device cuda); on the CPU use --dtype fp32 "
        "or bf16"
    )
    for option, value, choices in (
        ("--dtype", "fp8", "'auto', 'bf16', 'fp16', 'fp32'"),
        ("--scoring", "tulu", "'trained', 'run_rm'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "rmeval", "evaluate", str(model_dir), option, value],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert f"invalid choice: '{value}' (choose from {choices})" in proc.stderr
