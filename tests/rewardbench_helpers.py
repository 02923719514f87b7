"""Builders for the RewardBench tests: a tiny random LlamaForSequenceClassification saved
with save_pretrained, next to a byte-level BPE tokenizer trained on the sample's text."""

from __future__ import annotations

from pathlib import Path

from rmeval.rewardbench.data import sample_records
from rmeval.tokenizer import save_portable, train_tokenizer


def sample_texts(per_subset: int = 4) -> list[str]:
    return [r[k] for r in sample_records(per_subset) for k in ("prompt", "chosen", "rejected")]


def make_reward_model(
    out: Path,
    *,
    vocab_size: int = 600,
    hidden: int = 32,
    layers: int = 2,
    num_labels: int = 1,
    seed: int = 0,
    chat_template: bool = True,
    zero_head: bool = False,
) -> Path:
    """Save a random tiny Llama reward model + tokenizer in ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    train_tokenizer(sample_texts(), out, vocab_size=vocab_size)
    tok = AutoTokenizer.from_pretrained(out)
    if not chat_template:
        tok.chat_template = None
        (out / "chat_template.jinja").unlink()
        save_portable(tok, out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        # random init is small; make rewards spread so that decisions are not near-ties
        model.score.weight.mul_(0.0 if zero_head else 50.0)
    model.save_pretrained(out)
    return out
