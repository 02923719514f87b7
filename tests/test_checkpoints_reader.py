"""The msgpack stream reader against files written by flax (EasyLM's checkpointer path)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import msgpack
import numpy as np
import pytest
from flax import serialization

from rmeval import storage
from rmeval.checkpoints import easylm, flaxwriter
from rmeval.errors import CheckpointError
from tests.checkpoint_fixtures import make_checkpoint


def _flax_load(path: str) -> dict[str, np.ndarray]:
    """Load the way EasyLM's StreamingCheckpointer does: msgpack.Unpacker + from_bytes."""
    out = {}
    with open(path, "rb") as f:
        for key, value in msgpack.Unpacker(f, read_size=1 << 20, max_buffer_size=0):
            out["/".join(key)] = serialization.from_bytes(None, value)
    return out


@pytest.mark.parametrize("chunk_size", [None, 4096])
@pytest.mark.parametrize("float_dtype", ["bf16", "fp32"])
def test_reader_matches_flax_restore(tmp_path, float_dtype, chunk_size):
    fx = make_checkpoint(
        tmp_path / "streaming_params", float_dtype=float_dtype, chunk_size=chunk_size
    )
    expected = _flax_load(fx.path)
    got = easylm.load_params(fx.path)
    assert list(got) == list(expected)  # file order kept
    want_dtype = ml_dtypes.bfloat16 if float_dtype == "bf16" else np.float32
    for name, arr in expected.items():
        assert got[name].dtype == want_dtype
        assert got[name].shape == arr.shape
        np.testing.assert_array_equal(got[name].view(np.uint8), np.asarray(arr).view(np.uint8))
    index = easylm.index_checkpoint(fx.path)
    emb = index.tensors["transformer/wte/embedding"]
    if chunk_size:  # 256 x 64 x itemsize bytes split into 4096-byte flax chunks
        assert len(emb.pieces) == emb.nbytes // 4096
    else:
        assert len(emb.pieces) == 1


def test_numpy_scalar_and_int_arrays(tmp_path):
    path = tmp_path / "streaming_params"
    tree = {"a": {"step": np.int32(7)}, "b": {"ids": np.arange(5, dtype=np.int64)}}
    flaxwriter.write_checkpoint(path, tree, float_dtype=None)
    got = easylm.load_params(str(path))
    assert got["a/step"].shape == () and int(got["a/step"]) == 7
    np.testing.assert_array_equal(got["b/ids"], np.arange(5))


def test_gcs_index_reads_headers_only(tmp_path, gcs_bucket, monkeypatch):
    monkeypatch.setattr(easylm, "GCS_INDEX_WINDOW", 2048)
    local = make_checkpoint(tmp_path / "streaming_params", dim=128, vocab=1024, inter=256)
    uri = f"{gcs_bucket}/run/streaming_params"
    storage.upload_file(local.path, uri)
    with easylm.CheckpointReader(uri) as reader:
        size = reader.index.file_size
        n = len(reader.index.tensors)
        assert reader.header_bytes_read <= n * 2048 < size / 10, (reader.header_bytes_read, size)
        info = reader.index.tensors["transformer/wte/embedding"]
        arr = reader.read(info)
    np.testing.assert_array_equal(arr, easylm.load_params(local.path)["transformer/wte/embedding"])


def test_gcs_parallel_ranges_reassemble(tmp_path, gcs_bucket, monkeypatch):
    monkeypatch.setattr(easylm, "GCS_PART_SIZE", 1000)  # many parts, uneven last one
    local = make_checkpoint(tmp_path / "streaming_params", chunk_size=3000)
    uri = f"{gcs_bucket}/streaming_params"
    storage.upload_file(local.path, uri)
    remote = easylm.load_params(uri)
    for name, arr in easylm.load_params(local.path).items():
        np.testing.assert_array_equal(remote[name], arr)


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def good(tmp_path):
    return make_checkpoint(tmp_path / "streaming_params")


def _write(tmp_path, data: bytes) -> str:
    p = tmp_path / "bad" / "streaming_params"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    return str(p)


def test_truncated_in_data_names_tensor_and_offset(tmp_path, good):
    data = Path(good.path).read_bytes()
    index = easylm.index_checkpoint(good.path)
    last = list(index.tensors.values())[-1]
    cut = last.pieces[0][0] + 3  # inside the last tensor's data
    path = _write(tmp_path, data[:cut])
    with pytest.raises(CheckpointError) as err:
        easylm.index_checkpoint(path)
    msg = str(err.value)
    assert f"in tensor {last.name}: truncated" in msg and "\n" not in msg
    offset = int(msg.split("byte ")[1].split()[0])
    assert last.entry_offset <= offset < last.pieces[0][0]  # the value header of that entry


@pytest.mark.parametrize("frac", [0.13, 0.5, 0.77])
def test_truncated_anywhere_is_one_error(tmp_path, good, frac):
    data = Path(good.path).read_bytes()
    path = _write(tmp_path, data[: int(len(data) * frac)])
    with pytest.raises(CheckpointError, match=r"byte \d+.*truncated"):
        easylm.index_checkpoint(path)


def test_garbage_bytes(tmp_path):
    path = _write(tmp_path, np.random.default_rng(1).bytes(5000))
    with pytest.raises(CheckpointError, match=r"byte 0"):
        easylm.index_checkpoint(path)


def test_garbage_in_the_middle_names_offset(tmp_path, good):
    data = bytearray(Path(good.path).read_bytes())
    index = easylm.index_checkpoint(good.path)
    second = list(index.tensors.values())[1]
    data[second.entry_offset] = 0xC1  # the one byte msgpack never uses
    path = _write(tmp_path, bytes(data))
    with pytest.raises(CheckpointError, match=rf"byte {second.entry_offset}: invalid msgpack"):
        easylm.index_checkpoint(path)


def test_unknown_dtype_names_tensor(tmp_path):
    path = tmp_path / "streaming_params"
    tree = {"transformer": {"odd": np.ones(3, dtype=np.complex64)}}
    flaxwriter.write_checkpoint(path, tree, float_dtype=None)
    with pytest.raises(CheckpointError, match=r"tensor transformer/odd: unknown dtype 'complex64'"):
        easylm.index_checkpoint(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        easylm.index_checkpoint(str(tmp_path / "nope"))
