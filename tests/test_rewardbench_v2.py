"""RewardBench 2 in `rmeval evaluate --benchmark rewardbench2` and `rmeval
rewardbench-sample --benchmark rewardbench2`: the sample's shape, loading and its bad
input, and the end-to-end evaluation on a real transformers reward model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rmeval.cli import main
from rmeval.errors import EvalError
from rmeval.rewardbench import formats, scoring_v2
from rmeval.rewardbench.data import (
    REQUIRED_COLUMNS,
    Pair,
    load_pairs,
    load_rows_v2,
    sample_records_v2,
    write_sample,
)
from rmeval.rewardbench.evaluate import evaluate, format_summary, load_reward_model
from tests.rewardbench_helpers import make_reward_model

TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("rm") / "model", layers=1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(
        tmp_path_factory.mktemp("data") / "v2.jsonl", per_subset=2, benchmark="rewardbench2"
    )


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sample_covers_six_subsets_with_ties_pairs(tmp_path):
    rows = sample_records_v2(3, seed=1)
    assert rows == sample_records_v2(3, seed=1)  # deterministic
    assert rows != sample_records_v2(3, seed=2)
    assert [s for s in scoring_v2.SUBSETS if s in {r["subset"] for r in rows}] == list(
        scoring_v2.SUBSETS
    )
    for r in rows:
        assert r["total_completions"] == len(r["chosen"]) + len(r["rejected"])
        assert r["num_correct"] == len(r["chosen"]) >= 1
        if r["subset"] != "Ties":
            assert (len(r["chosen"]), len(r["rejected"])) == (1, 3)
    ties = {r["id"]: r for r in rows if r["subset"] == "Ties"}
    assert sorted(ties) == sorted(f"{k}:{n}" for k in ("ref", "tied") for n in range(3))
    assert all(ties[f"ref:{n}"]["num_correct"] == 1 for n in range(3))
    assert all(ties[f"tied:{n}"]["num_correct"] >= 2 for n in range(3))
    # it loads back as it was written
    path = write_sample(tmp_path / "s.jsonl", per_subset=3, seed=1, benchmark="rewardbench2")
    loaded = load_rows_v2(str(path))
    assert [(r.id, r.num_correct, len(r.completions)) for r in loaded] == [
        (r["id"], r["num_correct"], r["total_completions"]) for r in rows
    ]


def test_v1_and_v2_files_are_told_apart_before_any_model_load(tmp_path, sample):
    v1 = write_sample(tmp_path / "v1.jsonl", per_subset=1)
    with pytest.raises(EvalError, match=r"RewardBench 2 expects columns id, prompt, chosen"):
        load_rows_v2(str(v1))
    with pytest.raises(
        EvalError, match="expects one pair per row with text columns " + ", ".join(REQUIRED_COLUMNS)
    ):
        load_pairs(str(sample))
    # before the model: a model directory that does not exist is never reached
    with pytest.raises(EvalError, match="RewardBench 2 expects columns"):
        evaluate(str(tmp_path / "no-model"), str(v1), benchmark="rewardbench2", device="cpu")
    with pytest.raises(EvalError, match="use --benchmark rewardbench2"):
        evaluate(str(tmp_path / "no-model"), str(sample), device="cpu")


def _row(**kw):
    base = {
        "id": "r1",
        "prompt": "p",
        "chosen": ["a"],
        "rejected": ["b", "c"],
        "num_correct": 1,
        "total_completions": 3,
        "subset": "Focus",
    }
    return {**base, **kw}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_row(id="x7", num_correct=0), r"row x7 has num_correct 0; it must be between 1"),
        (_row(id="x8", total_completions=4), r"row x8 has total_completions 4 but 1 chosen \+ 2"),
        (_row(id="ref-3", subset="Ties"), r"Ties row 'ref-3': its id must be ref:<n> or tied:<n>"),
        (_row(id="x9", chosen="a"), r"a RewardBench \(v1\) file"),
        (_row(id="x10", rejected=["b", 3]), r"row x10 column 'rejected' must be a list of text"),
    ],
)
def test_bad_rows_are_errors_naming_the_row(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [_row(id="ok"), row] if row["id"] != "x9" else [row])
    with pytest.raises(EvalError, match=message):
        load_rows_v2(str(path))


def test_bad_input_is_one_line_exit_1(model_dir, tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_row(id="q1", num_correct=0)])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmeval",
            "evaluate",
            str(model_dir),
            "--benchmark",
            "rewardbench2",
            "--eval-data",
            str(path),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and "row q1 has num_correct 0" in last[0]
    assert "Traceback" not in proc.stderr


def _hf_reward(model, ids):
    import torch

    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


@pytest.mark.parametrize("scoring_format", ["trained", "run_rm"])
def test_evaluate_v2_end_to_end(model_dir, sample, tmp_path, scoring_format):
    out, scores = tmp_path / "metrics.json", tmp_path / "scores.jsonl"
    result = evaluate(
        str(model_dir),
        str(sample),
        str(out),
        benchmark="rewardbench2",
        scoring_format=scoring_format,
        save_scores=str(scores),
        max_tokens=1024,
        device="cpu",
        progress=False,
    )
    metrics = json.loads(out.read_text())
    assert metrics == result.metrics
    assert list(metrics)[:3] == ["model", "model_type", "chat_template"]
    assert list(metrics)[3:] == list(scoring_v2.SUBSETS)
    rows = load_rows_v2(str(sample))
    lines = [json.loads(x) for x in scores.read_text().splitlines()]
    assert len(lines) == sum(len(r.completions) for r in rows)
    # the subset scores are what the per-completion rewards say
    for subset in scoring_v2.SUBSETS:
        table = []
        for r in rows:
            if r.subset == subset:
                mine = [x for x in lines if x["id"] == r.id]
                assert [x["completion"] for x in mine] == list(range(len(r.completions)))
                assert [x["correct"] for x in mine] == [
                    j < r.num_correct for j in range(len(r.completions))
                ]
                table.append((r.id, r.num_correct, [x["reward"] for x in mine]))
        assert metrics[subset] == pytest.approx(scoring_v2.subset_score(subset, table))
    assert result.overall == pytest.approx(sum(metrics[s] for s in scoring_v2.SUBSETS) / 6)
    assert "Overall (RewardBench 2)" in format_summary(result)
    # each completion's reward is transformers' own on that one text, formatted the v1 way
    model, tok = load_reward_model(model_dir, "cpu", __import__("torch").float32)
    first = rows[0]
    as_pairs = [Pair(first.id, first.subset, first.prompt, c, c) for c in first.completions]
    seqs = formats.encode(tok, as_pairs, scoring_format, 2048).seqs[::2]
    for j, ids in enumerate(seqs):
        assert abs(lines[j]["reward"] - _hf_reward(model, ids)) <= TOL


def test_cli_sample_and_evaluate_v2(model_dir, tmp_path, capsys):
    data = tmp_path / "v2.jsonl"
    argv = ["rewardbench-sample", str(data), "--per-subset", "1", "--benchmark", "rewardbench2"]
    assert main(argv) == 0
    assert len(data.read_text().splitlines()) == 5 + 2
    out = tmp_path / "m.json"
    run = ["evaluate", str(model_dir), "--benchmark", "rewardbench2", "--eval-data", str(data)]
    assert main([*run, "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    for s in scoring_v2.SUBSETS:
        assert f"  {s:<24} {100 * metrics[s]:6.2f}" in printed


def test_the_default_dataset_is_the_v2_hub_release(tmp_path):
    """--benchmark rewardbench2 with the option's default (v1's hub id) reads
    allenai/reward-bench-2; without the datasets package (as here) that is one line."""
    try:
        import datasets  # noqa: F401

        pytest.skip("the datasets package is installed: the hub would be asked")
    except ImportError:
        pass
    with pytest.raises(EvalError, match=r"^allenai/reward-bench-2: .*`datasets` package"):
        evaluate(
            str(tmp_path / "m"), "allenai/reward-bench", benchmark="rewardbench2", device="cpu"
        )
