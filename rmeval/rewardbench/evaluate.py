"""Score a sequence-classifier reward model on RewardBench.

What it does, and why:

- each (prompt, response) becomes the token ids of a scoring format
  (:mod:`rmeval.rewardbench.formats`): ``trained`` (default), EasyLM's training text read
  at its eos, or ``run_rm``, what RewardBench's run_rm scores; either way a text is
  truncated **from the left** to ``max_length`` tokens, so the end of the response, where
  the reward is read, survives, and a scored sequence ends at its read position;
- the texts (two per pair) are sorted by length and packed into batches by a token budget
  counted on the *padded* size (``max_tokens``), and a batch only takes a text if the batch
  stays within ``PAD_SLACK`` of padding: near-equal lengths, little wasted compute;
- for plain pre-norm decoders (Llama, Mistral, Qwen2) the last layer's MLP runs only at the
  token whose reward is read (checked against the full forward on a probe batch first);
- the reward is read at the last real token of that sequence, located from the attention
  mask (never from pad-id detection in a padded batch), and position ids are derived from
  the mask, so a text gets the same reward alone or in any batch, with left or right
  padding;
- a pair is correct iff reward(chosen) > reward(rejected): a tie counts as wrong;
- ``--benchmark rewardbench2``: every completion of a RewardBench 2 row is one text in the
  same formats and the same batches; rows roll up as run_v2 does
  (:mod:`rmeval.rewardbench.scoring_v2`), metrics.json is run_v2's flat object (one score
  per subset) and the scores file has one line per completion. One difference from
  run_v2, on purpose: run_rm truncates a too-long text from the left
  (``tokenizer.truncation_side = "left"``), run_v2 does not set it and so cuts the end of
  the response, eos included, where the reward is read; rmeval truncates from the left
  for both (tests/test_run_v2_parity.py shows the difference on such texts);
- ``metrics.json`` is the flat object RewardBench's ``run_rm`` saves: ``model``,
  ``model_type`` ("Seq. Classifier"), ``chat_template`` (which format: ``easylm-trained``,
  or run_rm's own ``tulu`` / ``tokenizer``), one accuracy per subset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rmeval import storage
from rmeval.checkpoints.llama import CONFIG_FILE
from rmeval.errors import AlreadyExistsError, CheckpointError, EvalError, StoreError, UsageError
from rmeval.rewardbench import formats, scoring, scoring_v2
from rmeval.rewardbench.data import (
    BENCHMARKS,
    DEFAULT_BENCHMARK,
    HUB_DATASET,
    HUB_DATASET_V2,
    V2,
    Pair,
    Row,
    load_pairs,
    load_rows_v2,
)
from rmeval.tokenizer import TOKENIZER_CONFIG, TOKENIZER_JSON, declared_class, load_tokenizer

log = logging.getLogger(__name__)

MODEL_TYPE = "Seq. Classifier"
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_TOKENS = 8192
# A batch takes another text only while padded tokens stay within this fraction of the
# batch's real tokens. On a GPU batching pays; on a CPU a batch of one long text runs as
# fast per token as a batch of several, and a padding-free batch needs no attention mask
# (the faster causal kernel), so CPU batches only group texts of equal length.
PAD_SLACK = {"cuda": 0.03, "cpu": 0.0}
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bf16", "fp16", "fp32")
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class EvalResult:
    """``metrics`` is exactly what metrics.json holds; ``sections`` the four section
    scores (None where no subset of a section was scored; empty for RewardBench 2);
    ``overall`` RewardBench's Overall, or RewardBench 2's (the mean of its six subsets);
    ``n_pairs`` the pairs, or RewardBench 2 rows, scored; ``seconds`` the time spent
    formatting, tokenizing and scoring (model loading excluded); ``padding_ratio`` is
    padded tokens / real tokens (1.0 = no padding)."""

    metrics: dict
    sections: dict[str, float | None]
    overall: float | None
    n_pairs: int
    seconds: float
    padding_ratio: float
    chat_template: str = ""
    scoring: str = ""
    device: str = ""
    dtype: str = ""
    n_batches: int = 0
    n_truncated: int = 0
    unknown_subsets: list[str] = field(default_factory=list)
    attention: str = ""  # the attention implementation the model ran with (e.g. sdpa)
    benchmark: str = DEFAULT_BENCHMARK


# --------------------------------------------------------------------------- setup


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, answered without importing torch (seconds) where no
    CUDA driver library can be loaded at all: a bad --device or --dtype on a CPU machine
    then fails at once."""
    import ctypes
    import ctypes.util

    if ctypes.util.find_library("cuda") is None:
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise EvalError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return device


