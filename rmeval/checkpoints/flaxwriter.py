"""Write EasyLM streaming checkpoints the way EasyLM's ``StreamingCheckpointer`` does.

For tests, the demo and the benchmark: the parameter tree is flattened with
``flax.traverse_util.flatten_dict``, floating tensors are cast to the checkpointer's
``float_dtype`` with ``jnp.asarray(x).astype(...)``, and each leaf is written as
``msgpack.Packer().pack((key, flax.serialization.to_bytes(value)))``. The file is therefore
produced by flax's own serializer, never by rmeval's reader logic.

flax and jax are imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from rmeval import storage

FLOAT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@contextlib.contextmanager
def _flax_chunk_size(chunk_size: int | None) -> Iterator[None]:
    """Temporarily shrink flax's MAX_CHUNK_SIZE so small arrays are written chunked."""
    from flax import serialization

    if chunk_size is None:
        yield
        return
    old = serialization.MAX_CHUNK_SIZE
    serialization.MAX_CHUNK_SIZE = int(chunk_size)
    try:
        yield
    finally:
        serialization.MAX_CHUNK_SIZE = old


def _to_float_dtype(value: Any, float_dtype: str | None) -> Any:
    import jax.numpy as jnp

    if not float_dtype:
        return value
    target = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}[
        FLOAT_DTYPES.get(float_dtype, float_dtype)
    ]
    if getattr(value, "dtype", None) in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64):
        return jnp.asarray(value).astype(target)
    return value


def write_checkpoint(
    path: str | os.PathLike,
    params: dict,
    float_dtype: str | None = "bf16",
    chunk_size: int | None = None,
) -> str:
    """Write ``params`` (a nested dict of arrays) as an EasyLM streaming checkpoint.

    ``float_dtype``: "bf16" (EasyLM's default), "fp16", "fp32" or None (as given).
    ``chunk_size``: shrink flax's MAX_CHUNK_SIZE (bytes) so that larger arrays are
    written as flax chunked arrays. ``path`` may be local or gs://. Returns the path."""
    import msgpack
    from flax.serialization import to_bytes, to_state_dict
    from flax.traverse_util import flatten_dict

    path = os.fspath(path)
    flat = flatten_dict(to_state_dict(params), keep_empty_nodes=True)
    packer = msgpack.Packer()
    with _flax_chunk_size(chunk_size), storage.open_writer(path, overwrite=True) as fout:
        for key, value in flat.items():
            value = _to_float_dtype(value, float_dtype)
            fout.write(packer.pack((key, to_bytes(value))))
    return path


def random_llama_params(
    *,
    dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    intermediate: int,
    vocab: int,
    head: str = "score",
    seed: int = 0,
    dtype: Any = np.float32,
) -> dict:
    """Random LLaMA parameters in EasyLM's tree layout (flax Dense kernels are (in, out)).

    ``head``: "score" (reward model, dim -> 1) or "lm_head" (causal LM, dim -> vocab).
    Weights are scaled so activations stay O(1) through the layers; norms are near 1, so
    a wrong permutation or transpose changes the outputs visibly."""
    if head not in ("score", "lm_head"):
        raise ValueError(f"head must be 'score' or 'lm_head', not {head!r}")
    if dim % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"dim {dim}, heads {n_heads}, kv heads {n_kv_heads} do not divide")
    rng = np.random.default_rng(seed)
    head_dim = dim // n_heads

    def dense(n_in: int, n_out: int) -> dict:
        w = rng.standard_normal((n_in, n_out), dtype=np.float32) / np.sqrt(n_in)
        return {"kernel": w.astype(dtype)}

    def norm() -> dict:
        return {"kernel": (1.0 + 0.1 * rng.standard_normal(dim, dtype=np.float32)).astype(dtype)}

    layers = {}
    for i in range(n_layers):
        layers[str(i)] = {
            "attention": {
                "wq": dense(dim, n_heads * head_dim),
                "wk": dense(dim, n_kv_heads * head_dim),
                "wv": dense(dim, n_kv_heads * head_dim),
                "wo": dense(n_heads * head_dim, dim),
            },
            "feed_forward": {
                "w1": dense(dim, intermediate),
                "w2": dense(intermediate, dim),
                "w3": dense(dim, intermediate),
            },
            "attention_norm": norm(),
            "ffn_norm": norm(),
        }
    params = {
        "transformer": {
            "wte": {"embedding": rng.standard_normal((vocab, dim), dtype=np.float32).astype(dtype)},
            "h": layers,
            "ln_f": norm(),
        }
    }
    params[head] = dense(dim, 1 if head == "score" else vocab)
    return params
