"""The two scoring formats' token ids and read positions, checked against the facts of the
code they reproduce, restated here from that code (not from rmeval's):

- EasyLM (hamishivi fork) ``EasyLM/data.py``, ``encode_with_messages_format``: each turn's
  content ``.strip()``-ed; ``<|user|>\\n`` + content + ``\\n``; ``<|assistant|>\\n`` +
  content + eos + ``\\n``; the whole text ``.strip()``-ed; ``bos + text`` tokenized with
  ``add_special_tokens=False``; the reward read at the last real position;
- fastchat 0.2.36 ``tulu`` (``ADD_NEW_LINE_SINGLE``, sep ``\\n``): ``role + "\\n" + message
  + "\\n"`` per message, ``role + "\\n"`` for an empty one; rewardbench 0.1.4 ``run_rm``:
  ``truncation_side = "left"``, ``add_eos_token = True`` without a chat template, pad = eos
  without a pad token, ``tokenizer(texts, truncation=True, max_length=2048)``;
  ``RewardBenchPipeline`` masks the first of two leading bos; transformers 4.51 reads the
  reward at the last token that is not ``config.pad_token_id``.

The sentencepiece library itself is the oracle for ids (the tokenizers are rebuilt from
its model); the end-to-end check against run_rm itself is tests/test_run_rm_parity.py.
"""

from __future__ import annotations

import pytest

from rmeval.errors import EvalError, UsageError
from rmeval.rewardbench import formats
from rmeval.rewardbench.data import Pair
from rmeval.tokenizer import load_tokenizer, prepare_tokenizer
from tests.converted_fixtures import easylm_tokenizer_files, train_sentencepiece
from tests.rewardbench_helpers import sample_texts

PAIRS = [
    Pair("0", "hep-go", "Say hi.", "hi", "no"),
    Pair("1", "donotanswer", "  padded prompt \n\n", "\n\tdef f(x):\n    return x  \n", " a "),
    Pair("2", "mt-bench-easy", "question", "", "answer\n"),  # an empty response
]


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    import sentencepiece as spm

    model = train_sentencepiece(tmp_path_factory.mktemp("sp") / "sp", sample_texts(4), 400)
    return model, spm.SentencePieceProcessor(model_file=str(model))


def _fastchat_tulu(prompt: str, response: str) -> str:
    out = ""
    for role, message in (("<|user|>", prompt), ("<|assistant|>", response)):
        out += f"{role}\n{message}\n" if message else f"{role}\n"
    return out


def test_trained_ids_are_easylms(sp, tmp_path):
    model, proc = sp
    prepare_tokenizer(str(model), tmp_path / "tok")
    tok, _ = load_tokenizer(tmp_path / "tok", tmp_path)
    enc = formats.encode(tok, PAIRS, formats.TRAINED, 2048)
    assert enc.label == "easylm-trained" and enc.n_truncated == 0
    k = 0
    for p in PAIRS:
        for response in (p.chosen, p.rejected):
            body = f"<|user|>\n{p.prompt.strip()}\n<|assistant|>\n{response.strip()}"
            # bos, the text as sentencepiece encodes it, eos (a special token, not text)
            assert enc.seqs[k] == [proc.bos_id(), *proc.encode(body), proc.eos_id()], (p, k)
            k += 1


def test_trained_truncation_keeps_bos_and_the_end(sp, tmp_path):
    model, proc = sp
    prepare_tokenizer(str(model), tmp_path / "tok")
    tok, _ = load_tokenizer(tmp_path / "tok", tmp_path)
    long = Pair("9", "hep-go", "p", " ".join(f"word{i}" for i in range(300)), "short")
    full = formats.encode(tok, [long], formats.TRAINED, 10_000).seqs[0]
    enc = formats.encode(tok, [long], formats.TRAINED, 50)
    cut = enc.seqs[0]
    assert enc.n_truncated == 1 and len(full) > 50 and len(cut) == 50
    assert cut == full[:1] + full[-49:]  # bos in front of the end of the text, eos last
    assert cut[0] == proc.bos_id() and cut[-1] == proc.eos_id()


def test_tulu_text_is_fastchats():
    for p in PAIRS:
        for response in (p.chosen, p.rejected):
            chat = [
                {"role": "user", "content": p.prompt},
                {"role": "assistant", "content": response},
            ]
            assert formats.tulu_text(chat) == _fastchat_tulu(p.prompt, response)
    assert formats.tulu_text(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    ) == ("<|user|>\nq\n<|assistant|>\n")


