"""The name table, presets, config inference and the tiled transpose / rotary writer."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from rmeval.checkpoints import convert as conv
from rmeval.checkpoints import llama
from rmeval.checkpoints.easylm import CheckpointIndex, TensorInfo
from rmeval.errors import UsageError
from rmeval.provenance import ChunkedSha256, file_digest


def _index(spec: llama.LlamaSpec, dtype: str = "bfloat16") -> CheckpointIndex:
    """An index with the shapes of ``spec`` (only shapes matter to config inference)."""
    tensors = {}
    for i, (name, shape) in enumerate(llama.easylm_shapes(spec).items()):
        tensors[name] = TensorInfo(tuple(name.split("/")), dtype, shape, ((i, 0),), i)
    return CheckpointIndex("mem://ckpt", 0, tensors)


# Published values, not rmeval's: the `rope_scaling` and `rope_theta` of Meta's Llama 3.1
# releases (config.json of meta-llama/Llama-3.1-8B(-Instruct) and -70B, the keys
# transformers' llama3 rope reads: rope_type, factor, low_freq_factor, high_freq_factor,
# original_max_position_embeddings), and their context length.
LLAMA31_ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
LLAMA31_ROPE_THETA = 500000.0
LLAMA31_MAX_POSITIONS = 131072


def test_llama3_scaling_is_the_published_one():
    assert llama.LLAMA3_SCALING == LLAMA31_ROPE_SCALING
    assert llama.ROPE_SCALINGS["llama3"] == LLAMA31_ROPE_SCALING
    for preset in ("8b31", "70b31"):
        spec = llama.PRESETS[preset]
        assert spec.rope_scaling == LLAMA31_ROPE_SCALING
        assert spec.rope_theta == LLAMA31_ROPE_THETA
        assert spec.max_position_embeddings == LLAMA31_MAX_POSITIONS
    # Llama 3 (not 3.1) has no rope scaling and 8192 positions
    assert llama.PRESETS["8b3"].rope_scaling is None
    assert llama.PRESETS["8b3"].max_position_embeddings == 8192


@pytest.mark.parametrize("preset", ["7b", "13b", "70b", "8b3", "8b31"])
def test_auto_recognises_preset_shapes(preset):
    want = llama.PRESETS[preset]
    spec, notes = llama.infer_spec(_index(want))
    assert spec.num_attention_heads == want.num_attention_heads
    assert spec.num_key_value_heads == want.num_key_value_heads
    if want.vocab_size == llama.LLAMA3_VOCAB:  # shapes of 8b3 and 8b31 agree: 3.1 assumed
        assert spec.rope_theta == LLAMA31_ROPE_THETA
        assert spec.rope_scaling == LLAMA31_ROPE_SCALING
        assert any("assuming Llama-3.1" in n for n in notes)
    else:
        assert spec.rope_theta == 10000.0 and spec.rope_scaling is None
        assert any(f"match preset {preset}" in n for n in notes)


def test_explicit_preset_and_flags():
    spec, _ = llama.infer_spec(_index(llama.PRESETS["8b3"]), model_size="8b3")
    assert spec.rope_theta == 500000.0 and spec.rope_scaling is None
    spec, _ = llama.infer_spec(
        _index(llama.PRESETS["13b"]), model_size="13b", rope_theta=1e6, rope_scaling="llama3"
    )
    assert spec.rope_theta == 1e6 and spec.rope_scaling["factor"] == 8.0
    with pytest.raises(UsageError, match="--num-heads 8 contradicts --model-size 13b"):
        llama.infer_spec(_index(llama.PRESETS["13b"]), model_size="13b", num_heads=8)
    with pytest.raises(UsageError, match="unknown"):
        llama.infer_spec(_index(llama.PRESETS["13b"]), model_size="12b")


def test_heads_cannot_be_guessed():
    odd = llama.LlamaSpec(256, 512, 3, 4, 2, 1000)
    with pytest.raises(UsageError, match="attention heads cannot be read"):
        llama.infer_spec(_index(odd))
    spec, notes = llama.infer_spec(_index(odd), num_heads=4)
    assert (spec.num_attention_heads, spec.num_key_value_heads) == (4, 2)
    assert spec.rope_theta == 10000.0 and any("EasyLM's default" in n for n in notes)
    with pytest.raises(UsageError, match="--num-heads 3 does not divide the hidden size 256"):
        llama.infer_spec(_index(odd), num_heads=3)


def test_wrong_preset_is_a_shape_error():
    index = _index(llama.PRESETS["7b"])
    spec, _ = llama.infer_spec(index, model_size="13b")
    with pytest.raises(Exception, match=r"has shape .* needs"):
        llama.plan(index, spec)


@pytest.mark.parametrize("preset", list(llama.PRESETS))
def test_presets_config_loads_in_transformers(preset):
    import transformers

    spec = llama.PRESETS[preset]
    cfg_dict = llama.hf_config(spec, "bfloat16")
    cfg = transformers.LlamaConfig(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    assert cfg.num_attention_heads == spec.num_attention_heads
    assert cfg.rope_parameters["rope_theta"] == spec.rope_theta
    want_type = "llama3" if spec.rope_scaling else "default"
    assert cfg.rope_parameters["rope_type"] == want_type
    json.dumps(cfg_dict)


# --------------------------------------------------------------------------- the writer


def _expected(kernel: np.ndarray, transform: str, heads: int) -> np.ndarray:
    """The facts' formulas, written plainly: transpose; rotary = view rows as
    (H, D/2, 2, in), swap the middle axes, reshape back."""
    if transform == llama.COPY:
        return kernel
    w = kernel.T
    if transform in (llama.ROTARY_Q, llama.ROTARY_K):
        rows, n_in = w.shape
        w = w.reshape(heads, rows // heads // 2, 2, n_in).swapaxes(1, 2).reshape(rows, n_in)
    return w


@pytest.mark.parametrize(
    "transform, shape, heads",
    [
        (llama.TRANSPOSE, (300, 517), 0),  # not multiples of the tile
        (llama.ROTARY_Q, (130, 8 * 40), 8),
        (llama.ROTARY_K, (130, 2 * 40), 2),
        (llama.COPY, (77, 33), 0),
    ],
)
@pytest.mark.parametrize("src_dtype, out_dtype", [("bfloat16", None), ("float32", "bfloat16")])
def test_writer_tiles_and_permutes(
    tmp_path, monkeypatch, transform, shape, heads, src_dtype, out_dtype
):
    monkeypatch.setattr(conv, "BLOCK_BYTES", 4096)  # many blocks per tensor, several threads
    rng = np.random.default_rng(0)
    src_np = rng.standard_normal(shape, dtype=np.float32).astype(
        ml_dtypes.bfloat16 if src_dtype == "bfloat16" else np.float32
    )
    info = TensorInfo(("t",), src_dtype, shape, ((0, src_np.nbytes),), 0)
    out_shape = shape if transform == llama.COPY else shape[::-1]
    plan = llama.TensorPlan(info, "t.weight", transform, out_shape, heads)
    dst_dt = (
        np.dtype(ml_dtypes.bfloat16)
        if (out_dtype or src_dtype) == "bfloat16"
        else np.dtype("float32")
    )
    placed = conv._Placed(plan, dst_dt, 0, 16, int(np.prod(shape)) * dst_dt.itemsize)
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    out = conv._Out(fd, ChunkedSha256(16 + placed.nbytes))  # the tensor's bytes are hashed too
    writer = conv._Writer(threads=3)
    try:
        writer.write(out, placed, src_np.reshape(-1).view(np.uint8).copy())
    finally:
        writer.close()
        os.close(fd)
    raw = path.read_bytes()
    assert len(raw) == 16 + placed.nbytes
    got = np.frombuffer(raw[16:], dtype=dst_dt).reshape(out_shape)
    want = _expected(src_np, transform, heads).astype(dst_dt)
    np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8))
    out.digest.update(0, raw[:16])  # the header, which the shard writer adds itself
    assert out.digest.hexdigest() == file_digest(path)


def test_parse_size():
    assert conv.parse_size("5GB") == 5 * 10**9
    assert conv.parse_size("2GiB") == 2 * 2**30
    assert conv.parse_size("500 mb") == 500 * 10**6
    with pytest.raises(UsageError):
        conv.parse_size("lots")
