"""Reward models converted by rmeval from real flax-written EasyLM checkpoints, with a
sentencepiece tokenizer trained by the sentencepiece library (the Llama-2 case) or a
byte-level BPE one (Llama-3-like), and the folder EasyLM's own converter would write for
the same weights (tokenizer.model + a LlamaTokenizer config, no pad, no chat template)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rmeval.checkpoints.convert import convert
from rmeval.tokenizer import train_tokenizer
from tests.checkpoint_fixtures import make_checkpoint
from tests.rewardbench_helpers import sample_texts

# Conversations for chat-template checks: whitespace to strip, code, several turns.
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [
        {"role": "user", "content": "  padded prompt \n\n"},
        {"role": "assistant", "content": "\n\tdef f(x):\n    return x  \n"},
    ],
    [
        {"role": "system", "content": " be brief "},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": " a1 "},
        {"role": "user", "content": "q2\n"},
        {"role": "assistant", "content": "a2"},
    ],
]


def train_sentencepiece(out_prefix: Path, texts: list[str], vocab_size: int) -> Path:
    """A Llama-2-style sentencepiece BPE model (byte fallback, identity normalisation,
    dummy prefix, unk 0 / bos 1 / eos 2, no pad) trained with the sentencepiece library."""
    import sentencepiece as spm

    corpus = out_prefix.with_suffix(".txt")
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        minloglevel=2,
    )
    return out_prefix.with_suffix(".model")


def converted_model(root: Path, kind: str, *, vocab: int = 600, seed: int = 0) -> Path:
    """``root/<kind>``: a flax-written checkpoint (fp32, so every version computes the same
    reward) converted by rmeval with a ``kind`` ("sentencepiece" or "bpe") tokenizer."""
    root.mkdir(parents=True, exist_ok=True)
    texts = sample_texts(8)
    if kind == "sentencepiece":
        tokenizer = train_sentencepiece(root / "sp", texts, vocab)
    else:
        tokenizer = train_tokenizer(texts, root / "bpe-tok", vocab_size=vocab)

    def spread(params):  # a random head is small; make decisions far from ties
        params["score"]["kernel"] = params["score"]["kernel"] * 50.0

    ckpt = make_checkpoint(
        root / f"{kind}-ckpt" / "streaming_params",
        dim=64,
        layers=2,
        heads=4,
        kv_heads=2,
        inter=128,
        vocab=vocab,
        float_dtype="fp32",
        seed=seed,
        mutate=spread,
    )
    out = root / kind
    convert(ckpt.path, str(out), num_heads=4, tokenizer=str(tokenizer), progress=False)
    return out


def easylm_tokenizer_files(out: Path, sp_model: Path, **config) -> Path:
    """What hamishivi/EasyLM's convert_easylm_to_hf.py ``write_tokenizer()`` writes into
    ``out`` for a Llama-2 model: tokenizer.model, special_tokens_map.json and a
    tokenizer_config.json naming LlamaTokenizer (add_bos_token, no pad, no chat template,
    model_max_length 2048); ``config`` overrides its keys."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sp_model, out / "tokenizer.model")

    def token(content: str, typed: bool) -> dict:
        d = {"content": content, "lstrip": False, "normalized": True, "rstrip": False}
        d["single_word"] = False
        return {"__type": "AddedToken", **d} if typed else d

    names = (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    (out / "special_tokens_map.json").write_text(
        json.dumps({k: token(v, False) for k, v in names}, indent=2)
    )
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 2048,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "clean_up_tokenization_spaces": False,
        **{k: token(v, True) for k, v in names},
        **config,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out


def easylm_converter_folder(converted: Path, out: Path) -> Path:
    """The folder EasyLM's converter writes for the same weights: config.json with no
    pad_token_id (LlamaConfig's default) and :func:`easylm_tokenizer_files`."""
    out.mkdir(parents=True)
    for f in converted.iterdir():
        if f.name.startswith("model"):
            shutil.copyfile(f, out / f.name)
    config = json.loads((converted / "config.json").read_text())
    config["pad_token_id"] = None
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return easylm_tokenizer_files(out, converted / "tokenizer.model")
