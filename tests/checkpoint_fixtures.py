"""Tiny EasyLM checkpoints for the checkpoint tests, written by flax the way EasyLM's
StreamingCheckpointer writes them (rmeval.checkpoints.flaxwriter)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from flax.traverse_util import flatten_dict

from rmeval.checkpoints import flaxwriter


@dataclass
class Fixture:
    path: str
    params: dict  # nested, float32 numpy (before the checkpointer's float_dtype cast)
    heads: int
    kv_heads: int

    @property
    def flat(self) -> dict[str, np.ndarray]:
        return {"/".join(k): v for k, v in flatten_dict(self.params).items()}


def make_checkpoint(
    path: str | os.PathLike,
    *,
    dim: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 4,
    inter: int = 96,
    vocab: int = 256,
    head: str = "score",
    float_dtype: str | None = "bf16",
    chunk_size: int | None = None,
    seed: int = 0,
    mutate=None,
) -> Fixture:
    params = flaxwriter.random_llama_params(
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        intermediate=inter,
        vocab=vocab,
        head=head,
        seed=seed,
    )
    if mutate is not None:
        mutate(params)
    flaxwriter.write_checkpoint(path, params, float_dtype=float_dtype, chunk_size=chunk_size)
    return Fixture(os.fspath(path), params, heads, kv_heads)
