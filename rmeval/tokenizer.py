"""Tokenizers for converted reward models: load, complete (chat template, pad token), save.

Two sources are supported:

- a sentencepiece ``tokenizer.model`` (the Llama-1/2 family), read with the sentencepiece
  library itself and rebuilt as a :class:`transformers.LlamaTokenizer` (byte-fallback BPE).
  We do not go through transformers' own ``.model`` loader: it parses the file with the
  protobuf classes that ship with sentencepiece, which refuse to import when the installed
  protobuf runtime is older than the one they were generated with (protobuf < 7 is pinned
  for beaker-py), and transformers then silently falls back to a tiktoken reader;
- a Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``, e.g.
  Llama-3), loaded with ``AutoTokenizer``.

Either may be local or ``gs://``. :func:`prepare_tokenizer` sets the Tulu chat template when
the tokenizer has none and a pad token that can never change a reward in a padded batch
(never eos: with pad == eos, "last non-pad token" logic picks the wrong position for a text
that ends in eos), checks every id fits the model's vocabulary and saves the result with
``save_pretrained``. :func:`train_tokenizer` makes a small byte-level BPE tokenizer for
tests and the demo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rmeval import storage
from rmeval.errors import CheckpointError, StoreError
from rmeval.procutil import owned_tempdir

log = logging.getLogger(__name__)

# The Tulu chat format (open-instruct / fastchat "tulu"): every turn is its role marker, a
# newline, the content and a newline; an assistant turn ends with eos instead. For one
# prompt and one response this renders ``<|user|>\n{prompt}\n<|assistant|>\n{response}</s>``.
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
)
TULU = "tulu"
FROM_TOKENIZER = "tokenizer"

# Llama-3's vocabulary: the seed pads with the last reserved special token.
LLAMA3_VOCAB_SIZE = 128256
LLAMA3_PAD_ID = 128255

SENTENCEPIECE = "sentencepiece"
HF = "hf"
_HF_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TokenizerInfo:
    """What :func:`prepare_tokenizer` did. ``chat_template`` is ``"tokenizer"`` when the
    tokenizer brought its own template, ``"tulu"`` when we set the Tulu one."""

    chat_template: str
    pad_token: str
    pad_token_id: int
    kind: str
    vocab_size: int  # number of ids the tokenizer can produce (len(tokenizer))


def _fetch(src: str, work: Path) -> Path:
    """A local path for ``src`` (a file or a directory), downloading gs:// sources."""
    if not storage.is_gcs(src):
        p = storage.local_path(src)
        if not p.exists():
            raise CheckpointError(
                f"{src}: tokenizer not found; pass a sentencepiece tokenizer.model file or a "
                "Hugging Face tokenizer directory"
            )
        return p
    name = storage.basename(src)
    try:
        if name.endswith(".model"):
            return storage.download_file(src, work / name)
        return storage.download_tree(src, work / "tokenizer")
    except StoreError as exc:
        raise CheckpointError(f"cannot fetch the tokenizer: {exc}") from exc


