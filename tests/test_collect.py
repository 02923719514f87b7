"""collect from a results store (local dir and GCS emulator): table values, join modes,
issues reported instead of dropped, deterministic CSV that pandas loads."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from rmeval import cli, collect, storage
from rmeval.errors import CollectError, UsageError
from tests.collect_fixtures import (
    ALL_SUBSETS,
    HOSTILE_KEYS,
    counts_run_name,
    expected_scores,
    feats_run_name,
    make_counts,
    make_metrics,
    new_uuid,
)


def _put(root: str, rel: str, data: bytes | str) -> str:
    uri = storage.join(root, rel)
    storage.write_bytes(uri, data.encode() if isinstance(data, str) else data)
    return uri


def _put_run(root: str, run: str, metrics: dict) -> None:
    _put(root, f"{run}/metrics.json", json.dumps(metrics))


def _issues(table, kind):
    return sorted(i.name for i in table.issues if i.kind == kind)


def test_scores_only_values_order_and_reported_bad_runs(store_root):
    runs = {f"run-{i}": make_metrics(seed=i) for i in range(4)}
    for run, m in runs.items():
        _put_run(store_root, run, m)
    _put(store_root, "run-0/model/config.json", "{}")  # other files of a run are ignored
    _put(store_root, "corrupt/metrics.json", '{"alpacaeval-easy": 0.5,')
    incomplete = make_metrics(seed=9)
    del incomplete["hep-go"], incomplete["donotanswer"]
    _put_run(store_root, "incomplete", incomplete)
    out_of_range = make_metrics(seed=10)
    out_of_range["mt-bench-easy"] = 1.5
    _put_run(store_root, "out-of-range", out_of_range)
    _put(store_root, "listy/metrics.json", "[1, 2]")

    table = collect.collect(store_root)

    assert [r["name"] for r in table.rows] == sorted(
        runs, key=lambda r: -expected_scores(runs[r])["Overall"]
    )
    for row in table.rows:
        exp = expected_scores(runs[row["name"]])
        for col, value in exp.items():
            assert row[col] == pytest.approx(value, abs=1e-12), col
        for s in ALL_SUBSETS:
            assert row[s] == runs[row["name"]][s]
        assert row["model_type"] == "Seq. Classifier"
        assert row["chat_template"] == runs[row["name"]]["chat_template"]
    assert _issues(table, "malformed_metrics") == ["corrupt", "listy", "out-of-range"]
    assert _issues(table, "incomplete_metrics") == ["incomplete"]
    (inc,) = [i for i in table.issues if i.kind == "incomplete_metrics"]
    assert "hep-go" in inc.detail and "donotanswer" in inc.detail
    assert inc.file.endswith("incomplete/metrics.json")
    corrupt = next(i for i in table.issues if i.name == "corrupt")
    assert corrupt.file.endswith("corrupt/metrics.json")
    summary = table.summary()
    assert "malformed_metrics: 3" in summary and "corrupt" in summary


def test_csv_columns_precision_and_pandas_roundtrip(tmp_path):
    root = tmp_path / "store"
    runs = {f"r{i}": make_metrics(seed=100 + i) for i in range(3)}
    for run, m in runs.items():
        _put_run(str(root), run, m)
    out = tmp_path / "t.csv"
    table = collect.collect(str(root))
    collect.write_table(table, str(out))
    text = out.read_text()
    header = text.splitlines()[0].split(",")
    sections = ["Chat", "Chat Hard", "Safety", "Reasoning"]
    assert header[:3] == ["model_type", "chat_template", "name"]
    assert header[3:8] == [*sections, "Overall"]
    assert header[8:] == ALL_SUBSETS
    df = pd.read_csv(out)
    assert list(df["name"]) == sorted(runs, key=lambda r: -expected_scores(runs[r])["Overall"])
    for _, row in df.iterrows():
        assert row["Overall"] == pytest.approx(
            expected_scores(runs[row["name"]])["Overall"], abs=1e-6
        )
    # fixed precision: every float cell has exactly six decimals
    first = text.splitlines()[1].split(",")
    assert all(len(c.split(".")[1]) == 6 for c in first[3:])
    cols = json.loads((tmp_path / "t.columns.json").read_text())
    assert cols["target"] == "Overall" and cols["features"] == []
    # no-clobber, then identical bytes with --overwrite
    with pytest.raises(CollectError, match="already exists"):
        collect.write_table(table, str(out))
    collect.write_table(collect.collect(str(root)), str(out), overwrite=True)
    assert out.read_text() == text


def test_counts_join_hostile_keys_rescale_and_reports(store_root):
    rng = random.Random(7)
    store = storage.join(store_root, "results")
    feats = storage.join(store_root, "feats")
    total = 6766  # helpsteer2-sized dataset: budgets are rescaled to 7,000
    joined = {}
    for i in range(3):
        uid, budget = new_uuid(rng), rng.randint(100, 6000)
        name = counts_run_name(uid, budget)
        metrics = make_metrics(seed=200 + i)
        counts = make_counts(rng, HOSTILE_KEYS[: 3 + i])  # files differ in their keys
        _put_run(store, name, metrics)
        _put(feats, f"regressor_feats_ID__{uid}__SWAPS_{budget}.json", json.dumps(counts))
        joined[name] = (uid, budget, counts, metrics)
    lonely_uid = new_uuid(rng)
    _put_run(store, counts_run_name(lonely_uid, 50), make_metrics(seed=300))  # no features
    orphan_uid = new_uuid(rng)
    _put(feats, f"regressor_feats_ID__{orphan_uid}__SWAPS_9.json", json.dumps({"a": 1}))
    _put_run(store, "rm-eval-helpsteer2-counts-no-uuid-here", make_metrics(seed=301))
    _put(feats, f"regressor_feats_ID__{new_uuid(rng)}__SWAPS_3.json", json.dumps([1, 2]))
    _put(feats, f"regressor_feats_ID__{new_uuid(rng)}__SWAPS_4.json", json.dumps({"a": {"b": 1}}))
    _put(feats, f"regressor_feats_ID__{new_uuid(rng)}__SWAPS_5.json", json.dumps({"a": "12"}))
    _put(feats, "notes.json", "{}")

    table = collect.collect(store, feature_counts_dir=feats, dataset_total_size=total)

    assert sorted(r["name"] for r in table.rows) == sorted(joined)
    assert table.feature_columns == sorted(HOSTILE_KEYS[:5])
    for row in table.rows:
        uid, budget, counts, _ = joined[row["name"]]
        assert row["uuid"] == uid
        assert row["budget"] == int(budget * 7000 / total)
        for k in table.feature_columns:
            assert row[k] == counts.get(k, 0)
    assert _issues(table, "run_without_features") == [counts_run_name(lonely_uid, 50)]
    assert _issues(table, "features_without_run") == [
        f"regressor_feats_ID__{orphan_uid}__SWAPS_9.json"
    ]
    assert _issues(table, "unparsable_name") == [
        "notes.json",
        "rm-eval-helpsteer2-counts-no-uuid-here",
    ]
    bad = [i for i in table.issues if i.kind == "bad_feature_file"]
    assert len(bad) == 3 and all(i.file and i.file.endswith(".json") for i in bad)

    out = storage.join(store_root, "out/counts.csv")
    collect.write_table(table, out)
    local = storage.download_file(out, storage.local_path("/tmp") / f"c-{random.random()}.csv")
    df = pd.read_csv(local)
    assert list(df.columns[-5:]) == sorted(HOSTILE_KEYS[:5])  # keys kept exactly
    for _, r in df.iterrows():
        counts = joined[r["name"]][2]
        assert [r[k] for k in sorted(HOSTILE_KEYS[:5])] == [
            counts.get(k, 0) for k in sorted(HOSTILE_KEYS[:5])
        ]
    # the seed's regressor flow: features X, target Overall
    cols = collect.read_columns(out)
    x = df[cols["features"]].to_numpy()
    y = df[cols["target"]].to_numpy()
    assert x.shape == (3, 5) and y.shape == (3,)
    issues = json.loads(storage.read_text(storage.join(store_root, "out/counts.issues.json")))
    assert issues["counts"]["bad_feature_file"] == 3
    local.unlink()


def test_experiments_file_join_binary_columns(tmp_path):
    store = tmp_path / "store"
    runs, metrics = {}, {}
    for i, h in enumerate(["a1b2", "c3d4", "e5f6"]):
        name = feats_run_name(h, 1000 + i)
        runs[h] = name
        metrics[name] = make_metrics(seed=400 + i, skill=[0.9, 0.5, 0.7][i])
        _put_run(str(store), name, metrics[name])
    exp_file = tmp_path / "experiments.txt"
    exp_file.write_text(
        "\n".join(
            [
                f"{feats_run_name('a1b2', 1000, prefix='')}::prompt_len::min_val-0.33|max_val-0.67___lang",
                f"{feats_run_name('c3d4', 1001, prefix='')}::lang",
                "this line has no separator",
                f"{feats_run_name('zzzz', 5, prefix='')}::lang",
                "",
            ]
        )
    )
    table = collect.collect(str(store), experiments_file=str(exp_file), gpt4_threshold=0.7)
    assert table.feature_columns == ["lang", "prompt_len::min_val=0.33|max_val=0.67"]
    by_name = {r["name"]: r for r in table.rows}
    assert by_name[runs["a1b2"]]["prompt_len::min_val=0.33|max_val=0.67"] == 1
    assert by_name[runs["a1b2"]]["lang"] == 1
    assert by_name[runs["c3d4"]]["prompt_len::min_val=0.33|max_val=0.67"] == 0
    labels = {r["name"]: r["label"] for r in table.rows}
    assert labels == {
        n: int(expected_scores(metrics[n])["Overall"] > 0.7) for n in (runs["a1b2"], runs["c3d4"])
    }
    (bad_line,) = [i for i in table.issues if i.kind == "bad_experiments_line"]
    assert bad_line.file == str(exp_file) and bad_line.line == 3
    assert _issues(table, "run_without_features") == [runs["e5f6"]]
    (orphan,) = [i for i in table.issues if i.kind == "features_without_run"]
    assert orphan.line == 4


def test_cli_strict_exit_and_nothing_written(tmp_path, capsys):
    store = tmp_path / "store"
    _put_run(str(store), "good", make_metrics(seed=1))
    _put(str(store), "bad/metrics.json", "not json")
    out = tmp_path / "out.csv"
    rc = cli.main(["collect", "--source", str(store), "--output", str(out), "--strict"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("rmeval: error: --strict") and err.count("\n") == 1
    assert "bad" in err
    assert list(tmp_path.iterdir()) == [store]
    rc = cli.main(["collect", "--source", str(store), "--output", str(out)])
    assert rc == 0 and out.exists()
    assert "malformed_metrics: 1" in capsys.readouterr().out
    rc = cli.main(["collect", "--source", str(store), "--output", str(out)])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err


def test_usage_errors():
    with pytest.raises(UsageError):
        collect.collect("x", feature_counts_dir="a", experiments_file="b")
    with pytest.raises(UsageError):
        collect.beaker_workspace("beaker://no-org")
    with pytest.raises(UsageError, match="fractions"):
        collect.build_table([], gpt4_threshold=85)


def test_existing_table_refused_untouched_and_rescale_needs_counts(tmp_path):
    store = tmp_path / "store"
    _put_run(str(store), "r", make_metrics(seed=5))
    table = collect.collect(str(store))
    out = tmp_path / "t.csv"
    out.write_text("someone else's table\n")  # the table itself exists: refused up front
    with pytest.raises(CollectError, match="--overwrite"):
        collect.write_table(table, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "t.csv"]
    assert out.read_text() == "someone else's table\n"
    with pytest.raises(UsageError, match="feature-counts-dir"):
        collect.collect(str(store), dataset_total_size=7000)


def test_counts_file_of_a_joined_uuid_but_other_budget_is_reported(tmp_path):
    """Two counts files for one uuid, one run: the run joins the file of its budget; the
    other file is reported, not dropped silently because its uuid was used."""
    rng = random.Random(11)
    store, feats = str(tmp_path / "store"), str(tmp_path / "feats")
    uid = new_uuid(rng)
    name = counts_run_name(uid, 100)
    _put_run(store, name, make_metrics(seed=500))
    mine, other = make_counts(rng, ["f"]), make_counts(rng, ["f"])
    _put(feats, f"regressor_feats_ID__{uid}__SWAPS_100.json", json.dumps(mine))
    _put(feats, f"regressor_feats_ID__{uid}__SWAPS_200.json", json.dumps(other))

    table = collect.collect(store, feature_counts_dir=feats)

    (row,) = table.rows
    assert row["name"] == name and row["f"] == mine["f"]
    (left,) = [i for i in table.issues if i.kind == "features_without_run"]
    assert left.name == f"regressor_feats_ID__{uid}__SWAPS_200.json"
    assert "200" in left.detail