def test_run_rm_on_an_easylm_converter_folder(sp, tmp_path):
    """No pad -> pad = eos: the eos is appended but the reward is read before it."""
    model, proc = sp
    folder = easylm_tokenizer_files(tmp_path / "easylm", model)
    tok, _ = load_tokenizer(folder, tmp_path)
    enc = formats.encode(
        tok, PAIRS, formats.RUN_RM, 2048, tokenizer_class="LlamaTokenizer", model_pad_token_id=0
    )
    assert enc.label == "tulu"
    k = 0
    for p in PAIRS:
        for response in (p.chosen, p.rejected):
            want = [proc.bos_id(), *proc.encode(_fastchat_tulu(p.prompt, response))]
            assert enc.seqs[k] == want  # the eos after it is pad: not read
            k += 1


def test_run_rm_reads_at_the_eos_when_pad_is_not_eos(sp, tmp_path):
    model, proc = sp
    folder = easylm_tokenizer_files(tmp_path / "easylm", model, pad_token="<unk>")
    tok, _ = load_tokenizer(folder, tmp_path)
    pair = PAIRS[:1]
    text = _fastchat_tulu(pair[0].prompt, pair[0].chosen)
    want = [proc.bos_id(), *proc.encode(text), proc.eos_id()]
    for model_pad in (None, 0):  # the model's pad: none (takes the tokenizer's) or unk
        enc = formats.encode(
            tok, pair, formats.RUN_RM, 2048, tokenizer_class="LlamaTokenizer",
            model_pad_token_id=model_pad,
        )  # fmt: skip
        assert enc.seqs[0] == want
    # a model config whose pad is eos wins over the tokenizer's pad (transformers reads the
    # model's pad_token_id): the reward is read before the eos again
    enc = formats.encode(
        tok, pair, formats.RUN_RM, 2048, tokenizer_class="LlamaTokenizer",
        model_pad_token_id=proc.eos_id(),
    )  # fmt: skip
    assert enc.seqs[0] == want[:-1]


def test_run_rm_truncates_from_the_left_with_bos_and_eos_inside(sp, tmp_path):
    model, proc = sp
    folder = easylm_tokenizer_files(tmp_path / "easylm", model, pad_token="<unk>")
    tok, _ = load_tokenizer(folder, tmp_path)
    long = [Pair("9", "hep-go", "p", " ".join(f"word{i}" for i in range(300)), "x")]
    enc = formats.encode(tok, long, formats.RUN_RM, 40, tokenizer_class="LlamaTokenizer")
    body = proc.encode(_fastchat_tulu("p", long[0].chosen))
    assert enc.n_truncated == 1
    assert enc.seqs[0] == [proc.bos_id(), *body[-38:], proc.eos_id()]  # 40 tokens in all


def test_run_rm_with_a_chat_template(sp, tmp_path):
    """The tokenizer path: the template's text, the tokenizer's own special tokens (bos),
    no extra eos; a template that writes bos itself gets one bos (run_rm masks the first)."""
    model, proc = sp
    prepare_tokenizer(str(model), tmp_path / "tok")  # rmeval's folder: EasyLM's template
    tok, _ = load_tokenizer(tmp_path / "tok", tmp_path)
    enc = formats.encode(
        tok, PAIRS, formats.RUN_RM, 2048, tokenizer_class="PreTrainedTokenizerFast"
    )
    assert enc.label == "tokenizer"
    # pad is unk, not eos: read at the eos, i.e. exactly the trained format's sequences
    assert enc.seqs == formats.encode(tok, PAIRS, formats.TRAINED, 2048).seqs
    own_bos = tmp_path / "bos.jinja"
    own_bos.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    enc = formats.encode(tok, PAIRS[:1], formats.RUN_RM, 2048, chat_template=str(own_bos))
    assert enc.label == "bos.jinja"
    assert enc.seqs[0] == [proc.bos_id(), *proc.encode("Say hi.\nhi\n")]


def test_run_rm_needs_a_tokenizer_class_that_appends_eos(sp, tmp_path):
    model, _ = sp
    prepare_tokenizer(str(model), tmp_path / "tok")
    tok, _ = load_tokenizer(tmp_path / "tok", tmp_path)
    with pytest.raises(EvalError, match="add_eos_token does nothing on PreTrainedTokenizerFast"):
        formats.encode(
            tok, PAIRS, formats.RUN_RM, 2048, tokenizer_class="PreTrainedTokenizerFast",
            chat_template="tulu",
        )  # fmt: skip


def test_bad_options():
    with pytest.raises(UsageError, match="must be one of trained, run_rm, got 'tulu'"):
        formats.check_options("tulu", None)
    with pytest.raises(UsageError, match="--chat-template applies to --scoring run_rm"):
        formats.check_options("trained", "tulu")
    assert formats.scoring_of_label("easylm-trained") == "trained"
    assert formats.scoring_of_label("tulu") == formats.scoring_of_label("tokenizer") == "run_rm"
    assert formats.scoring_of_label("vicuna.jinja") is None