def _load_sentencepiece(model_file: Path):
    """A fast tokenizer that encodes exactly like the sentencepiece model in ``model_file``
    (byte-fallback BPE; the layout of Llama-2's own ``tokenizer.json``)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor()
    try:
        ok = sp.Load(str(model_file))
    except (OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{model_file}: not a readable sentencepiece model ({first}); pass the "
            "tokenizer.model the checkpoint was trained with"
        ) from None
    if ok is False:
        raise CheckpointError(f"{model_file}: not a readable sentencepiece model")
    n = sp.GetPieceSize()
    vocab = {sp.IdToPiece(i): i for i in range(n)}
    # sentencepiece orders BPE pieces by merge rank (score); generate_merges turns that order
    # back into the ordered merge list.
    merges = generate_merges(vocab)

    def piece(i: int) -> str | None:
        return sp.IdToPiece(i) if 0 <= i < n else None

    unk, bos, eos = piece(sp.unk_id()), piece(sp.bos_id()), piece(sp.eos_id())
    bpe = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    # Spaces become "▁" and, when the model adds a dummy prefix, one "▁" is prepended even
    # if the text already starts with a space (a Metaspace pre-tokenizer would not).
    steps = [normalizers.Replace(" ", "▁")]
    first_piece = sp.EncodeAsPieces("a")[:1]
    if first_piece and first_piece[0].startswith("▁"):
        steps.insert(0, normalizers.Prepend("▁"))
    bpe.normalizer = normalizers.Sequence(steps)
    bpe.pre_tokenizer = None
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if len(steps) == 2:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    bpe.decoder = decoders.Sequence(dec)
    specials = [sp.IdToPiece(i) for i in range(n) if sp.IsControl(i) or sp.IsUnknown(i)]
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos is not None:
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token=unk, bos_token=bos, eos_token=eos)
    _check_same_encoding(sp, tok, model_file)
    return tok


_PROBES = (
    "Hello, world! How are you today?",
    "  two leading spaces and trailing  ",
    "line one\nline two\n\n\tindented",
    "def f(x):\n    return x ** 2  # code",
    "Zürich, naïve café, 東京, emoji 😀",
    "1234567890 3.14159 -42",
)


def _check_same_encoding(sp, tok, model_file: Path) -> None:
    """The rebuilt tokenizer must encode like sentencepiece itself (Llama-style BPE with
    byte fallback); anything else (e.g. a unigram model) is refused, not silently wrong."""
    normal = [
        i
        for i in range(sp.GetPieceSize())
        if not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsByte(i) or sp.IsUnused(i))
    ]
    pieces = [sp.IdToPiece(i).replace("▁", " ") for i in normal[::7]]
    probes = [*_PROBES, "".join(pieces[:200])]
    for text in probes:
        if tok(text, add_special_tokens=False)["input_ids"] != sp.encode(text):
            raise CheckpointError(
                f"{model_file}: this sentencepiece model does not encode like a Llama BPE "
                f"tokenizer (e.g. {text[:30]!r}); pass a Hugging Face tokenizer directory instead"
            )


def _load_hf(directory: Path):
    from transformers import AutoTokenizer

    if not any((directory / f).is_file() for f in _HF_FILES):
        raise CheckpointError(
            f"{directory}: not a Hugging Face tokenizer directory (no tokenizer.json or "
            "tokenizer_config.json); pass a tokenizer.model file or a saved tokenizer directory"
        )
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # transformers raises many types for a broken directory
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: cannot load the tokenizer: {msg}") from None


def load_tokenizer(src: str | os.PathLike, work: str | os.PathLike):
    """Load ``src`` (local or gs://, a ``.model`` file or a directory). Returns
    ``(tokenizer, kind)``. ``work`` is a local scratch directory for downloads."""
    src = os.fspath(src)
    path = _fetch(src, Path(work))
    if path.is_file():
        return _load_sentencepiece(path), SENTENCEPIECE
    if any((path / f).is_file() for f in _HF_FILES):
        return _load_hf(path), HF
    if (path / "tokenizer.model").is_file():
        return _load_sentencepiece(path / "tokenizer.model"), SENTENCEPIECE
    raise CheckpointError(
        f"{src}: no tokenizer found (expected tokenizer.json, tokenizer_config.json or "
        "tokenizer.model); pass the tokenizer the checkpoint was trained with"
    )


def _choose_pad(tok, pad_token_id: int | None) -> int:
    eos_id = tok.eos_token_id
    n = len(tok)
    if pad_token_id is not None:
        if not 0 <= pad_token_id < n:
            raise CheckpointError(
                f"pad_token_id {pad_token_id} is outside the tokenizer's {n} ids; pass an id in [0, {n})"
            )
        if pad_token_id == eos_id:
            raise CheckpointError(
                f"pad_token_id {pad_token_id} is the eos token; padding with eos can change "
                "rewards; pass another id (e.g. unk or a reserved token)"
            )
        return pad_token_id
    if tok.pad_token_id is not None and tok.pad_token_id != eos_id:
        return int(tok.pad_token_id)
    if n == LLAMA3_VOCAB_SIZE and eos_id != LLAMA3_PAD_ID:
        return LLAMA3_PAD_ID
    if tok.unk_token_id is not None and tok.unk_token_id != eos_id:
        return int(tok.unk_token_id)
    raise CheckpointError(
        "the tokenizer has no pad token, no unk token and is not a Llama-3 vocabulary; "
        "pass --pad-token-id with an id that is not eos (e.g. a reserved special token)"
    )


def prepare_tokenizer(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    chat_template: str = TULU,
) -> TokenizerInfo:
    """Load the tokenizer at ``src``, complete it and save it into the local ``out_dir``.

    - chat template: :data:`TULU_CHAT_TEMPLATE`, the format EasyLM reward models are trained
      on, even when the tokenizer brings its own (a Llama-3 directory ships Meta's chat
      format, which would score the model on text unlike its training data);
      ``chat_template="tokenizer"`` keeps the tokenizer's own when it has one;
    - pad token: ``pad_token_id`` if given; else the tokenizer's own unless it is eos; else
      id 128255 for a Llama-3 vocabulary (as the seed does); else unk (Llama-2: id 0);
    - ``vocab_size`` (the model's embedding rows): every id must be below it.
    """
    with owned_tempdir("rmeval-tok-") as work:
        tok, kind = load_tokenizer(src, work)
        n = len(tok)
        if vocab_size is not None and n > vocab_size:
            raise CheckpointError(
                f"{os.fspath(src)}: the tokenizer has {n} ids but the model's vocabulary has "
                f"{vocab_size} rows; pass the tokenizer the checkpoint was trained with"
            )
        if chat_template not in (TULU, FROM_TOKENIZER):
            raise ValueError(f"chat_template must be {TULU!r} or {FROM_TOKENIZER!r}")
        if chat_template == FROM_TOKENIZER and getattr(tok, "chat_template", None):
            template = FROM_TOKENIZER
        else:
            tok.chat_template = TULU_CHAT_TEMPLATE
            template = TULU
        pad_id = _choose_pad(tok, pad_token_id)
        pad_token = tok.convert_ids_to_tokens(pad_id)
        tok.pad_token = pad_token
        if tok.pad_token_id != pad_id:  # two pieces with the same text; should not happen
            raise CheckpointError(
                f"{os.fspath(src)}: pad token {pad_token!r} maps to id {tok.pad_token_id}, not "
                f"{pad_id}; pass --pad-token-id with an unambiguous id"
            )
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(str(out))
        except Exception as exc:  # the tokenizers library reports ENOSPC as a plain Exception
            if storage.os_errno(exc) is None:
                raise
            raise storage.write_error(exc, out, "save the tokenizer") from None
    log.info(
        "tokenizer (%s, %d ids): chat template %s, pad %r (id %d) -> %s",
        kind,
        n,
        template,
        pad_token,
        pad_id,
        out,
    )
    return TokenizerInfo(
        chat_template=template, pad_token=pad_token, pad_token_id=pad_id, kind=kind, vocab_size=n
    )


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 2000
) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` (specials ``<unk>`` 0, ``<s>`` 1,
    ``</s>`` 2; bos added to every sequence; pad = ``<unk>``) with the Tulu chat template,
    and save it as a Hugging Face tokenizer directory. For tests and the demo."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )
    tok.chat_template = TULU_CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out
