"""collect from a results store (local dir and GCS emulator): table values, join modes,
issues reported instead of dropped, deterministic CSV that pandas loads."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pandas as pd
import pytest

from rmeval import cli, collect, storage
from rmeval.errors import AlreadyExistsError, CollectError, UsageError
from rmeval.table import read_columns, write_table
from tests.collect_fixtures import (
    ALL_SUBSETS,
    HOSTILE_KEYS,
    OFFICIAL,
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
    write_table(table, str(out))
    text = out.read_text()
    header = text.splitlines()[0].split(",")
    sections = ["Chat", "Chat Hard", "Safety", "Reasoning"]
    assert header[:5] == ["model_type", "chat_template", "name", "scoring", "weights"]
    assert header[5:10] == [*sections, "Overall"]
    assert header[10:] == ALL_SUBSETS
    df = pd.read_csv(out)
    assert list(df["name"]) == sorted(runs, key=lambda r: -expected_scores(runs[r])["Overall"])
    for _, row in df.iterrows():
        assert row["Overall"] == pytest.approx(
            expected_scores(runs[row["name"]])["Overall"], abs=1e-6
        )
    # fixed precision: every float cell has exactly six decimals
    first = text.splitlines()[1].split(",")
    assert all(len(c.split(".")[1]) == 6 for c in first[5:])
    cols = json.loads((tmp_path / "t.columns.json").read_text())
    assert cols["target"] == "Overall" and cols["features"] == []
    # no-clobber, then identical bytes with --overwrite
    with pytest.raises(AlreadyExistsError, match="already exists"):
        write_table(table, str(out))
    write_table(collect.collect(str(root)), str(out), overwrite=True)
    assert out.read_text() == text


def test_counts_join_hostile_keys_rescale_and_reports(store_root, tmp_path):
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
    write_table(table, out)
    local = storage.download_file(out, tmp_path / "downloaded-counts.csv")
    df = pd.read_csv(local)
    assert list(df.columns[-5:]) == sorted(HOSTILE_KEYS[:5])  # keys kept exactly
    for _, r in df.iterrows():
        counts = joined[r["name"]][2]
        assert [r[k] for k in sorted(HOSTILE_KEYS[:5])] == [
            counts.get(k, 0) for k in sorted(HOSTILE_KEYS[:5])
        ]
    # the seed's regressor flow: features X, target Overall
    cols = read_columns(out)
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
    with pytest.raises(AlreadyExistsError) as info:
        write_table(table, str(out))
    assert info.value.path == str(out) and "--" not in str(info.value)  # the CLI's hint
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


def _metrics_from_rewards(pairs: dict[str, list[tuple[float, float]]], template: str) -> dict:
    """A metrics.json object computed from (chosen, rejected) rewards the way run_rm does:
    per subset, pairs with chosen > rejected over all pairs (a NaN makes it false)."""
    out: dict = {"model": "m", "model_type": "Seq. Classifier", "chat_template": template}
    for subset, rewards in pairs.items():
        out[subset] = sum(c > r for c, r in rewards) / len(rewards)
    return out


def _scores_jsonl(pairs: dict[str, list[tuple[float, float]]]) -> str:
    """The evaluator's scores.jsonl for the same rewards (json writes NaN as NaN)."""
    lines = []
    for subset, rewards in pairs.items():
        for i, (c, r) in enumerate(rewards):
            row = {"id": f"{subset}-{i}", "subset": subset, "chosen_reward": c}
            row |= {"rejected_reward": r, "correct": bool(c > r), "chosen_tokens": 9}
            lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def test_nonfinite_rewards_are_reported_and_left_out(store_root):
    rng = random.Random(5)
    nan, inf = float("nan"), float("inf")

    def rewards(bad_every: int = 0, bad=nan) -> dict[str, list[tuple[float, float]]]:
        out = {}
        for k, s in enumerate(ALL_SUBSETS):
            out[s] = [
                (bad, bad)
                if bad_every and (k + i) % bad_every == 0
                else (rng.random(), rng.random())
                for i in range(6)
            ]
        return out

    all_nan = rewards(bad_every=1)  # a NaN checkpoint: every reward NaN
    _put_run(store_root, "nan-model", _metrics_from_rewards(all_nan, "easylm-trained"))
    all_inf = rewards(bad_every=1, bad=inf)  # overflow: every pair an Inf tie
    _put_run(store_root, "inf-model", _metrics_from_rewards(all_inf, "easylm-trained"))
    _put(store_root, "inf-model/scores.jsonl", _scores_jsonl(all_inf))
    some_nan = rewards(bad_every=3)  # a few NaN rewards, some subsets still above 0
    some_nan["hep-go"] = [(nan, nan)] * 6  # ... and one subset at exactly 0.0
    _put_run(store_root, "partly-nan", _metrics_from_rewards(some_nan, "easylm-trained"))
    _put(store_root, "partly-nan/scores.jsonl", _scores_jsonl(some_nan))
    real_zero = rewards()
    real_zero["mt-bench-easy"] = [(0.1, 0.9)] * 6  # finite rewards, all reversed: a real 0.0
    _put_run(store_root, "real-zero", _metrics_from_rewards(real_zero, "easylm-trained"))
    _put(store_root, "real-zero/scores.jsonl", _scores_jsonl(real_zero))
    _put_run(store_root, "fine", _metrics_from_rewards(rewards(), "easylm-trained"))

    table = collect.collect(store_root)

    assert sorted(r["name"] for r in table.rows) == ["fine", "real-zero"]
    assert _issues(table, "nonfinite_rewards") == ["inf-model", "nan-model", "partly-nan"]
    by_name = {i.name: i for i in table.issues if i.kind == "nonfinite_rewards"}
    n_partly = sum(any(x != x for x in p) for v in some_nan.values() for p in v)
    assert f"{n_partly} of {6 * len(ALL_SUBSETS)} pairs" in by_name["partly-nan"].detail
    assert by_name["partly-nan"].file.endswith("partly-nan/scores.jsonl")
    assert "every subset accuracy is 0.0" in by_name["nan-model"].detail
    assert by_name["nan-model"].file.endswith("nan-model/metrics.json")
    with pytest.raises(CollectError, match="nonfinite_rewards"):
        collect.check_strict(table)


