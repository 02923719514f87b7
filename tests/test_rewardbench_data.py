"""RewardBench data loading (json, jsonl, parquet, local and gs://) and the sample writer."""

from __future__ import annotations

import json

import pytest

from rmeval import storage
from rmeval.errors import EvalError, StoreError
from rmeval.rewardbench import scoring
from rmeval.rewardbench.data import load_pairs, sample_records, write_sample


@pytest.fixture
def rows():
    return sample_records(per_subset=2, seed=3)


def _expected(rows):
    return [(str(r["id"]), r["subset"], r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def _as_tuples(pairs):
    return [(p.id, p.subset, p.prompt, p.chosen, p.rejected) for p in pairs]


def test_json_jsonl_and_parquet_give_the_same_pairs(rows, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    (tmp_path / "c.json").write_text(json.dumps(columns))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.parquet"):
        assert _as_tuples(load_pairs(str(tmp_path / name))) == _expected(rows), name


def test_gcs_dataset(rows, gcs_bucket):
    uri = f"{gcs_bucket}/rb/filtered.jsonl"
    storage.write_text(uri, "".join(json.dumps(r) + "\n" for r in rows))
    assert _as_tuples(load_pairs(uri)) == _expected(rows)


def test_subsets_restrict_and_unknown_ones_fail(rows, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_pairs(str(path), subsets=["hep-go", "donotanswer"])
    assert [p.subset for p in got] == ["donotanswer"] * 2 + ["hep-go"] * 2  # file order
    with pytest.raises(EvalError, match=r"no pairs for subset.*hep-cobol"):
        load_pairs(str(path), subsets=["hep-cobol"])


def test_missing_id_uses_row_numbers(rows, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows)
    )
    assert [p.id for p in load_pairs(str(path))] == [str(i) for i in range(len(rows))]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ('{"prompt": "p", "chosen": "c"}\n', r"missing column\(s\) rejected, subset"),
        (
            '{"prompt": "p", "chosen": "c", "rejected": 3, "subset": "x"}\n',
            "column 'rejected' is int",
        ),
        ('{"prompt": "p"}\nnot json\n', "line 2 is not valid JSON"),
        ("[1, 2]", "one JSON object per row"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(EvalError, match=message):
        load_pairs(str(path))


def test_missing_file_and_hub_without_datasets(tmp_path):
    with pytest.raises(EvalError, match="no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    with pytest.raises(EvalError, match="not a readable parquet file"):
        (tmp_path / "x.parquet").write_bytes(b"not parquet")
        load_pairs(str(tmp_path / "x.parquet"))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(EvalError, match="needs the `datasets` package"):
            load_pairs("allenai/reward-bench")
    else:  # offline: the hub path must still fail as one clear line
        with pytest.raises(EvalError, match="allenai/reward-bench"):
            load_pairs("allenai/reward-bench")


def test_sample_is_deterministic_complete_and_realistic(tmp_path):
    a = write_sample(tmp_path / "a.jsonl", per_subset=6)
    b = write_sample(tmp_path / "b.jsonl", per_subset=6)
    c = write_sample(tmp_path / "c.jsonl", per_subset=6, seed=1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    pairs = load_pairs(str(a))
    assert len(pairs) == 6 * len(scoring.SUBSETS)
    assert {p.subset for p in pairs} == set(scoring.SUBSETS)
    assert len({p.id for p in pairs}) == len(pairs)
    # formatted lengths (words of prompt + response) spread over two orders of magnitude
    words = sorted(len(p.prompt.split()) + len(p.chosen.split()) for p in pairs)
    assert words[0] < 60 and words[-1] > 700
    code = next(p for p in pairs if p.subset == "hep-python")
    assert "\n" in code.chosen
    with pytest.raises(StoreError, match="already exists"):
        write_sample(a, per_subset=1)
    write_sample(a, per_subset=1, overwrite=True)
    assert len(load_pairs(str(a))) == len(scoring.SUBSETS)


def test_sample_to_gcs(gcs_bucket):
    uri = f"{gcs_bucket}/sample.jsonl"
    assert write_sample(uri, per_subset=1) == uri
    assert len(load_pairs(uri)) == len(scoring.SUBSETS)
