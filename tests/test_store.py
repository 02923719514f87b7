"""The results store's layout (rmeval/store.py): one listing says which runs are complete,
and plan's done check and collect both read the store through it; a run is published with
metrics.json last."""

from __future__ import annotations

import json

import pytest

from rmeval import collect, plan, storage
from rmeval import store as store_layout
from rmeval.errors import AlreadyExistsError
from tests.collect_fixtures import make_metrics

RUNS = ("done-a", "done-b", "crashed", "model-only", "deep", "fresh")


def _store_with_every_case(root: str) -> str:
    store = storage.join(root, "results")
    for run, seed in (("done-a", 1), ("done-b", 2)):
        storage.write_text(
            store_layout.run_file(store, run, "metrics.json"), json.dumps(make_metrics(seed))
        )
    storage.write_text(store_layout.run_file(store, "done-b", "scores.jsonl"), "")
    storage.write_text(store_layout.run_file(store, "crashed", "scores.jsonl"), "")  # killed
    storage.write_text(store_layout.run_file(store, "crashed", "provenance.json"), "{}")
    storage.write_text(storage.join(store, "model-only", "model", "config.json"), "{}")
    storage.write_text(storage.join(store, "deep", "old", "metrics.json"), "{}")  # not its own
    storage.write_text(storage.join(store, ".done-a.partial-x", "metrics.json"), "{}")  # staging
    storage.write_text(storage.join(store, "notes.txt"), "the store's own file")
    return store


def test_the_layout_of_one_run(tmp_path):
    store = str(tmp_path / "s")
    assert store_layout.run_dir(store, "r") == str(tmp_path / "s" / "r")
    assert store_layout.run_file(store, "r", store_layout.METRICS_FILE).endswith("/r/metrics.json")
    assert not store_layout.is_complete(store, "r")
    assert store_layout.completed_runs(store) == set()  # a store not made yet has no runs


def test_plan_and_collect_agree_with_the_one_listing(store_root, monkeypatch):
    store = _store_with_every_case(store_root)
    source = storage.join(store_root, "ckpts")
    for run in RUNS:
        storage.write_bytes(storage.join(source, run, "streaming_params"), b"x")

    runs = store_layout.list_runs(store)
    assert set(runs) == {"done-a", "done-b", "crashed", "model-only", "deep"}
    assert store_layout.completed_runs(store) == {"done-a", "done-b"}
    assert runs["done-b"].scores is not None and runs["done-a"].scores is None

    listings: list[str] = []
    real = store_layout.list_runs

    def spy(where, **kwargs):
        listings.append(where)
        return real(where, **kwargs)

    monkeypatch.setattr(store_layout, "list_runs", spy)
    p = plan.plan(source, store=store)
    table = collect.collect(store)

    assert listings == [store, store]  # one listing each, both through the store module
    assert {r.run for r in p.done} == {"done-a", "done-b"}
    assert {r.run for r in p.to_run} == {"crashed", "model-only", "deep", "fresh"}
    assert {r["name"] for r in table.rows} == {"done-a", "done-b"}
    incomplete = {i.name for i in table.issues if i.kind == "incomplete_run"}
    assert incomplete == {"crashed", "model-only", "deep"}
    assert [i.kind for i in table.issues if i.name not in incomplete] == []


def test_publish_writes_metrics_last(store_root, tmp_path):
    store = storage.join(store_root, "results")
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"id": "a"}\n')
    seen: list[bool] = []

    def provenance() -> bytes:  # called when its turn comes: the scores are in place by then
        seen.append(storage.exists(store_layout.run_file(store, "r", "scores.jsonl")))
        return b"{}\n"

    def broken() -> bytes:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store_layout.publish(store, "r", [("scores.jsonl", scores), ("x.json", broken)], b"{}")
    assert not store_layout.is_complete(store, "r")  # metrics.json never came
    assert store_layout.list_runs(store)["r"].scores is not None

    uri = store_layout.publish(
        store, "r", [("scores.jsonl", scores), ("provenance.json", provenance)], b'{"m": 1}'
    )
    assert seen == [True]
    assert uri == store_layout.run_file(store, "r", "metrics.json")
    assert storage.read_bytes(uri) == b'{"m": 1}'
    assert store_layout.completed_runs(store) == {"r"}
    with pytest.raises(AlreadyExistsError):  # a complete run is replaced only on request
        store_layout.publish(store, "r", [], b'{"m": 2}')
    store_layout.publish(store, "r", [], b'{"m": 2}', replace_metrics=True)
    assert storage.read_bytes(uri) == b'{"m": 2}'
