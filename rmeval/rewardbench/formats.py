"""Scoring formats: which token ids a reward model is scored on, and where its reward is read.

Two formats, chosen by name (``--scoring``, config key ``scoring``):

``trained`` (the default)
    The text EasyLM trains reward models on (hamishivi/EasyLM, ``PreferenceDataset`` ->
    ``encode_with_messages_format``): every turn is ``<|user|>\\n`` / ``<|assistant|>\\n``
    plus its content **stripped**, a user turn ends with ``\\n``, an assistant turn with
    eos and ``\\n``; the whole text is stripped again and bos is put in front; it is
    tokenized with no special tokens added. For one prompt and one response:
    ``<s><|user|>\\n{prompt.strip()}\\n<|assistant|>\\n{response.strip()}</s>``. The
    reward is read at the eos, as EasyLM reads it (at the last real position). EasyLM
    truncates a too-long training text on the right; here a text over ``max_length``
    keeps its bos and its end (eos included), so the reward is still read at the eos.
    metrics.json says ``chat_template: easylm-trained``.

``run_rm``
    What RewardBench's ``scripts/run_rm.py`` (rewardbench 0.1.4, transformers 4.51)
    computes on a model folder: with no chat template in the tokenizer, fastchat's
    ``tulu`` text ``<|user|>\\n{prompt}\\n<|assistant|>\\n{response}\\n`` (nothing
    stripped; an empty message leaves only its role line) tokenized with the tokenizer's
    special tokens plus an eos (``add_eos_token``, which only some tokenizer classes
    honour); with a chat template, the template's text and the tokenizer's special
    tokens (no extra eos). Truncation is from the left to ``max_length`` tokens with the
    special tokens kept (so the eos is inside the limit); a doubled leading bos loses its
    first copy (RewardBenchPipeline masks it); with no pad token, pad = eos; the reward
    is read at the last token that is not the model's pad id (transformers 4.51's
    rule), i.e. the ``\\n`` before the eos when pad = eos. metrics.json says
    ``chat_template: tulu`` or ``tokenizer``, exactly as run_rm.

Both only choose the ids and the read position: a scored sequence ends at its read
position (the model is causal, so later tokens cannot change that reward), and the
evaluator reads every sequence at its last token, in any batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rmeval.errors import EvalError, UsageError
from rmeval.rewardbench.data import Pair, Row

TRAINED = "trained"
RUN_RM = "run_rm"
SCORINGS = (TRAINED, RUN_RM)
DEFAULT_SCORING = TRAINED

# metrics.json's ``chat_template`` per format; ``tulu`` and ``tokenizer`` are run_rm's own.
TRAINED_LABEL = "easylm-trained"
TULU_LABEL = "tulu"
TOKENIZER_LABEL = "tokenizer"
CHAT_TEMPLATE_LABELS = {TRAINED: (TRAINED_LABEL,), RUN_RM: (TULU_LABEL, TOKENIZER_LABEL)}

# The trained text as a chat template (bos excluded: a tokenizer adds it as a special
# token). Converted models carry it, so run_rm on them scores the trained text too. With
# add_generation_prompt it is EasyLM's prompt text (TuluPromptDataset): no final strip,
# then ``<|assistant|>\n``.
TRAINED_CHAT_TEMPLATE = (
    "{%- set ns = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.text = ns.text + '<|system|>\\n' + (message['content'] | trim) + '\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set ns.text = ns.text + '<|user|>\\n' + (message['content'] | trim) + '\\n' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set ns.text = ns.text + '<|assistant|>\\n' + (message['content'] | trim) + eos_token"
    " + '\\n' -%}"
    "{%- else -%}"
    "{{- raise_exception('Invalid role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ns.text + '<|assistant|>\\n' -}}"
    "{%- else -%}{{- ns.text | trim -}}{%- endif -%}"
)

# Tokenizer classes whose ``add_eos_token = True`` (what run_rm sets when it uses the tulu
# text) makes transformers 4.51 append an eos; any other class silently ignores it.
EOS_APPENDING_CLASSES = frozenset(
    {
        "LlamaTokenizer",
        "LlamaTokenizerFast",
        "CodeLlamaTokenizer",
        "CodeLlamaTokenizerFast",
        "GemmaTokenizer",
        "GemmaTokenizerFast",
        "GPTNeoXTokenizerFast",
        "CohereTokenizerFast",
    }
)


def check_scoring(value: object, what: str = "--scoring", error: type[Exception] = UsageError):
    """``value`` if it names a format, else ``error`` listing the choices."""
    if value not in SCORINGS:
        raise error(f"{what} must be one of {', '.join(SCORINGS)}, got {value!r}")
    return value


def check_options(scoring: object, chat_template: str | None) -> None:
    """A known format; ``chat_template`` (an override of run_rm's choice) only with run_rm."""
    check_scoring(scoring)
    if chat_template is not None and scoring != RUN_RM:
        raise UsageError(
            f"--chat-template applies to --scoring {RUN_RM}; --scoring {scoring} is EasyLM's "
            "own text"
        )


def scoring_of_label(label: object) -> str | None:
    """The format a metrics.json ``chat_template`` value comes from (None: neither)."""
    for name, labels in CHAT_TEMPLATE_LABELS.items():
        if label in labels:
            return name
    return None


@dataclass
class Encoded:
    """``seqs``: two per pair (chosen at 2i, rejected at 2i+1), or one per completion of a
    RewardBench 2 row in order, each ending at the token whose reward is read; ``label``:
    metrics.json's ``chat_template``."""

    seqs: list[list[int]]
    label: str
    n_truncated: int


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _responses(item: Pair | Row) -> tuple[str, ...]:
    """The texts of one item in scoring order: a pair's chosen then rejected; a RewardBench 2
    row's completions (chosen..., then rejected...), one text each."""
    return item.completions if isinstance(item, Row) else (item.chosen, item.rejected)


def _chats(pairs: Sequence[Pair | Row]) -> Iterable[tuple[Pair | Row, list[dict]]]:
    for p in pairs:
        for response in _responses(p):
            yield (
                p,
                [
                    {"role": "user", "content": p.prompt},
                    {"role": "assistant", "content": response},
                ],
            )


def _render(tokenizer, template: str, pairs: Sequence[Pair | Row]) -> list[str]:
    texts = []
    for p, chat in _chats(pairs):
        try:
            texts.append(
                tokenizer.apply_chat_template(chat, chat_template=template, tokenize=False)
            )
        except Exception as exc:  # jinja and transformers raise many types
            raise EvalError(
                f"cannot render row {p.id} with the chat template: {_first_line(exc)}"
            ) from exc
    return texts


def tulu_text(messages: Sequence[dict]) -> str:
    """fastchat's ``tulu`` conversation (ADD_NEW_LINE_SINGLE, sep ``\\n``, no system)."""
    roles = {"user": "<|user|>", "assistant": "<|assistant|>"}
    out = ""
    for m in messages:
        role = roles[m["role"]]
        out += f"{role}\n{m['content']}\n" if m["content"] else f"{role}\n"
    return out


def _encode_plain(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [list(e) for e in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _added_specials(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (its post-processor)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise EvalError(
        f"{type(tokenizer).__name__}: cannot tell which special tokens it adds to a text"
    )


def _check_max_length(max_length: int, fixed: int) -> None:
    if max_length <= fixed:
        raise UsageError(
            f"--max-length must leave room for text beside the {fixed} special token(s), "
            f"got {max_length}"
        )


def encode_trained(tokenizer, pairs: Sequence[Pair | Row], max_length: int) -> Encoded:
    """The ``trained`` format (see the module docstring)."""
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if not bos or not eos:
        raise EvalError(
            f"--scoring {TRAINED}: the tokenizer has no {'bos' if not bos else 'eos'} token; "
            f"EasyLM's text starts with bos and ends with eos (use --scoring {RUN_RM})"
        )
    _check_max_length(max_length, 2)
    texts = [bos + t for t in _render(tokenizer, TRAINED_CHAT_TEMPLATE, pairs)]
    seqs, n_truncated = [], 0
    for ids in _encode_plain(tokenizer, texts):
        if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
            raise EvalError(
                f"--scoring {TRAINED}: {type(tokenizer).__name__} does not encode its bos "
                f"{bos!r} and eos {eos!r} as single special tokens"
            )
        if len(ids) > max_length:
            ids = ids[:1] + ids[len(ids) - (max_length - 1) :]
            n_truncated += 1
        seqs.append(ids)
    return Encoded(seqs, TRAINED_LABEL, n_truncated)


def _run_rm_read_pad(tokenizer, model_pad_token_id: int | None) -> int | None:
    """The id transformers 4.51 skips when it looks for the reward's position, after
    run_rm's fallbacks: no tokenizer pad -> eos (for the model too); a model config with
    no pad -> the tokenizer's; else the model config's own."""
    if tokenizer.pad_token_id is None:
        return tokenizer.eos_token_id
    if model_pad_token_id is None:
        return tokenizer.pad_token_id
    return model_pad_token_id


def encode_run_rm(
    tokenizer,
    pairs: Sequence[Pair | Row],
    max_length: int,
    *,
    tokenizer_class: str | None = None,
    model_pad_token_id: int | None = None,
    chat_template: str | None = None,
) -> Encoded:
    """The ``run_rm`` format (see the module docstring). ``tokenizer_class``: the class
    transformers 4.x instantiates for the folder (its tokenizer_config.json's
    ``tokenizer_class``; default: the loaded class). ``chat_template``: ``None`` (run_rm's
    choice), ``"tulu"``, ``"tokenizer"`` or a Jinja template file, named by its file name."""
    own = getattr(tokenizer, "chat_template", None)
    if chat_template is None:
        chat_template = TOKENIZER_LABEL if own is not None else TULU_LABEL
    add_eos = False
    if chat_template == TULU_LABEL:
        label = TULU_LABEL
        texts = [tulu_text(chat) for _, chat in _chats(pairs)]
        cls = tokenizer_class or type(tokenizer).__name__
        if cls not in EOS_APPENDING_CLASSES:
            raise EvalError(
                f"--scoring {RUN_RM}: the tulu text needs an eos appended, and run_rm's "
                f"add_eos_token does nothing on {cls}; give the tokenizer a chat template, "
                f"or use one of {', '.join(sorted(EOS_APPENDING_CLASSES))}"
            )
        if tokenizer.eos_token_id is None:
            raise EvalError(f"--scoring {RUN_RM}: {cls} has no eos token to append")
        add_eos = True
    elif chat_template == TOKENIZER_LABEL:
        if own is None:
            raise EvalError("--chat-template tokenizer: the tokenizer has no chat template")
        label = TOKENIZER_LABEL
        texts = _render(tokenizer, own if isinstance(own, str) else own.get("default"), pairs)
    else:
        path = Path(chat_template)
        if not path.is_file():
            raise EvalError(
                f"--chat-template {chat_template}: expected 'tokenizer', 'tulu' or a Jinja "
                "template file"
            )
        label = path.name
        texts = _render(tokenizer, path.read_text(encoding="utf-8"), pairs)

    head, tail = _added_specials(tokenizer)
    if add_eos:
        tail = [*tail, tokenizer.eos_token_id]
    _check_max_length(max_length, len(head) + len(tail))
    room = max_length - len(head) - len(tail)
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token else None
    read_pad = _run_rm_read_pad(tokenizer, model_pad_token_id)
    seqs, n_truncated = [], 0
    for body in _encode_plain(tokenizer, texts):
        if len(body) > room:
            body = body[len(body) - room :]
            n_truncated += 1
        ids = head + body + tail
        if bos_id is not None and len(ids) > 1 and ids[0] == ids[1] == bos_id:
            ids = ids[1:]  # RewardBenchPipeline masks the first of two leading bos
        if not ids:
            raise EvalError("a formatted text tokenized to zero tokens")
        last = len(ids) - 1
        if read_pad is not None:
            while last > 0 and ids[last] == read_pad:
                last -= 1
        seqs.append(ids[: last + 1])
    return Encoded(seqs, label, n_truncated)


def encode(
    tokenizer,
    pairs: Sequence[Pair | Row],
    scoring: str,
    max_length: int,
    *,
    tokenizer_class: str | None = None,
    model_pad_token_id: int | None = None,
    chat_template: str | None = None,
) -> Encoded:
    """The scored sequences of ``pairs`` in format ``scoring``."""
    check_options(scoring, chat_template)
    if scoring == TRAINED:
        return encode_trained(tokenizer, pairs, max_length)
    return encode_run_rm(
        tokenizer,
        pairs,
        max_length,
        tokenizer_class=tokenizer_class,
        model_pad_token_id=model_pad_token_id,
        chat_template=chat_template,
    )
