"""collect with RewardBench 2 metrics beside RewardBench's: rb2_ columns and rb2_Overall,
--target picking the regressor's target (the sidecar fit reads), HISTORY naming both."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rmeval import collect, results, storage
from rmeval.errors import CollectError, UsageError
from rmeval.rewardbench import scoring_v2
from rmeval.store import METRICS_V2_FILE
from rmeval.table import V2_COLUMNS, V2_OVERALL, render_csv
from tests.collect_fixtures import metrics_bytes


def _v2(seed: int) -> dict:
    return {
        "model": f"m{seed}",
        "model_type": "Seq. Classifier",
        "chat_template": "easylm-trained",
        **{s: (seed * 7 + i) % 10 / 10 for i, s in enumerate(scoring_v2.SUBSETS)},
    }


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    for seed in range(3):
        storage.write_bytes(str(root / f"run-{seed}" / "metrics.json"), metrics_bytes(seed))
    for seed in (0, 1):
        v2 = json.dumps(_v2(seed)).encode()
        storage.write_bytes(str(root / f"run-{seed}" / METRICS_V2_FILE), v2)
    return str(root)


def test_v2_columns_beside_v1_and_target(store, tmp_path):
    table = collect.collect(store)
    assert table.v2 and table.target == "Overall"
    cols = table.columns
    assert cols[-len(V2_COLUMNS) :] == list(V2_COLUMNS)  # after every v1 column
    by_name = {r["name"]: r for r in table.rows}
    v2 = _v2(0)
    assert by_name["run-0"][V2_OVERALL] == pytest.approx(sum(v2[s] for s in scoring_v2.SUBSETS) / 6)
    assert by_name["run-0"]["rb2_Ties"] == v2["Ties"]
    assert by_name["run-2"][V2_OVERALL] is None  # no v2 file: empty cells, row kept
    text = render_csv(table)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["name"]: r[V2_OVERALL] for r in rows}["run-2"] == ""

    by_v2 = collect.collect(store, target=V2_OVERALL)
    assert by_v2.columns_spec()["target"] == V2_OVERALL
    assert [r["name"] for r in by_v2.rows][-1] == "run-2"  # no target value: last
    firsts = [r[V2_OVERALL] for r in by_v2.rows[:2]]
    assert firsts == sorted(firsts, reverse=True)

    rec = results.update(by_v2, tmp_path / "results", "ds", "t")
    assert rec["benchmarks"] == ["rewardbench", "rewardbench2"] and rec["target"] == V2_OVERALL


def test_v1_only_store_has_no_v2_columns_and_refuses_v2_target(tmp_path):
    root = tmp_path / "s"
    storage.write_bytes(str(root / "run-0" / "metrics.json"), metrics_bytes(0))
    table = collect.collect(str(root))
    assert not table.v2 and not set(V2_COLUMNS) & set(table.columns)
    with pytest.raises(CollectError, match="no run has RewardBench 2 metrics"):
        collect.collect(str(root), target=V2_OVERALL)
    with pytest.raises(UsageError, match="--target must be one of"):
        collect.collect(str(root), target="Chat")


def test_malformed_v2_file_is_an_issue_and_keeps_the_v1_row(store):
    storage.write_bytes(
        str(storage.join(store, "run-1", METRICS_V2_FILE)), b'{"Ties": "high"}', overwrite=True
    )
    table = collect.collect(store)
    assert {r["name"] for r in table.rows} == {"run-0", "run-1", "run-2"}
    assert any(i.kind == "malformed_metrics" and i.name == "run-1" for i in table.issues)
    assert {r["name"]: r[V2_OVERALL] for r in table.rows}["run-1"] is None


def test_adding_rewardbench2_is_not_a_change_of_the_v1_results(store, tmp_path):
    v1_only = tmp_path / "v1"
    for seed in range(3):
        storage.write_bytes(str(v1_only / f"run-{seed}" / "metrics.json"), metrics_bytes(seed))
    old = render_csv(collect.collect(str(v1_only)))
    new = render_csv(collect.collect(store))
    d = results.diff_rows(old, new)
    assert (d.total, d.added, d.changed, d.removed, d.changed_v2) == (3, 0, 0, 0, 3)
    rec = results.update(collect.collect(str(v1_only)), tmp_path / "r", "ds", "t")
    assert "changed_rewardbench2" not in rec["rows"]  # a v1 table's record as before
    rec = results.update(collect.collect(store), tmp_path / "r", "ds", "t")
    assert (rec["rows"]["changed"], rec["rows"]["changed_rewardbench2"]) == (0, 3)
