"""The evaluator's outputs and refusals: non-finite rewards, outputs probed before scoring,
scores and metrics published as one unit, duplicate dataset ids, a missing tokenizer
config. Real models saved by transformers, real files."""

from __future__ import annotations

import json
import shutil

import pytest

from rmeval import cli
from rmeval.errors import AlreadyExistsError, EvalError, StoreError
from rmeval.rewardbench.data import load_pairs, sample_records, write_sample
from rmeval.rewardbench.evaluate import evaluate
from tests.disk_fixtures import expected_error, faulty_dir, files_in
from tests.rewardbench_helpers import make_reward_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("rm") / "model", layers=1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("data") / "sample.jsonl", per_subset=1)


def _go(model, data, out=None, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("dtype", "fp32")
    kw.setdefault("progress", False)
    return evaluate(str(model), str(data), None if out is None else str(out), **kw)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, model_dir):
    """The model with one hidden unit of the last norm set to NaN: every reward is NaN."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(model_dir, out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    model.save_pretrained(out)
    return out


def test_non_finite_rewards_fail_and_write_nothing(nan_model, sample, tmp_path, capsys):
    out, scores = tmp_path / "metrics.json", tmp_path / "scores.jsonl"
    argv = ["evaluate", str(nan_model), "--eval-data", str(sample), "--output", str(out)]
    rc = cli.main([*argv, "--save-scores", str(scores), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith(f"rmeval: error: {nan_model}: 46 of 46 rewards are NaN or Inf")
    assert "subsets: alpacaeval-easy, alpacaeval-hard" in err[-1] and "and 18 more" in err[-1]
    assert not out.exists() and not scores.exists()


def test_outputs_are_probed_before_anything_is_loaded(sample, tmp_path, capsys):
    """The disk error comes first: before the model (here: missing) is even looked at."""
    with faulty_dir("ro", tmp_path) as bad:
        argv = ["evaluate", str(tmp_path / "no-model"), "--eval-data", str(sample)]
        rc = cli.main([*argv, "--output", str(bad / "metrics.json")])
        err = capsys.readouterr().err.strip()
        assert files_in(bad) == []
    assert rc == 1 and "\n" not in err
    assert err.startswith(f"rmeval: error: {bad / 'metrics.json'}: cannot write: ")
    assert expected_error("ro") in err


def test_full_disk_under_the_metrics_leaves_no_scores_either(model_dir, sample, tmp_path):
    scores = tmp_path / "scores.jsonl"
    with faulty_dir("full", tmp_path) as bad, pytest.raises(StoreError) as e:
        _go(model_dir, sample, bad / "metrics.json", save_scores=str(scores))
    assert "no space left on device (ENOSPC)" in str(e.value)
    assert not scores.exists()


def test_orphan_scores_are_replaced_and_complete_outputs_refused(model_dir, sample, tmp_path):
    out, scores = tmp_path / "metrics.json", tmp_path / "scores.jsonl"
    _go(model_dir, sample, out, save_scores=str(scores))
    first = scores.read_text()
    # killed between the scores and the metrics (the state the last release could leave)
    out.unlink()
    scores.write_text('{"half": ')
    res = _go(model_dir, sample, out, save_scores=str(scores))
    assert scores.read_text() == first and json.loads(out.read_text()) == res.metrics
    # both present: a finished run, refused without --overwrite
    with pytest.raises(AlreadyExistsError, match=r"metrics file already exists$"):
        _go(model_dir, sample, out, save_scores=str(scores))
    # scores alone, with no metrics file asked for, are a finished output too
    with pytest.raises(AlreadyExistsError, match=r"scores file already exists$"):
        _go(model_dir, sample, save_scores=str(scores))


def test_duplicate_dataset_ids_are_an_error_naming_them(tmp_path):
    rows = sample_records(1)
    rows[5]["id"] = rows[2]["id"]
    rows.append(dict(rows[0]))  # a repeated row, as a file concatenated twice gives
    data = tmp_path / "dup.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalError) as e:
        load_pairs(str(data))
    msg = str(e.value)
    assert msg.startswith(f"{data}: 2 id(s) appear more than once (0, 2; 2 extra row(s))"), msg
    assert "concatenated" in msg


def test_model_without_tokenizer_config_names_the_file(model_dir, sample, tmp_path):
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare)
    (bare / "tokenizer_config.json").unlink()
    with pytest.raises(EvalError) as e:
        _go(bare, sample, tmp_path / "m.json")
    assert str(e.value).startswith(f"{bare}: no tokenizer_config.json")
    assert "eos_token" not in str(e.value)


def test_a_gcs_model_without_config_is_refused_as_incomplete(
    model_dir, sample, gcs_bucket, tmp_path, capsys
):
    """What an interrupted publish leaves (the weights, no config.json, which comes last)
    is refused before anything is downloaded, naming what is missing."""
    from rmeval import storage

    model = f"{gcs_bucket}/models/m"
    for p in model_dir.iterdir():
        if p.name != "config.json":
            storage.upload_file(p, f"{model}/{p.name}")
    out = tmp_path / "metrics.json"
    rc = cli.main(
        ["evaluate", model, "--eval-data", str(sample), "--output", str(out), "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0] == (
        f"rmeval: error: cannot fetch the model: {model}: incomplete: no config.json "
        "(an interrupted publish); publish it again"
    )
    assert not out.exists()
