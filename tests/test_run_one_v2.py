"""run-one with ``benchmarks: [rewardbench, rewardbench2]``: one conversion feeds both,
each benchmark's files beside the other's, done per benchmark, adding RewardBench 2 later
reuses the kept model or converts again (and says so)."""

from __future__ import annotations

import json

import pytest

from rmeval import run, storage, store
from rmeval.errors import EvalError
from rmeval.rewardbench.data import write_sample
from tests.run_fixtures import HEADS, make_material


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("material-v2")
    m = make_material(root, n=1)
    v2 = write_sample(root / "rb2.jsonl", per_subset=1, benchmark="rewardbench2")
    return m, str(v2)


def _go(material, st, **kw):
    m, v2 = material
    kw.setdefault("num_heads", HEADS)
    kw.setdefault("progress", False)
    kw.setdefault("eval_data", m.dataset)
    kw.setdefault("eval_data_v2", v2)
    kw.setdefault("tokenizer", m.tokenizer)
    return run.run_one(m.checkpoints[0], st, prefix="t", **kw)


def _names(st, res):
    return sorted(o.name for o in storage.list_objects(storage.join(st, res.run)))


def test_both_benchmarks_from_one_conversion(material, tmp_path):
    st = str(tmp_path / "store")
    res = _go(material, st, benchmarks=["rewardbench", "rewardbench2"])
    assert res.status == "ok" and res.benchmarks == ["rewardbench", "rewardbench2"]
    assert _names(st, res) == sorted(
        [
            "metrics.json",
            "scores.jsonl",
            "provenance.json",
            store.METRICS_V2_FILE,
            store.SCORES_V2_FILE,
            store.PROVENANCE_V2_FILE,
        ]
    )
    v1 = json.loads(storage.read_text(store.run_file(st, res.run, "metrics.json")))
    assert "alpacaeval-easy" in v1 and "Ties" not in v1  # v1 unchanged
    v2 = json.loads(storage.read_text(store.run_file(st, res.run, store.METRICS_V2_FILE)))
    assert v2["model"] == res.run and "Ties" in v2 and "alpacaeval-easy" not in v2
    prov = json.loads(storage.read_text(store.run_file(st, res.run, store.PROVENANCE_V2_FILE)))
    assert prov["benchmark"] == "rewardbench2" and prov["convert"] is not None
    assert set(prov["timings_s"]) == {"convert", "evaluate", "evaluate_rewardbench2", "publish"}
    assert store.list_runs(st)[res.run].done("rewardbench2")
    assert store.completed_runs(st, "rewardbench2") == {res.run}
    # done for both: skipped
    assert _go(material, st, benchmarks=["rewardbench", "rewardbench2"]).status == "skipped"


def test_adding_rewardbench2_reuses_the_kept_model(material, tmp_path):
    st, keep = str(tmp_path / "store"), str(tmp_path / "kept")
    first = _go(material, st, keep_model=keep)
    assert first.status == "ok" and store.completed_runs(st, "rewardbench2") == set()
    v1_before = storage.read_text(store.run_file(st, first.run, "metrics.json"))
    res = _go(material, st, keep_model=keep, benchmarks=["rewardbench", "rewardbench2"])
    assert res.status == "ok" and res.benchmarks == ["rewardbench2"]
    assert "evaluating the kept model" in res.detail and keep in res.detail
    prov = json.loads(storage.read_text(store.run_file(st, res.run, store.PROVENANCE_V2_FILE)))
    assert prov["convert"] is None and prov["evaluated_kept_model"] == keep
    assert storage.read_text(store.run_file(st, first.run, "metrics.json")) == v1_before


def test_adding_rewardbench2_without_a_kept_model_converts_again(material, tmp_path):
    st = str(tmp_path / "store")
    _go(material, st)
    res = _go(material, st, benchmarks=["rewardbench2"])
    assert res.status == "ok" and res.benchmarks == ["rewardbench2"]
    assert res.detail.endswith(
        "converting again for rewardbench2: no kept model (run without --keep-model)"
    )
    prov = json.loads(storage.read_text(store.run_file(st, res.run, store.PROVENANCE_V2_FILE)))
    assert prov["convert"] is not None


def test_a_v1_file_as_v2_data_is_refused_before_conversion(material, tmp_path):
    m, _ = material
    st = str(tmp_path / "store")
    with pytest.raises(EvalError, match=r"^--eval-data-v2: .*RewardBench 2 expects columns"):
        _go(material, st, benchmarks=["rewardbench2"], eval_data_v2=m.dataset)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
