"""rmeval.tokenizer: sentencepiece models trained here with the sentencepiece library, HF
tokenizer directories saved by transformers, local and gs:// sources."""

from __future__ import annotations

import json
import random

import pytest

from rmeval import storage
from rmeval.errors import CheckpointError
from rmeval.tokenizer import (
    TULU_CHAT_TEMPLATE,
    prepare_tokenizer,
    train_tokenizer,
)

_WORDS = "the quick brown fox jumps over a lazy dog reward model chosen rejected answer question"
WORDS = [
    *_WORDS.split(" "),
    "Über",
    "naïve",
    "東京",
    "code",
    "def",
    "return",
    "42",
    "3.14",
    "(",
    ")",
    "{",
    "}",
    ";",
    ",",
    ".",
    "!",
    "?",
]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A Llama-2-style sentencepiece BPE model (byte fallback, identity normalisation,
    dummy prefix, unk 0 / bos 1 / eos 2, no pad) trained with the sentencepiece library."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    (d / "corpus.txt").write_text("\n".join(_corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"),
        model_prefix=str(d / "tokenizer"),
        vocab_size=420,
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
    return d / "tokenizer.model"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return train_tokenizer(_corpus(), tmp_path_factory.mktemp("hf") / "tok", vocab_size=500)


TEXTS = [
    *_corpus(30, seed=1),
    "hello  world",
    " leading space",
    "x\ny\n\n z",
    "emoji 😀 and \t tab",
    "東京 über naïve",
    "a",
]


