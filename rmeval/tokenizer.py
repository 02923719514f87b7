"""Tokenizers for converted reward models: load, complete (chat template, pad token), save.

Two sources are supported:

- a sentencepiece ``tokenizer.model`` (the Llama-1/2 family; alone, or in a folder such as
  EasyLM's converter writes, with a ``tokenizer_config.json`` naming ``LlamaTokenizer``),
  read with the sentencepiece library itself and rebuilt as a fast tokenizer that encodes
  exactly like it (byte-fallback BPE, the layout of Llama-2's own ``tokenizer.json``, what
  transformers 4.x builds for it). We do not go through transformers' own ``.model``
  loader: it parses the file with the protobuf classes that ship with sentencepiece, which
  refuse to import when the installed protobuf runtime is older than the one they were
  generated with (protobuf < 7 is pinned for beaker-py), and transformers 5 then falls back
  to a tiktoken reader;
- a Hugging Face tokenizer directory: its ``tokenizer.json`` is used **as saved**. (On a
  folder whose config names a model class, transformers 5's ``AutoTokenizer`` rebuilds the
  normalizer and pre-tokenizer itself: for Llama, a text after a special token that starts
  with a space then encodes differently from sentencepiece and from transformers 4.x.)

Either may be local or ``gs://``. :func:`prepare_tokenizer` sets EasyLM's training format as
the chat template (:data:`rmeval.rewardbench.formats.TRAINED_CHAT_TEMPLATE`) and a pad token
that can never change a reward in a padded batch (never eos: with pad == eos, "last non-pad
token" logic picks the wrong position for a text that ends in eos), checks every id fits the
model's vocabulary and writes a folder that transformers 4.43, 4.51 and 5.x all load with the
same ids (:func:`save_portable`). :func:`train_tokenizer` makes a small byte-level BPE
tokenizer for tests and the demo.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rmeval import storage
from rmeval.errors import CheckpointError, StoreError

log = logging.getLogger(__name__)

# Llama-3's vocabulary: the seed pads with the last reserved special token.
LLAMA3_VOCAB_SIZE = 128256
LLAMA3_PAD_ID = 128255

SENTENCEPIECE = "sentencepiece"
HF = "hf"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
_HF_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG)
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SENTENCEPIECE_FILE = "tokenizer.model"
# The class every transformers version loads from tokenizer.json as saved (4.x's
# PreTrainedTokenizerFast, 5.x's TokenizersBackend); what it returns as model inputs.
PORTABLE_CLASS = "PreTrainedTokenizerFast"
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


@dataclass(frozen=True)
class TokenizerInfo:
    """What :func:`prepare_tokenizer` did. ``chat_template`` is ``"tokenizer"`` when the
    tokenizer kept its own template, ``"easylm-trained"`` when we set EasyLM's format."""

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


def _load_sentencepiece(model_file: Path, config: dict | None = None):
    """A fast tokenizer that encodes exactly like the sentencepiece model in ``model_file``
    (byte-fallback BPE; the layout of Llama-2's own ``tokenizer.json``). ``config``: the
    folder's tokenizer_config.json, for ``add_bos_token`` / ``add_eos_token`` (defaults
    True / False, as LlamaTokenizer's), the pad token and the chat template."""
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
        ) from exc
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
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "▁")]
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
    config = config or {}
    if config.get("legacy") is False:
        raise CheckpointError(
            f"{model_file.parent / TOKENIZER_CONFIG}: legacy=false sentencepiece tokenizers "
            "are not supported; pass the tokenizer.model alone or a folder with a tokenizer.json"
        )
    add = [bos] if bos and config.get("add_bos_token", True) else []
    end = [eos] if eos and config.get("add_eos_token", False) else []
    if add or end:
        single = " ".join([*add, "$A", *end])
        pair = " ".join([*add, "$A", *end, *add, "$B", *end])
        bpe.post_processor = processors.TemplateProcessing(
            single=single,
            pair=pair,
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(add + end)],
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token=unk, bos_token=bos, eos_token=eos)
    pad = _token_text(config.get("pad_token"))
    if pad is not None:
        tok.pad_token = pad
    if config.get("chat_template") is not None:
        tok.chat_template = config["chat_template"]
    _check_same_encoding(sp, tok, model_file)
    return tok


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


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