def test_join_key_is_uuid_and_budget(tmp_path, capsys):
    rng = random.Random(13)
    store, feats = tmp_path / "store", tmp_path / "feats"
    # the only counts file of this uuid is for another budget: not joined, both named
    u1 = new_uuid(rng)
    wrong = counts_run_name(u1, 3000)
    _put_run(str(store), wrong, make_metrics(seed=1))
    _put(str(feats), f"regressor_feats_ID__{u1}__SWAPS_2000.json", json.dumps({"f": 1}))
    # one checkpoint evaluated under two prefixes: one row (the newer), one issue
    u2 = new_uuid(rng)
    older = counts_run_name(u2, 100, prefix="rm-eval-helpsteer2-counts-")
    newer = counts_run_name(u2, 100, prefix="rm-eval-helpsteer2-counts-v2-")
    for i, run in enumerate([newer, older]):  # created in this order; mtimes say otherwise
        _put_run(str(store), run, make_metrics(seed=10 + i))
        os.utime(store / run / "metrics.json", (1_000_000 + 10 * (run == newer),) * 2)
    _put(str(feats), f"regressor_feats_ID__{u2}__SWAPS_100.json", json.dumps({"f": 7}))
    # the ordinary case still joins
    u3 = new_uuid(rng)
    plain = counts_run_name(u3, 55)
    _put_run(str(store), plain, make_metrics(seed=3))
    _put(str(feats), f"regressor_feats_ID__{u3}__SWAPS_55.json", json.dumps({"f": 3}))

    table = collect.collect(str(store), feature_counts_dir=str(feats))

    assert {r["name"]: r["f"] for r in table.rows} == {newer: 7, plain: 3}
    (mismatch,) = [i for i in table.issues if i.kind == "budget_mismatch"]
    assert mismatch.name == wrong and "SWAPS_3000" in mismatch.detail
    assert f"regressor_feats_ID__{u1}__SWAPS_2000.json" in mismatch.detail
    (dup,) = [i for i in table.issues if i.kind == "duplicate_key"]
    assert dup.name == older and newer in dup.detail and u2 in dup.detail
    # the mismatched file is named once, not again as a file without run
    assert _issues(table, "features_without_run") == []

    out = tmp_path / "t.csv"
    args = ["collect", "--source", str(store), "--feature-counts-dir", str(feats)]
    assert cli.main([*args, "--output", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "budget_mismatch=1" in err and "duplicate_key=1" in err
    assert not out.exists()


def test_experiments_mode_duplicate_key(tmp_path):
    store = tmp_path / "store"
    a = feats_run_name("a1b2", 1000, prefix="rm-eval-hs2-")
    b = feats_run_name("a1b2", 1000, prefix="rm-eval-hs2-again-")
    c = feats_run_name("a1b2", 2000, prefix="rm-eval-hs2-")  # another budget: its own run
    for i, run in enumerate([a, b, c]):
        _put_run(str(store), run, make_metrics(seed=20 + i))
        os.utime(store / run / "metrics.json", (1_000_000, 1_000_000))
    exp_file = tmp_path / "experiments.txt"
    exp_file.write_text(f"{feats_run_name('a1b2', 1000, prefix='')}::lang\n")
    table = collect.collect(str(store), experiments_file=str(exp_file))
    first, second = sorted([a, b])  # written at the same time: the first by name is kept
    assert sorted(r["name"] for r in table.rows) == sorted([first, c])
    assert _issues(table, "duplicate_key") == [second]


def _fingerprint(counts: dict[str, dict[str, int]]) -> str:
    """The weights' fingerprint as the CSV documents it: SHA-256 of the canonical JSON of
    section -> subset -> weight, first 12 hex digits."""
    text = json.dumps(counts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_scoring_format_and_weights_columns_and_mixed_tables(tmp_path, capsys):
    store = tmp_path / "store"
    templates = {"t1": "easylm-trained", "t2": "easylm-trained", "r1": "tulu", "r2": "tokenizer"}
    for run, template in templates.items():
        _put_run(
            str(store),
            run,
            {**make_metrics(seed=len(run) + ord(run[1])), "chat_template": template},
        )

    table = collect.collect(str(store))

    fmt = {r["name"]: r["scoring"] for r in table.rows}
    assert fmt == {"t1": "trained", "t2": "trained", "r1": "run_rm", "r2": "run_rm"}
    weights = f"official-{_fingerprint(OFFICIAL)}"
    assert {r["weights"] for r in table.rows} == {weights}
    swapped = json.loads(json.dumps(OFFICIAL))  # the seed's fetch script: xstest swapped
    safety = swapped["Safety"]
    safety["xstest-should-refuse"], safety["xstest-should-respond"] = 250, 154
    assert _fingerprint(swapped) != _fingerprint(OFFICIAL)
    (mixed,) = [i for i in table.issues if i.kind == "mixed_scoring"]
    assert "run_rm=2" in mixed.name and "trained=2" in mixed.name
    assert "r1" in mixed.detail and "t1" in mixed.detail

    res = tmp_path / "results"
    args = ["collect", "--source", str(store), "--results-dir", str(res), "--results-dataset", "d"]
    assert cli.main([*args, "--table", "t", "--strict"]) == 1
    assert "mixed_scoring" in capsys.readouterr().err
    assert cli.main([*args, "--table", "t"]) == 0
    df = pd.read_csv(res / "d" / "t.csv")
    assert dict(zip(df["name"], df["scoring"], strict=True)) == fmt
    assert set(df["weights"]) == {weights}
    cols = json.loads((res / "d" / "t.columns.json").read_text())
    assert cols["weights"]["id"] == weights
    assert cols["weights"]["counts"] == {s: c for sec in OFFICIAL.values() for s, c in sec.items()}
    (rec,) = [json.loads(x) for x in (res / "d" / "HISTORY.jsonl").read_text().splitlines()]
    assert rec["scoring"] == {"run_rm": 2, "trained": 2} and rec["weights"] == weights

    # one format only: no issue
    for run in ("r1", "r2"):
        (store / run / "metrics.json").unlink()
        (store / run).rmdir()
    assert collect.collect(str(store)).issues == []


def test_run_directories_without_metrics_are_reported(store_root):
    _put_run(store_root, "done", make_metrics(seed=1))
    _put(store_root, "crashed/scores.jsonl", "{}\n")  # killed before metrics.json
    _put(store_root, "crashed/provenance.json", "{}")
    _put(store_root, "model-only/model/config.json", "{}")  # only a kept model, deeper down
    _put(store_root, ".done.partial-1a2b/metrics.json", "{}")  # staging: not a run
    _put(store_root, "notes.txt", "the store's own file")

    table = collect.collect(store_root)

    assert [r["name"] for r in table.rows] == ["done"]
    assert _issues(table, "incomplete_run") == ["crashed", "model-only"]
    (crashed,) = [i for i in table.issues if i.name == "crashed"]
    assert crashed.file == storage.join(store_root, "crashed")
    assert "incomplete_run: 2" in table.summary()
    only = collect.collect(store_root, names={"done", "model-only"})
    assert _issues(only, "incomplete_run") == ["model-only"]


def test_shrinking_a_table_by_more_than_half_needs_allow_shrink(tmp_path, capsys):
    store, empty = tmp_path / "store", tmp_path / "empty-store"
    empty.mkdir()
    for i in range(8):
        _put_run(str(store), f"run{i}", make_metrics(seed=i))
    res = tmp_path / "results"
    args = ["--results-dir", str(res), "--results-dataset", "d", "--table", "t"]
    assert cli.main(["collect", "--source", str(store), *args]) == 0
    before = {p.name: p.read_bytes() for p in (res / "d").iterdir()}
    capsys.readouterr()

    assert cli.main(["collect", "--source", str(empty), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rmeval: error: ") and err.count("\n") == 1
    assert "0 row(s)" in err and " 8" in err and "--allow-shrink" in err
    assert {p.name: p.read_bytes() for p in (res / "d").iterdir()} == before

    for i in range(4, 8):  # half of the rows stay: allowed
        (store / f"run{i}" / "metrics.json").unlink()
    assert cli.main(["collect", "--source", str(store), *args]) == 0
    assert cli.main(["collect", "--source", str(empty), *args, "--allow-shrink"]) == 0
    assert pd.read_csv(res / "d" / "t.csv").empty

    out = tmp_path / "out.csv"
    assert cli.main(["collect", "--source", str(store), "--output", str(out)]) == 0
    text = out.read_text()
    again = ["collect", "--source", str(empty), "--output", str(out), "--overwrite"]
    assert cli.main(again) == 1
    assert "0 row(s), the one there 4" in capsys.readouterr().err
    assert out.read_text() == text
    assert cli.main([*again, "--allow-shrink"]) == 0
