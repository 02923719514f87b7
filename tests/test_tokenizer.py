"""rmeval.tokenizer: sentencepiece models trained here with the sentencepiece library, HF
tokenizer directories saved by transformers, local and gs:// sources."""

from __future__ import annotations

import json
import random

import pytest

from rmeval import storage
from rmeval.errors import CheckpointError
from rmeval.rewardbench.formats import TRAINED_CHAT_TEMPLATE
from rmeval.tokenizer import (
    declared_class,
    load_tokenizer,
    prepare_tokenizer,
    train_tokenizer,
)
from tests.converted_fixtures import CHATS, easylm_tokenizer_files, train_sentencepiece

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
    """A Llama-2-style sentencepiece BPE model trained with the sentencepiece library."""
    return train_sentencepiece(tmp_path_factory.mktemp("sp") / "tokenizer", _corpus(), 420)


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
    assert info.chat_template == "easylm-trained"
    assert (info.pad_token, info.pad_token_id) == ("<unk>", 0)  # Llama-2 convention
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")  # what the evaluator will load
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
        assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert tok.pad_token_id == 0 and tok.eos_token_id == sp.eos_id()
    assert tok.pad_token_id != tok.eos_token_id


def _easylm_text(messages, bos: str, eos: str) -> str:
    """EasyLM's reward-model training text (hamishivi/EasyLM, EasyLM/data.py,
    TuluJsonTorchDataset.encode_with_messages_format), restated from its code: each turn's
    content stripped, user turns end with a newline, assistant turns with eos + newline;
    the whole text stripped; bos in front."""
    text = ""
    for m in messages:
        marker = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
        end = eos + "\n" if m["role"] == "assistant" else "\n"
        text += marker[m["role"]] + m["content"].strip() + end
    return bos + text.strip()