def test_sentencepiece_encodes_exactly_like_sentencepiece(sp_model, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    info = prepare_tokenizer(str(sp_model), tmp_path / "out", vocab_size=420)
    assert info.kind == "sentencepiece"
    assert info.chat_template == "tulu"
    assert (info.pad_token, info.pad_token_id) == ("<unk>", 0)  # Llama-2 convention
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")  # what the evaluator will load
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
        assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert tok.pad_token_id == 0 and tok.eos_token_id == sp.eos_id()
    assert tok.pad_token_id != tok.eos_token_id


def test_tulu_template_renders_the_tulu_format(sp_model, tmp_path):
    from transformers import AutoTokenizer

    prepare_tokenizer(str(sp_model), tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    chat = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>"
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id  # eos is parsed as the special token, not as text
    two_turns = [
        *chat,
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    assert tok.apply_chat_template(two_turns, tokenize=False) == (
        "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>\n<|user|>\nAnd 3+3?\n<|assistant|>\n6</s>"
    )


def test_sentencepiece_in_a_directory_and_from_gcs(sp_model, tmp_path, gcs_bucket):
    storage.upload_file(sp_model, f"{gcs_bucket}/tok/tokenizer.model")
    a = prepare_tokenizer(f"{gcs_bucket}/tok/tokenizer.model", tmp_path / "a")
    local_dir = tmp_path / "spdir"
    local_dir.mkdir()
    (local_dir / "tokenizer.model").write_bytes(sp_model.read_bytes())
    b = prepare_tokenizer(str(local_dir), tmp_path / "b")
    assert a == b
    assert json.loads((tmp_path / "a" / "tokenizer.json").read_text()) == json.loads(
        (tmp_path / "b" / "tokenizer.json").read_text()
    )


def test_hf_directory_gets_tulu_unless_asked_to_keep_its_template(hf_dir, tmp_path, gcs_bucket):
    from transformers import AutoTokenizer

    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.chat_template = own  # e.g. a Llama-3 directory with Meta's chat format
    tok.save_pretrained(tmp_path / "own")
    tulu = prepare_tokenizer(str(tmp_path / "own"), tmp_path / "tulu", vocab_size=500)
    assert tulu.chat_template == "tulu"
    assert AutoTokenizer.from_pretrained(tmp_path / "tulu").chat_template == TULU_CHAT_TEMPLATE
    kept = prepare_tokenizer(str(tmp_path / "own"), tmp_path / "kept", chat_template="tokenizer")
    assert kept.chat_template == "tokenizer"
    assert AutoTokenizer.from_pretrained(tmp_path / "kept").chat_template == own

    info = prepare_tokenizer(str(hf_dir), tmp_path / "out", vocab_size=500)
    assert info.kind == "hf"
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.chat_template == TULU_CHAT_TEMPLATE
    assert tok.pad_token_id == info.pad_token_id != tok.eos_token_id

    storage.upload_tree(hf_dir, f"{gcs_bucket}/hf")
    remote = prepare_tokenizer(f"{gcs_bucket}/hf", tmp_path / "remote")
    assert remote == info


def test_hf_directory_without_template_or_pad_gets_tulu_and_unk(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.chat_template = None
    tok.pad_token = "</s>"  # a pad == eos tokenizer, as run_rm would make it
    tok.save_pretrained(tmp_path / "bare")
    info = prepare_tokenizer(str(tmp_path / "bare"), tmp_path / "out")
    assert info.chat_template == "tulu"
    assert info.pad_token_id == tok.unk_token_id
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.chat_template == TULU_CHAT_TEMPLATE
    assert saved.pad_token_id == tok.unk_token_id


def test_llama3_sized_vocab_pads_with_the_last_reserved_token(tmp_path):
    """A Llama-3-shaped vocabulary (128,256 ids, eos 128001, no unk, no pad)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(128000)}
    vocab.update({f"<|reserved_special_token_{i}|>": 128000 + i for i in range(256)})
    vocab["<|begin_of_text|>"] = 128000
    del vocab["<|reserved_special_token_0|>"]
    vocab["<|end_of_text|>"] = 128001
    del vocab["<|reserved_special_token_1|>"]
    backend = Tokenizer(models.WordLevel(vocab=vocab))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )
    tok.save_pretrained(tmp_path / "l3")
    info = prepare_tokenizer(str(tmp_path / "l3"), tmp_path / "out", vocab_size=128256)
    assert info.pad_token_id == 128255
    assert info.pad_token == "<|reserved_special_token_255|>"
    # an explicit id wins
    other = prepare_tokenizer(
        str(tmp_path / "l3"), tmp_path / "out2", vocab_size=128256, pad_token_id=128004
    )
    assert other.pad_token_id == 128004


def test_bad_tokenizers_fail_clearly(sp_model, hf_dir, tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        prepare_tokenizer(str(tmp_path / "missing"), tmp_path / "o1")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable sentencepiece model"):
        prepare_tokenizer(str(junk), tmp_path / "o2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        prepare_tokenizer(str(empty), tmp_path / "o3")
    with pytest.raises(CheckpointError, match="420 ids but the model's vocabulary has 100"):
        prepare_tokenizer(str(sp_model), tmp_path / "o4", vocab_size=100)
    with pytest.raises(CheckpointError, match="is the eos token"):
        prepare_tokenizer(str(sp_model), tmp_path / "o5", pad_token_id=2)
    with pytest.raises(CheckpointError, match="outside the tokenizer"):
        prepare_tokenizer(str(hf_dir), tmp_path / "o6", pad_token_id=10**6)
    for o in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp_path / o).exists()


def test_missing_gcs_tokenizer(gcs_bucket, tmp_path):
    with pytest.raises(CheckpointError, match="cannot fetch the tokenizer"):
        prepare_tokenizer(f"{gcs_bucket}/nothing/tokenizer.model", tmp_path / "o")
    with pytest.raises(CheckpointError, match="cannot fetch the tokenizer"):
        prepare_tokenizer(f"{gcs_bucket}/nothing", tmp_path / "o")


def test_unigram_sentencepiece_is_refused(tmp_path):
    import sentencepiece as spm

    (tmp_path / "corpus.txt").write_text("\n".join(_corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "uni"),
        vocab_size=330,
        model_type="unigram",
        character_coverage=0.99,
        byte_fallback=True,
        minloglevel=2,
    )
    with pytest.raises(CheckpointError, match="does not encode like a Llama BPE"):
        prepare_tokenizer(str(tmp_path / "uni.model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_tokenizer_round_trips(hf_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok) <= 500