def _read_config(directory: Path) -> dict:
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _load_hf(directory: Path):
    """``tokenizer.json`` as saved (any transformers version's ``PreTrainedTokenizerFast``);
    a folder without one goes through ``AutoTokenizer``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not any((directory / f).is_file() for f in _HF_FILES):
        raise CheckpointError(
            f"{directory}: not a Hugging Face tokenizer directory (no tokenizer.json or "
            "tokenizer_config.json); pass a tokenizer.model file or a saved tokenizer directory"
        )
    loader = PreTrainedTokenizerFast if (directory / TOKENIZER_JSON).is_file() else AutoTokenizer
    try:
        return loader.from_pretrained(str(directory))
    except Exception as exc:  # transformers raises many types for a broken directory
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: cannot load the tokenizer: {msg}") from exc


def load_tokenizer(src: str | os.PathLike, work: str | os.PathLike):
    """Load ``src`` (local or gs://, a ``.model`` file or a directory). Returns
    ``(tokenizer, kind)``. ``work`` is a local scratch directory for downloads. A directory
    with a ``tokenizer.json`` is read as saved; one with only a sentencepiece
    ``tokenizer.model`` (e.g. what EasyLM's converter writes) is rebuilt from it."""
    tok, kind, _ = _load(os.fspath(src), Path(work))
    return tok, kind


def _load(src: str, work: Path):
    """``(tokenizer, kind, the local sentencepiece model file or None)``."""
    path = _fetch(src, work)
    if path.is_file():
        return _load_sentencepiece(path), SENTENCEPIECE, path
    if not (path / TOKENIZER_JSON).is_file() and (path / SENTENCEPIECE_FILE).is_file():
        model = path / SENTENCEPIECE_FILE
        return _load_sentencepiece(model, _read_config(path)), SENTENCEPIECE, model
    if any((path / f).is_file() for f in _HF_FILES):
        return _load_hf(path), HF, None
    raise CheckpointError(
        f"{src}: no tokenizer found (expected tokenizer.json, tokenizer_config.json or "
        "tokenizer.model); pass the tokenizer the checkpoint was trained with"
    )


def declared_class(directory: str | os.PathLike) -> str | None:
    """The ``tokenizer_class`` a folder's tokenizer_config.json names: the class
    transformers 4.x instantiates for it (``LlamaTokenizer`` loads as its fast version)."""
    value = _read_config(Path(directory)).get("tokenizer_class")
    return value if isinstance(value, str) else None


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
    keep_own_template: bool = False,
    model_max_length: int | None = None,
) -> TokenizerInfo:
    """Load the tokenizer at ``src``, complete it and save it into the local ``out_dir``.

    - chat template: EasyLM's training format (:data:`~rmeval.rewardbench.formats.
      TRAINED_CHAT_TEMPLATE`), even when the tokenizer brings its own (a Llama-3 directory
      ships Meta's chat format, which would score the model on text unlike its training
      data); ``keep_own_template`` keeps the tokenizer's own when it has one;
    - pad token: ``pad_token_id`` if given; else the tokenizer's own unless it is eos; else
      id 128255 for a Llama-3 vocabulary (as the seed does); else unk (Llama-2: id 0);
    - ``vocab_size`` (the model's embedding rows): every id must be below it;
    - ``model_max_length``: the model's positions, recorded in tokenizer_config.json.
    """
    from rmeval.rewardbench.formats import TOKENIZER_LABEL, TRAINED_CHAT_TEMPLATE, TRAINED_LABEL

    with storage.owned_tempdir("rmeval-tok-") as work:
        tok, kind, sp_file = _load(os.fspath(src), Path(work))
        n = len(tok)
        if vocab_size is not None and n > vocab_size:
            raise CheckpointError(
                f"{os.fspath(src)}: the tokenizer has {n} ids but the model's vocabulary has "
                f"{vocab_size} rows; pass the tokenizer the checkpoint was trained with"
            )
        if keep_own_template and getattr(tok, "chat_template", None):
            template = TOKENIZER_LABEL
        else:
            tok.chat_template = TRAINED_CHAT_TEMPLATE
            template = TRAINED_LABEL
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
            save_portable(tok, out, model_max_length=model_max_length, sentencepiece_model=sp_file)
        except Exception as exc:  # the tokenizers library reports ENOSPC as a plain Exception
            if storage.os_errno(exc) is None:
                raise
            raise storage.write_error(exc, out, "save the tokenizer") from exc
    log.info(
        "tokenizer (%s, %d ids): chat template %s, pad %r (id %d) -> %s",
        kind,
        n,
        template,
        pad_token,
        pad_id,
        out_dir,
    )
    return TokenizerInfo(
        chat_template=template, pad_token=pad_token, pad_token_id=pad_id, kind=kind, vocab_size=n
    )


def _portable_tokenizer_json(tok) -> dict:
    """The fast tokenizer's JSON with BPE merges as ``"a b"`` strings: tokenizers < 0.20
    (transformers 4.43's) reads only those; every later version reads both forms. A merge
    whose pieces hold a space can only be written as a pair (logged)."""
    data = json.loads(tok.backend_tokenizer.to_str())
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges and isinstance(merges[0], list):
        if any(" " in piece for merge in merges for piece in merge):
            log.warning(
                "the tokenizer's BPE merges hold spaces; transformers < 4.45 cannot read them"
            )
        else:
            model["merges"] = [" ".join(merge) for merge in merges]
    return data


def save_portable(
    tok,
    out_dir: str | os.PathLike,
    *,
    model_max_length: int | None = None,
    sentencepiece_model: Path | None = None,
) -> Path:
    """Write ``tok`` (a fast tokenizer) into ``out_dir`` so that transformers 4.43, 4.51 and
    5.x load it alike: the same ids (``tokenizer.json`` read as saved by the class each of
    them knows, ``PreTrainedTokenizerFast``), special and pad tokens, model inputs (no
    ``token_type_ids``), ``model_max_length`` and chat template (in tokenizer_config.json,
    which 4.43 reads, and in chat_template.jinja). ``sentencepiece_model``: the source
    ``tokenizer.model``, copied beside for sentencepiece tools."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = {
        name: getattr(tok, name)
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(tok, name, None) is not None
    }
    config: dict = {
        "tokenizer_class": PORTABLE_CLASS,
        **{name: str(value) for name, value in specials.items()},
        "model_input_names": MODEL_INPUT_NAMES,
        "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)),
    }
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    template = getattr(tok, "chat_template", None)
    if template is not None:
        config["chat_template"] = template
    files = {
        TOKENIZER_JSON: _portable_tokenizer_json(tok),
        TOKENIZER_CONFIG: config,
        SPECIAL_TOKENS_MAP: {name: str(value) for name, value in specials.items()},
    }
    for name, data in files.items():
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    if template is not None:  # as is: 4.51 and 5.x read this file before the config
        (out / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    if sentencepiece_model is not None:
        shutil.copyfile(sentencepiece_model, out / SENTENCEPIECE_FILE)
    return out


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 2000
) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` (specials ``<unk>`` 0, ``<s>`` 1,
    ``</s>`` 2; bos added to every sequence; pad = ``<unk>``) with EasyLM's chat template,
    and save it as a Hugging Face tokenizer directory. For tests and the demo."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from rmeval.rewardbench.formats import TRAINED_CHAT_TEMPLATE

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
    tok.chat_template = TRAINED_CHAT_TEMPLATE
    return save_portable(tok, out_dir)