def test_trained_template_renders_easylm_training_text(sp_model, tmp_path):
    from transformers import AutoTokenizer

    prepare_tokenizer(str(sp_model), tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.apply_chat_template(CHATS[0], tokenize=False) == (
        "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>"
    )
    assert tok.apply_chat_template(CHATS[1], tokenize=False) == (
        "<|user|>\npadded prompt\n<|assistant|>\ndef f(x):\n    return x</s>"
    )
    for chat in CHATS:
        text = tok.apply_chat_template(chat, tokenize=False)
        assert tok.bos_token + text == _easylm_text(chat, tok.bos_token, tok.eos_token)
        # the tokenizer adds bos itself: its ids are EasyLM's (bos + text, no specials added)
        easylm_ids = tok(_easylm_text(chat, "<s>", "</s>"), add_special_tokens=False)["input_ids"]
        assert tok(text)["input_ids"] == easylm_ids
        assert easylm_ids[0] == tok.bos_token_id and easylm_ids[-1] == tok.eos_token_id
    # a generation prompt is EasyLM's prompt text (TuluPromptDataset): no final strip
    prompt = tok.apply_chat_template(CHATS[0][:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat is 2+2?\n<|assistant|>\n"
    with pytest.raises(Exception, match="Invalid role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_saved_files_every_transformers_reads(sp_model, hf_dir, tmp_path):
    """What 4.43 and 4.51 need (checked by loading them in tests/test_tokenizer_compat.py):
    a class every version knows, the template inside tokenizer_config.json, BPE merges in
    the "a b" form tokenizers < 0.20 reads, no token_type_ids, model_max_length."""
    from transformers import AutoTokenizer

    for src, sp in ((sp_model, True), (hf_dir, False)):
        out = tmp_path / ("sp" if sp else "hf")
        prepare_tokenizer(str(src), out, model_max_length=4096)
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert config["chat_template"] == TRAINED_CHAT_TEMPLATE
        assert (out / "chat_template.jinja").read_text() == TRAINED_CHAT_TEMPLATE
        assert config["model_max_length"] == 4096
        assert config["pad_token"] and config["eos_token"] != config["pad_token"]
        merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
        assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
        assert (out / "tokenizer.model").is_file() == sp
        if sp:
            assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
        tok = AutoTokenizer.from_pretrained(out)
        assert sorted(tok("a b")) == ["attention_mask", "input_ids"]
        assert tok.model_max_length == 4096


def test_easylm_converter_folder_loads_like_sentencepiece(sp_model, tmp_path):
    """The folder EasyLM's converter writes for Llama-2 (write_tokenizer): tokenizer.model,
    a tokenizer_config.json naming LlamaTokenizer with add_bos_token, no pad, no template.
    transformers 5 cannot read it (it falls back to tiktoken); we rebuild it."""
    import sentencepiece as spm

    folder = easylm_tokenizer_files(tmp_path / "easylm", sp_model)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tok, kind = load_tokenizer(folder, tmp_path)
    assert kind == "sentencepiece" and declared_class(folder) == "LlamaTokenizer"
    assert tok.pad_token_id is None and tok.chat_template is None
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_eos_token": True}))
    tok, _ = load_tokenizer(folder, tmp_path)
    assert tok("a b")["input_ids"] == [sp.bos_id(), *sp.encode("a b"), sp.eos_id()]
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": False}))
    with pytest.raises(CheckpointError, match="legacy=false"):
        load_tokenizer(folder, tmp_path)


def test_a_tokenizer_json_is_read_as_saved(sp_model, tmp_path):
    """A folder whose config names LlamaTokenizerFast (e.g. a Llama-2 hub folder):
    transformers 5's AutoTokenizer rebuilds the pre-tokenizer and a text that starts with
    a space loses sentencepiece's dummy prefix; reading tokenizer.json as saved keeps it."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    prepare_tokenizer(str(sp_model), tmp_path / "out")
    config_file = tmp_path / "out" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizerFast"}))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    text = " leading space"
    want = [sp.bos_id(), *sp.encode(text)]
    tok, kind = load_tokenizer(tmp_path / "out", tmp_path)
    assert kind == "hf" and tok(text)["input_ids"] == want
    rebuilt = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert rebuilt(text)["input_ids"] != want  # why we do not use AutoTokenizer here


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


def test_hf_directory_gets_trained_template_unless_asked_to_keep_its_own(
    hf_dir, tmp_path, gcs_bucket
):
    from transformers import AutoTokenizer

    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.chat_template = own  # e.g. a Llama-3 directory with Meta's chat format
    tok.save_pretrained(tmp_path / "own")
    trained = prepare_tokenizer(str(tmp_path / "own"), tmp_path / "trained", vocab_size=500)
    assert trained.chat_template == "easylm-trained"
    saved = AutoTokenizer.from_pretrained(tmp_path / "trained")
    assert saved.chat_template == TRAINED_CHAT_TEMPLATE
    kept = prepare_tokenizer(str(tmp_path / "own"), tmp_path / "kept", keep_own_template=True)
    assert kept.chat_template == "tokenizer"
    assert AutoTokenizer.from_pretrained(tmp_path / "kept").chat_template == own

    info = prepare_tokenizer(str(hf_dir), tmp_path / "out", vocab_size=500)
    assert info.kind == "hf"
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.chat_template == TRAINED_CHAT_TEMPLATE
    assert tok.pad_token_id == info.pad_token_id != tok.eos_token_id

    storage.upload_tree(hf_dir, f"{gcs_bucket}/hf")
    remote = prepare_tokenizer(f"{gcs_bucket}/hf", tmp_path / "remote")
    assert remote == info


def test_hf_directory_without_template_or_pad_gets_trained_template_and_unk(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.chat_template = None
    tok.pad_token = "</s>"  # a pad == eos tokenizer, as run_rm would make it
    tok.save_pretrained(tmp_path / "bare")
    info = prepare_tokenizer(str(tmp_path / "bare"), tmp_path / "out")
    assert info.chat_template == "easylm-trained"
    assert info.pad_token_id == tok.unk_token_id
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.chat_template == TRAINED_CHAT_TEMPLATE
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
