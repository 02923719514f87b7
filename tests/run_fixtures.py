"""Fixtures for the run-one / launch tests: tiny real EasyLM reward-model checkpoints
(written by flax), a real trained tokenizer and a RewardBench-format sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rmeval import storage

DIM, LAYERS, HEADS, KV_HEADS, INTER, VOCAB = 32, 2, 4, 2, 64, 300
RUN_DIRS = (
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026--a6bf",
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__1b2c3d4e5f60718293a4b5c6d7e8f901__SWAPS_1200--77c0",
)


@dataclass(frozen=True)
class Material:
    checkpoints: list[str]
    tokenizer: str
    dataset: str


def make_material(root: str | Path, source: str | None = None, n: int = 2) -> Material:
    """Write ``n`` checkpoints under ``source`` (default ``root/ckpts``; may be gs://), a
    tokenizer and a 1-pair-per-subset sample under ``root``."""
    from rmeval.checkpoints.flaxwriter import random_llama_params, write_checkpoint
    from rmeval.rewardbench.data import sample_records, write_sample
    from rmeval.tokenizer import train_tokenizer

    root = Path(root)
    source = source or str(root / "ckpts")
    texts = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in sample_records(2, 0)]
    tok = train_tokenizer(texts, root / "tok", vocab_size=VOCAB)
    ckpts = []
    for i in range(n):
        params = random_llama_params(
            dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS,
            intermediate=INTER, vocab=VOCAB, seed=i,
        )  # fmt: skip
        uri = storage.join(source, RUN_DIRS[i % len(RUN_DIRS)] + f"{i}", "streaming_params_5")
        write_checkpoint(uri, params, float_dtype="fp32")
        ckpts.append(uri)
    sample = write_sample(root / "rewardbench.jsonl", per_subset=1)
    return Material(ckpts, str(tok), str(sample))