def dtype_name(dtype: str, device: str) -> str:
    """The evaluation dtype (bf16 | fp16 | fp32) of ``dtype`` on ``device``; fp16 needs a GPU."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        dtype = "bf16" if device == "cuda" else "fp32"
    if dtype == "fp16" and device != "cuda":
        raise EvalError(
            "--dtype fp16 needs a GPU (--device cuda); on the CPU use --dtype fp32 or bf16"
        )
    return dtype


def resolve_dtype(dtype: str, device: str):
    import torch

    return getattr(torch, _TORCH_DTYPES[dtype_name(dtype, device)])


def _local_model_dir(model_dir: str, stack: contextlib.ExitStack) -> Path:
    if storage.is_gcs(model_dir):
        work = stack.enter_context(storage.owned_tempdir("rmeval-model-"))
        try:
            return storage.download_tree(model_dir, work / "model", marker=CONFIG_FILE)
        except StoreError as exc:
            raise EvalError(f"cannot fetch the model: {exc}") from exc
    path = storage.local_path(model_dir)
    if not path.is_dir():
        raise EvalError(
            f"{model_dir}: no such model directory; pass a Hugging Face model directory "
            "(config.json, weights, tokenizer), e.g. the converter's output"
        )
    if not (path / CONFIG_FILE).is_file():
        raise EvalError(f"{model_dir}: no {CONFIG_FILE}; not a Hugging Face model directory")
    return path


def load_reward_model(model_dir: str | os.PathLike, device: str, dtype):
    """``(model, tokenizer)`` from a local Hugging Face directory; the model must be a
    sequence classifier with a single score (num_labels == 1) and a ``score`` head. The
    tokenizer is read as saved (:func:`rmeval.tokenizer.load_tokenizer`), as transformers
    4.x reads it."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as exc:
        raise EvalError(
            f"{model_dir}/{CONFIG_FILE}: cannot read the model config: {_first(exc)}"
        ) from exc
    if config.num_labels != 1:
        raise EvalError(
            f"{model_dir}: the model's head has num_labels={config.num_labels}; a reward model "
            "has a single score (num_labels=1)"
        )
    # tokenizer.json alone leaves eos, bos and pad undefined (a folder with only a
    # sentencepiece tokenizer.model is rebuilt by the loader; one with neither says so there)
    if (model_dir / TOKENIZER_JSON).is_file() and not (model_dir / TOKENIZER_CONFIG).is_file():
        raise EvalError(
            f"{model_dir}: no {TOKENIZER_CONFIG} (it names the eos, bos and pad tokens the "
            "scores depend on); save the tokenizer next to the model, e.g. `rmeval convert "
            "--tokenizer ...`"
        )
    try:
        tokenizer, _ = load_tokenizer(model_dir, model_dir)
    except CheckpointError as exc:  # names the folder and what to pass instead
        raise EvalError(str(exc)) from exc
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="sdpa"
        )
    except Exception as exc:
        raise EvalError(f"{model_dir}: cannot load the model: {_first(exc)}") from exc
    if not isinstance(getattr(model, "score", None), torch.nn.Module):
        raise EvalError(
            f"{model_dir}: {type(model).__name__} has no `score` head; expected a causal-LM "
            "sequence classifier such as LlamaForSequenceClassification"
        )
    model.to(device).eval()
    return model, tokenizer


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def plan_batches(lengths: Sequence[int], max_tokens: int, slack: float = 0.03) -> list[list[int]]:
    """Indices grouped into batches: longest first; a batch of ``k`` texts padded to its
    longest ``L`` takes the next text only if ``(k+1)·L <= max_tokens`` and the padded size
    stays within ``1 + slack`` of its real tokens. A text longer than the budget gets a
    batch of its own."""
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = real = 0
    for i in order:
        n = lengths[i]
        if cur:
            padded = (len(cur) + 1) * longest
            if padded <= max_tokens and padded <= (real + n) * (1.0 + slack):
                cur.append(i)
                real += n
                continue
            batches.append(cur)
        cur, longest, real = [i], n, n
    if cur:
        batches.append(cur)
    return batches


# Decoder layers whose forward is exactly h + attn(norm1(h)), then h + mlp(norm2(h)), with
# full causal attention (no sliding window) and rotary applied to q and k.
_PLAIN_DECODER_LAYERS = frozenset({"LlamaDecoderLayer"})


