"""Provenance: what run-one records (real run-one, real converter and evaluator), the
streamed weight hashes, the lock record, and what collect carries and reports."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import threading
from importlib import metadata
from pathlib import Path

import pytest

from rmeval import cli, collect, provenance
from rmeval.checkpoints.convert import convert
from rmeval.checkpoints.easylm import index_checkpoint
from rmeval.store import PROVENANCE_FILE
from rmeval.table import columns_path
from tests.provenance_fixtures import copy_store, edit_provenance, publish
from tests.run_fixtures import HEADS


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return publish(tmp_path_factory.mktemp("published"))


def _prov(store: str, run: str) -> dict:
    return json.loads((Path(store) / run / PROVENANCE_FILE).read_text())


def _chunked(path: Path) -> str:
    """The chunked sha256, computed here independently of rmeval.provenance."""
    data = path.read_bytes()
    size = provenance.CHUNK
    inner = b"".join(hashlib.sha256(data[i : i + size]).digest() for i in range(0, len(data), size))
    return hashlib.sha256(inner).hexdigest()


# --------------------------------------------------------------------------- run-one


def test_run_one_records_software_device_settings_and_hashes(pub):
    from rmeval.rewardbench.evaluate import DEFAULT_MAX_TOKENS, load_reward_model

    run = pub.runs[0]
    prov = _prov(pub.store, run)
    sw = prov["software"]
    assert sw["python"] == platform.python_version()
    for lib in ("torch", "transformers", "tokenizers", "safetensors"):
        assert sw[lib] == metadata.version(lib)
    assert prov["device"]["type"] == "cpu" and prov["device"]["count"] == os.cpu_count()
    assert prov["device"]["name"]
    ev = prov["evaluate"]
    assert ev["dtype"] == "float32" and ev["scoring"] == "trained"  # CPU auto; the default
    assert ev["max_tokens"] == DEFAULT_MAX_TOKENS and prov["max_length"] == 2048
    import torch

    model, _ = load_reward_model(pub.kept[run], "cpu", torch.float32)
    assert ev["attention"] == model.config._attn_implementation
    conv = prov["convert"]
    assert conv["settings"] == {"num_heads": HEADS, "rope_theta": None, "rope_scaling": None}
    kept = Path(pub.kept[run])
    assert conv["weights_sha256"] == {
        p.name: _chunked(p) for p in sorted(kept.glob("*.safetensors"))
    }
    ckpt = pub.material.checkpoints[0]
    assert conv["index_sha256"] == provenance.index_sha256(index_checkpoint(ckpt))
    # the two runs' weights differ (distinct seeds), and so do their hashes
    other = _prov(pub.store, pub.runs[1])["convert"]["weights_sha256"]
    assert other != conv["weights_sha256"]


def test_chunked_sha256_any_write_order_and_threads():
    rng = random.Random(7)
    data = rng.randbytes(5 * provenance.CHUNK + 1234)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    pieces = list(zip([0, *cuts], [*cuts, len(data)], strict=True))
    rng.shuffle(pieces)
    digest = provenance.ChunkedSha256(len(data))
    threads = [
        threading.Thread(target=lambda part=part: [digest.update(a, data[a:b]) for a, b in part])
        for part in (pieces[0::3], pieces[1::3], pieces[2::3])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inner = b"".join(
        hashlib.sha256(data[i : i + provenance.CHUNK]).digest()
        for i in range(0, len(data), provenance.CHUNK)
    )
    assert digest.hexdigest() == hashlib.sha256(inner).hexdigest()
    partial = provenance.ChunkedSha256(len(data))
    partial.update(0, data[:100])
    with pytest.raises(ValueError, match="never written"):
        partial.hexdigest()


def test_converter_hashes_every_shard_and_the_index_as_it_writes(pub, tmp_path):
    out = tmp_path / "sharded"
    result = convert(
        pub.material.checkpoints[1], str(out), num_heads=HEADS, max_shard_size="40KB",
        progress=False,
    )  # fmt: skip
    files = sorted(p for p in out.iterdir() if p.name.endswith((".safetensors", ".json")))
    shards = [p for p in files if p.suffix == ".safetensors"]
    assert len(shards) > 1
    expected = {p.name: _chunked(p) for p in shards}
    expected["model.safetensors.index.json"] = _chunked(out / "model.safetensors.index.json")
    assert result.weights_sha256 == expected


def test_lock_file_hash_and_mismatched_pins(tmp_path, monkeypatch):
    numpy_v = metadata.version("numpy")
    yaml_v = metadata.version("pyyaml")
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# a lock\n"
        f"numpy==0.0.1 \\\n    --hash=sha256:{'0' * 64}\n"
        f"pyyaml=={yaml_v} ; python_version >= '3' \\\n    --hash=sha256:{'1' * 64}\n"
        f"not-installed-pkg==1.0 \\\n    --hash=sha256:{'2' * 64}\n"
        f"elsewhere-only==1.0 ; sys_platform == 'no-such-os' \\\n    --hash=sha256:{'3' * 64}\n"
    )
    monkeypatch.setenv(provenance.LOCK_ENV, str(lock))
    info = provenance.software()["lock"]
    assert info["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert info["mismatched"] == [
        "not-installed-pkg missing!=1.0",
        f"numpy {numpy_v}!=0.0.1",
    ]


def test_old_provenance_gives_unknown_settings_never_an_error():
    assert provenance.score_settings(None) == {
        f: provenance.UNKNOWN for f in provenance.SCORE_FIELDS
    }
    old = {"run": "r", "evaluate": {"device": "cpu", "dtype": "float32", "scoring": "trained"}}
    got = provenance.score_settings(old)
    assert got["dtype"] == "float32" and got["transformers"] == provenance.UNKNOWN
    assert provenance.is_unknown(old) and provenance.is_unknown({"software": "garbage"})


# --------------------------------------------------------------------------- collect


def _collect(store: str):
    return collect.collect(store)


def test_collect_carries_each_rows_settings_into_the_columns_sidecar(pub, tmp_path):
    out = tmp_path / "t.csv"
    assert cli.main(["collect", "--source", pub.store, "--output", str(out), "--strict"]) == 0
    spec = json.loads(Path(columns_path(out)).read_text())
    minor = ".".join(metadata.version("transformers").split(".")[:2])
    assert sorted(spec["settings"]) == sorted(pub.runs)
    for run in pub.runs:
        lock = _prov(pub.store, run)["software"]["lock"]["sha256"] or provenance.UNKNOWN
        assert spec["settings"][run] == {
            "scoring": "trained",
            "dtype": "float32",
            "transformers": minor,
            "lock_sha256": lock,
        }


@pytest.mark.parametrize(
    ("field", "edit", "shown"),
    [
        ("transformers", lambda p: p["software"].update(transformers="4.51.3"), "4.51"),
        ("dtype", lambda p: p["evaluate"].update(dtype="bfloat16"), "bfloat16"),
        ("lock_sha256", lambda p: p["software"]["lock"].update(sha256="ab" * 32), "ab" * 32),
    ],
)
def test_collect_reports_rows_that_disagree_and_strict_refuses(
    pub, tmp_path, capsys, field, edit, shown
):
    store = copy_store(pub, tmp_path / "store")
    edit_provenance(store, pub.runs[1], edit)
    table = _collect(store)
    (issue,) = [i for i in table.issues if i.kind == "mixed_settings"]
    assert issue.name == field and shown in issue.detail
    out = tmp_path / "t.csv"
    capsys.readouterr()
    assert cli.main(["collect", "--source", store, "--output", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "mixed_settings" in err and err.count("\n") == 1
    assert not out.exists()


def test_collect_old_provenance_is_unknown_not_a_crash(pub, tmp_path):
    store = copy_store(pub, tmp_path / "store")
    old_keys = ("software", "device")
    edit_provenance(store, pub.runs[0], lambda p: [p.pop(k) for k in old_keys])
    table = _collect(store)
    (issue,) = [i for i in table.issues if i.kind == "mixed_settings"]
    assert issue.name == "provenance" and f"unknown provenance: {pub.runs[0]}" in issue.detail
    assert table.settings[pub.runs[0]]["transformers"] == provenance.UNKNOWN
    # every row old (or no provenance.json at all): nothing to compare, no issue, no crash
    edit_provenance(store, pub.runs[1], lambda p: [p.pop(k) for k in old_keys])
    (Path(store) / pub.runs[0] / PROVENANCE_FILE).unlink()
    table = _collect(store)
    assert [i for i in table.issues if i.kind == "mixed_settings"] == []
    assert len(table.rows) == 2
    assert table.settings[pub.runs[0]]["lock_sha256"] == provenance.UNKNOWN
