"""Verify a converted model against a JAX forward of the EasyLM model from the raw checkpoint.

The reference re-implements EasyLM's LLaMA forward in ``jax.numpy`` from the checkpoint's
own tensors (flax layout, no conversion): RMSNorm, adjacent-pair rotary embeddings (with
Llama-3.1 frequency scaling when configured), grouped-query attention with each kv head
repeated for consecutive query heads, SwiGLU, and the reward read through ``score`` at the
last real token by attention mask (or ``lm_head`` logits for a causal LM). The Hugging Face
model is loaded from the converted directory with transformers and run on the same
right-padded batch of sequences of different lengths, padded with its ``pad_token_id``.

The architecture hyper-parameters (heads, rope, eps) come from the converted config.json:
the checkpoint does not record them, so this checks that the HF weights and HF's forward
reproduce EasyLM's forward *for that configuration*.

Tolerance (relative = max |hf - ref| / max |ref|, both in float32):
- the HF weights hold the checkpoint's values exactly (same dtype, or widened): 1e-4;
- the conversion rounded weights (e.g. fp32 checkpoint -> bf16/fp16 output): the bf16
  rounding bound we state, 3e-2 * sqrt(max(n_layers, 4) / 4): about 8x bf16's unit
  roundoff (2**-8) for a 4-layer model, growing like a random walk over the layers
  (measured 0.5-1.6 % on 4-layer random models). EasyLM saves bf16 by default and a bf16
  checkpoint converted to bf16 or fp32 keeps its weights exactly, so 1e-4 applies.

jax is imported lazily; the converter itself never imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from rmeval import storage
from rmeval.checkpoints import easylm, llama
from rmeval.errors import CheckpointError, VerifyError

log = logging.getLogger(__name__)

EXACT_TOLERANCE = 1e-4
ROUNDED_TOLERANCE = 3e-2
DEFAULT_LENGTHS = (3, 9, 14, 17)
_WIDTH = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass
class VerifyResult:
    max_abs: float
    max_rel: float
    tolerance: float
    ok: bool
    kind: str = "reward"
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    reference: list | None = None  # reference outputs (rewards; for causal: last-token logits)
    hf: list | None = None

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"verify {verdict}: {self.kind} outputs on {len(self.lengths)} padded sequences "
            f"(lengths {', '.join(map(str, self.lengths))}): max abs diff {self.max_abs:.3g}, "
            f"max rel diff {self.max_rel:.3g} (tolerance {self.tolerance:g})"
        )


# --------------------------------------------------------------------------- JAX forward


def _rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif scaling:
        raise VerifyError(f"rope scaling {scaling!r} is not supported by the reference forward")
    return inv.astype(np.float32)


def easylm_forward(params: dict, config: dict, input_ids: np.ndarray, attention_mask: np.ndarray):
    """EasyLM's LLaMA forward in jax.numpy. ``params``: '/'-joined keys -> arrays (flax
    layout). Returns rewards (B,) for a reward model or logits (B, T, V) for a causal LM."""
    import jax
    import jax.numpy as jnp

    d = config["hidden_size"]
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // n_heads
    eps = float(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or (
        rope if rope.get("rope_type", "default") != "default" else None
    )
    inv_freq = _rope_inv_freq(hd, theta, scaling)
    n_layers = config["num_hidden_layers"]
    reward = "score/kernel" in params

    def rms(x, w):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * w

    def forward(p, input_ids, attention_mask):
        B, T = input_ids.shape
        mask = attention_mask.astype(bool)
        positions = jnp.clip(jnp.cumsum(mask, axis=-1) - 1, 0)  # EasyLM's default position ids
        ang = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (B, T, hd/2)
        cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]

        def rotary(x):  # adjacent pairs (2j, 2j+1) rotate as complex numbers
            xr = x.reshape(*x.shape[:-1], hd // 2, 2)
            a, b = xr[..., 0], xr[..., 1]
            return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)

        causal = jnp.tril(jnp.ones((T, T), dtype=bool))
        allowed = causal[None, None] & mask[:, None, None, :]
        x = p["transformer/wte/embedding"][input_ids]
        for i in range(n_layers):
            pre = f"transformer/h/{i}/"
            h = rms(x, p[pre + "attention_norm/kernel"])
            q = (h @ p[pre + "attention/wq/kernel"]).reshape(B, T, n_heads, hd)
            k = (h @ p[pre + "attention/wk/kernel"]).reshape(B, T, n_kv, hd)
            v = (h @ p[pre + "attention/wv/kernel"]).reshape(B, T, n_kv, hd)
            q, k = rotary(q), rotary(k)
            k = jnp.repeat(k, n_heads // n_kv, axis=2)  # each kv head serves consecutive q heads
            v = jnp.repeat(v, n_heads // n_kv, axis=2)
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
            s = jnp.where(allowed, s, jnp.finfo(jnp.float32).min)
            a = jax.nn.softmax(s, axis=-1)
            o = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, T, n_heads * hd)
            x = x + o @ p[pre + "attention/wo/kernel"]
            h = rms(x, p[pre + "ffn_norm/kernel"])
            ff = jax.nn.silu(h @ p[pre + "feed_forward/w1/kernel"]) * (
                h @ p[pre + "feed_forward/w3/kernel"]
            )
            x = x + ff @ p[pre + "feed_forward/w2/kernel"]
        x = rms(x, p["transformer/ln_f/kernel"])
        if reward:  # the score at the last real token, by attention mask
            last = jnp.sum(mask, axis=-1) - 1
            return (x[jnp.arange(B), last] @ p["score/kernel"])[:, 0]
        return x @ p["lm_head/kernel"]

    p = {k: jnp.asarray(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    with jax.default_matmul_precision("highest"):
        out = jax.jit(forward)(p, jnp.asarray(input_ids), jnp.asarray(attention_mask))
    return np.asarray(out)


# --------------------------------------------------------------------------- verify


def _batch(vocab: int, lengths, pad_id: int, seed: int):
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths):
        choices = rng.integers(1, vocab, size=n)
        choices[choices == pad_id] = 1 if pad_id != 1 else 2
        ids[b, :n] = choices
        mask[b, :n] = 1
    return ids, mask


def _hf_outputs(hf_dir: str, kind: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    cls = (
        transformers.AutoModelForSequenceClassification
        if kind == "reward"
        else transformers.AutoModelForCausalLM
    )
    model = cls.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    out = out.float().numpy()
    return out[:, 0] if kind == "reward" else out


def verify(
    checkpoint: str,
    hf_dir: str,
    *,
    lengths: tuple[int, ...] = DEFAULT_LENGTHS,
    seed: int = 0,
    tolerance: float | None = None,
    raise_on_fail: bool = False,
) -> VerifyResult:
    """Compare the HF model in ``hf_dir`` with the EasyLM forward of ``checkpoint``.

    ``hf_dir`` may be gs:// (downloaded to a temporary directory first). Raises
    :class:`VerifyError` above tolerance when ``raise_on_fail``."""
    checkpoint, hf_dir = os.fspath(checkpoint), os.fspath(hf_dir)
    with storage.owned_tempdir("rmeval-verify-") as tmp:
        local = hf_dir
        if storage.is_gcs(hf_dir):
            local = str(storage.download_tree(hf_dir, tmp, marker=llama.CONFIG_FILE))
        cfg_path = os.path.join(local, llama.CONFIG_FILE)
        try:
            with open(cfg_path) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise VerifyError(
                f"{hf_dir}: no {llama.CONFIG_FILE}; not a converted model directory"
            ) from None
        params = easylm.load_params(checkpoint)
        _check_finite(checkpoint, params)
        stored = {v.dtype.name for v in params.values()}  # as stored: load_params keeps dtypes
        kind = "reward" if "score/kernel" in params else "causal"
        if kind == "causal" and "lm_head/kernel" not in params:
            raise CheckpointError(f"{checkpoint}: neither score/kernel nor lm_head/kernel found")
        pad_id = config.get("pad_token_id")
        pad_id = 0 if pad_id is None else int(pad_id)
        ids, mask = _batch(config["vocab_size"], lengths, pad_id, seed)
        ref = easylm_forward(params, config, ids, mask)
        hf = _hf_outputs(local, kind, ids, mask)
    if kind == "causal":  # compare logits at real tokens only
        sel = mask.astype(bool)
        ref_cmp, hf_cmp = ref[sel], hf[sel]
    else:
        ref_cmp, hf_cmp = ref, hf
    max_abs = float(np.max(np.abs(hf_cmp - ref_cmp)))
    max_rel = max_abs / max(float(np.max(np.abs(ref_cmp))), 1e-12)
    if tolerance is None:
        out_dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        exact = all(
            s == out_dtype
            or (out_dtype in ("float32", "float64") and _WIDTH[s] < _WIDTH[out_dtype])
            for s in stored
        )
        layers = int(config.get("num_hidden_layers", 4))
        tolerance = EXACT_TOLERANCE if exact else ROUNDED_TOLERANCE * math.sqrt(max(layers, 4) / 4)
    ok = bool(max_rel <= tolerance)
    result = VerifyResult(
        max_abs,
        max_rel,
        tolerance,
        ok,
        kind,
        tuple(lengths),
        _summary_values(ref, mask, kind),
        _summary_values(hf, mask, kind),
    )
    log.debug("%s", result.summary())
    if not ok and raise_on_fail:
        raise VerifyError(
            f"{hf_dir}: does not reproduce {checkpoint}: max relative difference "
            f"{max_rel:.3g} > tolerance {tolerance:g} (max abs {max_abs:.3g}); check "
            "--model-size/--num-heads/--rope-theta/--rope-scaling"
        )
    return result


def _check_finite(checkpoint: str, params: dict[str, np.ndarray]) -> None:
    """A checkpoint with NaN or Inf weights cannot be reproduced by any --model-size or
    --num-heads: say what is wrong with it instead of suggesting those."""
    for name, value in params.items():
        if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
            continue
        bad = int(np.count_nonzero(~np.isfinite(value.astype(np.float32))))
        if bad:
            raise CheckpointError(
                f"{checkpoint}: the checkpoint holds non-finite values: tensor {name} has "
                f"{bad} NaN or Inf of {value.size}; the training run diverged or the file is "
                "corrupted (no conversion can reproduce it)"
            )


def _summary_values(out: np.ndarray, mask: np.ndarray, kind: str) -> list:
    if kind == "reward":
        return [float(v) for v in out]
    last = mask.sum(-1) - 1
    return [out[b, last[b]].tolist()[:4] for b in range(out.shape[0])]