def _last_layer_shortcut_supported(model) -> bool:
    base = model.base_model
    layers = getattr(base, "layers", None)
    if not layers or not hasattr(base, "norm"):
        return False
    last = layers[-1]
    attn = getattr(last, "self_attn", None)
    return (
        type(last).__name__ in _PLAIN_DECODER_LAYERS
        and all(hasattr(last, a) for a in ("input_layernorm", "post_attention_layernorm", "mlp"))
        and all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))
    )


def _shortcut_layer(layer, last, key_mask):
    """A stand-in for the model's last decoder layer while scoring. Only the token whose
    reward is read (``last``: one row index per sequence, the last real token) needs the
    layer's output, so the query, the attention, ``o_proj`` and the MLP run for that one
    position; keys and values still cover every real position (``key_mask``: the 2-D
    padding mask; every real token is at or before ``last``, so it is also the causal
    mask). The output has one position per sequence; the final norm and the score head
    apply to it unchanged. Rotary and GQA use transformers' own functions."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn

    class LastTokenLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = layer
            if hasattr(layer, "attention_type"):  # read by models that mix attention types
                self.attention_type = layer.attention_type

        def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
            b, n, _ = hidden_states.shape
            rows = torch.arange(b, device=hidden_states.device)
            h = layer.input_layernorm(hidden_states)
            k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            q = attn.q_proj(h[rows, last]).view(b, 1, -1, attn.head_dim).transpose(1, 2)
            cos, sin = position_embeddings
            k, _ = apply_rotary_pos_emb(k, k, cos, sin)
            q, _ = apply_rotary_pos_emb(q, q, cos[rows, last][:, None], sin[rows, last][:, None])
            groups = q.shape[1] // k.shape[1]
            out = torch.nn.functional.scaled_dot_product_attention(
                q,
                repeat_kv(k, groups),
                repeat_kv(v, groups),
                attn_mask=key_mask[:, None, None, :],
                scale=attn.scaling,
            )
            out = attn.o_proj(out.transpose(1, 2).reshape(b, 1, -1))
            picked = hidden_states[rows, last].unsqueeze(1) + out
            return picked + layer.mlp(layer.post_attention_layernorm(picked))

    return LastTokenLayer()


def _forward_last_hidden(model, ids, mask, positions, last, shortcut: bool):
    """The final-norm hidden state at ``last`` of every row: (batch, hidden)."""
    import torch

    base = model.base_model
    if not shortcut:
        out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        rows = torch.arange(ids.shape[0], device=ids.device)
        return out.last_hidden_state[rows, last]
    original = base.layers[-1]
    base.layers[-1] = _shortcut_layer(original, last, mask.bool())
    try:
        out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    finally:
        base.layers[-1] = original
    return out.last_hidden_state[:, 0]


def _shortcut_agrees(model, device: str) -> bool:
    """Check the last-layer shortcut against the full forward on a small padded batch."""
    import torch

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (4, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding
    mask[2, 9:] = 0
    mask[3, :7] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    last = (mask * torch.arange(ids.shape[1])).argmax(-1)
    ids, mask, positions, last = (t.to(device) for t in (ids, mask, positions, last))
    with torch.inference_mode():
        full = _forward_last_hidden(model, ids, mask, positions, last, False).float()
        try:
            fast = _forward_last_hidden(model, ids, mask, positions, last, True).float()
        except Exception as exc:  # a transformers version whose layer internals differ
            log.warning("last-layer shortcut unavailable (%s); using the full forward", _first(exc))
            return False
    tol = 1e-4 if model.dtype == torch.float32 else 2e-2
    ok = bool(torch.allclose(full, fast, rtol=tol, atol=tol))
    if not ok:
        log.warning("last-layer shortcut disagrees with the full forward; using the full forward")
    return ok


def score_batches(
    model,
    seqs: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: str,
    padding_side: str = "right",
    progress=None,
    shortcut: bool | None = None,
) -> tuple[list[float], int]:
    """The reward of every sequence (float, in input order), computed batch by batch; and
    the number of padded positions (real + pad) processed.

    ``shortcut``: run the last decoder layer only for the last real token (``None``:
    when the architecture is a plain pre-norm decoder and a probe batch agrees with the
    full forward)."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if shortcut is None:
        shortcut = _last_layer_shortcut_supported(model) and _shortcut_agrees(model, device)
    elif shortcut and not _last_layer_shortcut_supported(model):
        raise ValueError(f"{type(model).__name__}: the last-layer shortcut is not supported")
    head = model.score
    rewards = [math.nan] * len(seqs)
    padded_total = 0
    with torch.inference_mode():
        for batch in batches:
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                s = torch.as_tensor(seqs[i], dtype=torch.long)
                if padding_side == "right":
                    ids[row, : len(s)] = s
                    mask[row, : len(s)] = 1
                else:
                    ids[row, width - len(s) :] = s
                    mask[row, width - len(s) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            last = (mask * torch.arange(width)).argmax(-1)  # index of the last real token
            ids, mask, positions, last = (t.to(device) for t in (ids, mask, positions, last))
            picked = _forward_last_hidden(model, ids, mask, positions, last, shortcut)
            scores = head(picked).float().reshape(len(batch), -1)[:, 0].cpu().tolist()
            for i, r in zip(batch, scores, strict=True):
                rewards[i] = r
            padded_total += len(batch) * width
            if progress is not None:
                progress(batch)
    return rewards, padded_total


# --------------------------------------------------------------------------- evaluate


def _check_outputs(out: str | None, save_scores: str | None, overwrite: bool) -> bool:
    """Before any scoring: repair what an interrupted write of the outputs left, refuse
    outputs that exist (unless ``overwrite``) and probe that both can be written. The
    scores and the metrics are one unit (:func:`rmeval.storage.write_together`) whose
    metrics file is written last, so scores without their metrics are what an interrupted
    run left: they are replaced, not refused. Returns whether the scores file may be
    replaced."""
    if out == save_scores and out:
        raise UsageError(f"--out and --save-scores are the same file: {out}")
    storage.recover_together([uri for uri in (save_scores, out) if uri])  # a killed write
    if out and not overwrite and storage.exists(out):
        raise AlreadyExistsError(out, "metrics file already exists")
    replace_scores = overwrite
    if save_scores and not overwrite and storage.exists(save_scores):
        if not out:
            raise AlreadyExistsError(save_scores, "scores file already exists")
        log.info("%s: scores without %s (an interrupted run); replacing them", save_scores, out)
        replace_scores = True
    for uri in (save_scores, out):
        if uri:
            storage.check_writable(uri)
    return replace_scores


def _check_finite(rewards: Sequence[float], text_subsets: Sequence[str], model_dir: str) -> None:
    bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
    if bad:
        subsets = sorted({text_subsets[i] for i in bad})
        shown = ", ".join(subsets[:5]) + (
            f" and {len(subsets) - 5} more" if len(subsets) > 5 else ""
        )
        raise EvalError(
            f"{model_dir}: {len(bad)} of {len(rewards)} rewards are NaN or Inf (subsets: "
            f"{shown}); the model's weights are broken or --dtype overflows; nothing written"
        )


@dataclass
class _Scored:
    rewards: list[float]
    seqs: list[list[int]]
    label: str
    n_truncated: int
    n_batches: int
    padded: int
    seconds: float
    device: str
    dtype: str
    attention: str  # the attention implementation the model ran with (e.g. sdpa)


def _score_items(
    model_dir: str,
    items: Sequence[Pair | Row],
    *,
    scoring_format: str,
    chat_template: str | None,
    max_length: int,
    max_tokens: int,
    dev: str,
    torch_dtype,
    progress: bool,
    desc: str,
) -> _Scored:
    """Load the model, format every text of ``items`` (two per pair, one per completion of a
    RewardBench 2 row), score them length-packed, and return the rewards in text order."""
    from tqdm.auto import tqdm

    with contextlib.ExitStack() as stack:
        local = _local_model_dir(model_dir, stack)
        model, tokenizer = load_reward_model(local, dev, torch_dtype)
        attention = str(getattr(model.config, "_attn_implementation", "") or "")
        t0 = time.perf_counter()
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        if limit < max_length:  # a model with learned positions cannot read further
            log.info("--max-length %d is above the model's %d positions", max_length, limit)
        encoded = formats.encode(
            tokenizer,
            items,
            scoring_format,
            min(max_length, limit),
            tokenizer_class=declared_class(local),
            model_pad_token_id=getattr(model.config, "pad_token_id", None),
            chat_template=chat_template,
        )
        seqs, n_truncated = encoded.seqs, encoded.n_truncated
        if n_truncated:
            log.info(
                "%d of %d texts truncated from the left to %d tokens",
                n_truncated,
                len(seqs),
                max_length,
            )
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # any id works: padded positions are masked and never read
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        batches = plan_batches([len(s) for s in seqs], max_tokens, slack=PAD_SLACK[dev])
        owner = [k for k, it in enumerate(items) for _ in range(_n_texts(it))]
        left = [_n_texts(it) for it in items]
        bar = tqdm(total=len(items), unit="row", desc=desc, disable=None if progress else True)

        def advance(batch: Sequence[int]) -> None:
            finished = 0
            for i in batch:
                left[owner[i]] -= 1
                finished += left[owner[i]] == 0
            if finished:
                bar.update(finished)

        try:
            rewards, padded = score_batches(
                model, seqs, batches, pad_id=pad_id, device=dev, progress=advance
            )
        finally:
            bar.close()
    return _Scored(
        rewards=rewards,
        seqs=seqs,
        label=encoded.label,
        n_truncated=n_truncated,
        n_batches=len(batches),
        padded=padded,
        seconds=time.perf_counter() - t0,
        device=dev,
        dtype=str(torch_dtype).removeprefix("torch."),
        attention=attention,
    )


def _n_texts(item: Pair | Row) -> int:
    return len(item.completions) if isinstance(item, Row) else 2


def evaluate(
    model_dir: str,
    dataset: str,
    out: str | None = None,
    *,
    benchmark: str = DEFAULT_BENCHMARK,
    subsets: Sequence[str] | None = None,
    scoring_format: str = formats.DEFAULT_SCORING,
    chat_template: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    device: str = "auto",
    dtype: str = "auto",
    save_scores: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> EvalResult:
    """Score the reward model in ``model_dir`` (local or gs://) on ``dataset`` of
    ``benchmark`` (``rewardbench`` pairs or ``rewardbench2`` rows); write ``metrics.json``
    to ``out`` and per-text rewards to ``save_scores`` if given (local or gs://, atomic,
    never clobbering unless ``overwrite``). ``model_name`` is what metrics.json records as
    ``model`` (default: ``model_dir`` as given, like run_rm). ``scoring_format``: a format
    of :mod:`rmeval.rewardbench.formats` (``--scoring``; this module's ``scoring`` is
    RewardBench's section arithmetic); ``chat_template`` (``run_rm`` only): ``"tulu"``,
    ``"tokenizer"`` or a Jinja file instead of run_rm's choice."""
    model_dir = os.fspath(model_dir)
    if benchmark not in BENCHMARKS:
        raise UsageError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    formats.check_options(scoring_format, chat_template)
    replace_scores = _check_outputs(out, save_scores, overwrite)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    knobs = dict(
        scoring_format=scoring_format,
        chat_template=chat_template,
        max_length=max_length,
        max_tokens=max_tokens,
        dev=dev,
        torch_dtype=torch_dtype,
        progress=progress,
    )
    if benchmark == V2:
        if dataset == HUB_DATASET:  # the option's default names v1's hub dataset
            dataset = HUB_DATASET_V2
        rows = load_rows_v2(dataset, subsets)  # before any model is loaded
        scored = _score_items(model_dir, rows, desc="rewardbench2", **knobs)
        _check_finite(scored.rewards, [r.subset for r in rows for _ in r.completions], model_dir)
        metrics, score_rows = _roll_up_v2(rows, scored, model_name or model_dir)
        v2_overall = scoring_v2.overall(metrics)
        sections: dict[str, float | None] = {}
        unknown = sorted(s for s in {r.subset for r in rows} if s not in scoring_v2.SUBSETS)
        n_items = len(rows)
    else:
        pairs = load_pairs(dataset, subsets)
        scored = _score_items(model_dir, pairs, desc="rewardbench", **knobs)
        _check_finite(scored.rewards, [p.subset for p in pairs for _ in (0, 1)], model_dir)
        metrics, score_rows = _roll_up_v1(pairs, scored, model_name or model_dir)
        summary = scoring.summarize(scoring.subset_accuracies(metrics))
        v2_overall = summary[scoring.OVERALL]
        sections = {k: v for k, v in summary.items() if k != scoring.OVERALL}
        unknown = scoring.unknown_subsets({p.subset for p in pairs})
        n_items = len(pairs)
    real = sum(len(s) for s in scored.seqs)
    result = EvalResult(
        metrics=metrics,
        sections=sections,
        overall=v2_overall,
        n_pairs=n_items,
        seconds=scored.seconds,
        padding_ratio=scored.padded / real if real else 1.0,
        chat_template=scored.label,
        scoring=scoring_format,
        device=scored.device,
        dtype=scored.dtype,
        n_batches=scored.n_batches,
        n_truncated=scored.n_truncated,
        unknown_subsets=unknown,
        benchmark=benchmark,
        attention=scored.attention,
    )
    files = []  # one unit, metrics last: its presence means the scores beside it are whole
    if save_scores:
        text = "".join(json.dumps(r) + "\n" for r in score_rows)
        files.append((save_scores, text.encode("utf-8"), replace_scores))
    if out:
        files.append((out, (json.dumps(metrics, indent=2) + "\n").encode("utf-8"), overwrite))
    storage.write_together(files)
    return result


def _meta(model: str, label: str) -> dict:
    return {"model": model, "model_type": MODEL_TYPE, "chat_template": label}


def _roll_up_v1(pairs: Sequence[Pair], scored: _Scored, model: str) -> tuple[dict, list[dict]]:
    rewards, seqs = scored.rewards, scored.seqs
    per_subset: dict[str, list[int]] = {}
    score_rows = []
    for k, p in enumerate(pairs):
        chosen, rejected = rewards[2 * k], rewards[2 * k + 1]
        correct = chosen > rejected  # a tie is wrong
        per_subset.setdefault(p.subset, []).append(int(correct))
        score_rows.append(
            {
                "id": p.id,
                "subset": p.subset,
                "chosen_reward": chosen,
                "rejected_reward": rejected,
                "correct": bool(correct),
                "chosen_tokens": len(seqs[2 * k]),
                "rejected_tokens": len(seqs[2 * k + 1]),
            }
        )
    ordered = [s for s in scoring.SUBSETS if s in per_subset] + sorted(
        s for s in per_subset if s not in scoring.EXAMPLE_COUNTS
    )
    metrics = _meta(model, scored.label)
    for s in ordered:
        metrics[s] = sum(per_subset[s]) / len(per_subset[s])
    return metrics, score_rows


def _roll_up_v2(rows: Sequence[Row], scored: _Scored, model: str) -> tuple[dict, list[dict]]:
    """run_v2's roll-up: per row its completions' scores, per subset best-of-n (Ties: its
    formula). The scores file has one line per completion."""
    by_subset: dict[str, list[tuple[str, int, list[float]]]] = {}
    score_rows = []
    i = 0
    for r in rows:
        n = len(r.completions)
        scores = scored.rewards[i : i + n]
        for j in range(n):
            score_rows.append(
                {
                    "id": r.id,
                    "subset": r.subset,
                    "completion": j,
                    "correct": j < r.num_correct,
                    "reward": scores[j],
                    "tokens": len(scored.seqs[i + j]),
                }
            )
        by_subset.setdefault(r.subset, []).append((r.id, r.num_correct, scores))
        i += n
    ordered = [s for s in scoring_v2.SUBSETS if s in by_subset] + sorted(
        s for s in by_subset if s not in scoring_v2.SUBSETS
    )
    metrics = _meta(model, scored.label)
    for s in ordered:
        metrics[s] = scoring_v2.subset_score(s, by_subset[s])
    return metrics, score_rows


def format_summary(result: EvalResult) -> str:
    """The closing summary: per-subset accuracies, the four sections and Overall."""

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    v2 = result.benchmark == V2
    unit = "rows" if v2 else "pairs"
    known = scoring_v2.SUBSETS if v2 else scoring.EXAMPLE_COUNTS
    lines = [
        f"{result.n_pairs} {unit} in {result.seconds:.1f} s "
        f"({result.n_pairs / max(result.seconds, 1e-9):.1f} {unit}/s), "
        f"padding {result.padding_ratio:.3f}x, {result.n_batches} batches, "
        f"{result.device} {result.dtype}, scoring {result.scoring} "
        f"(chat template {result.chat_template})",
    ]
    for k, v in result.metrics.items():
        if k in scoring.META_KEYS:
            continue
        note = "" if k in known else f"  (not a RewardBench{' 2' if v2 else ''} subset)"
        lines.append(f"  {k:<24} {pct(v)}{note}")
    for name, v in result.sections.items():
        lines.append(f"{name:<26} {pct(v)}")
    overall_name = f"{scoring_v2.OVERALL} (RewardBench 2)" if v2 else scoring.OVERALL
    lines.append(f"{overall_name:<26} {pct(result.overall)}")
    return "\n".join(lines)
