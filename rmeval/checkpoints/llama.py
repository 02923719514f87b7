"""EasyLM LLaMA parameter tree -> Hugging Face Llama: name table, transforms, config.

The mapping is declarative (:data:`GLOBAL_TENSORS`, :data:`LAYER_TENSORS`,
:data:`HEAD_TENSORS`): EasyLM key, HF key, transform. A transform is one small object that
knows its output shape and, for the converter's tiled writer, the runs of source columns
that become its output rows (:class:`Transform`, :class:`Transpose`, :class:`Rotary`):

- :data:`COPY`: the tensor as stored (embedding, norms);
- :data:`TRANSPOSE`: flax Dense kernels are (in, out), torch Linear weights are (out, in);
- :data:`ROTARY_Q` / :data:`ROTARY_K`: transpose, then reorder the output rows of each
  head from EasyLM's adjacent-pair rotary layout to HF's half-split layout (rows viewed as
  (heads, head_dim/2, 2) -> (heads, 2, head_dim/2)), with n_heads for q, n_kv_heads for k.

:func:`plan` checks the checkpoint against the configuration (missing tensors, unexpected
tensors, contradicting shapes) before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

from rmeval.checkpoints.easylm import _FLOAT_DTYPES, CheckpointIndex, TensorInfo
from rmeval.errors import CheckpointError, UsageError

LLAMA3_VOCAB = 128256
LLAMA3_PAD_TOKEN_ID = 128255  # a reserved token, as the seed uses
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_SCALINGS = {"llama3": LLAMA3_SCALING}
EASYLM_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class LlamaSpec:
    """Everything config.json and the reference forward need."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = EASYLM_ROPE_THETA
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    kind: str = "reward"  # "reward" (score head) | "causal" (lm_head)
    bos_token_id: int = 1
    eos_token_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Shapes and rope settings of the EasyLM presets (facts: shared/reference/easylm-format.md).
PRESETS: dict[str, LlamaSpec] = {
    "7b": LlamaSpec(4096, 11008, 32, 32, 32, 32000, 1e-6),
    "13b": LlamaSpec(5120, 13824, 40, 40, 40, 32000, 1e-6),
    "70b": LlamaSpec(8192, 28672, 80, 64, 8, 32000, 1e-5),
    "8b3": LlamaSpec(4096, 14336, 32, 32, 8, LLAMA3_VOCAB, 1e-5, 500000.0, None, 8192),
    "70b3": LlamaSpec(8192, 28672, 80, 64, 8, LLAMA3_VOCAB, 1e-5, 500000.0, None, 8192),
    "8b31": LlamaSpec(4096, 14336, 32, 32, 8, LLAMA3_VOCAB, 1e-5, 500000.0, LLAMA3_SCALING, 131072),
    "70b31": LlamaSpec(
        8192, 28672, 80, 64, 8, LLAMA3_VOCAB, 1e-5, 500000.0, LLAMA3_SCALING, 131072
    ),
}
LLAMA3_BOS, LLAMA3_EOS = 128000, 128001

# (dst_row, src_col, count, step): output rows dst_row + j are source columns src_col + j*step
Segment = tuple[int, int, int, int]


@dataclass(frozen=True)
class Transform:
    """How a stored tensor becomes its HF tensor. This base copies it as stored."""

    name: str = "copy"
    transposes: ClassVar[bool] = False  # False: written as stored (cast at most)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def heads(self, spec: LlamaSpec) -> int:
        """The attention heads whose rows it reorders (0: none)."""
        return 0


@dataclass(frozen=True)
class Transpose(Transform):
    """A flax Dense kernel (in, out) as a torch Linear weight (out, in)."""

    name: str = "transpose"
    transposes: ClassVar[bool] = True

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape))

    def row_segments(self, rows: int, heads: int) -> list[Segment]:
        """The output rows, each a column of the kernel: one run of all of them."""
        return [(0, 0, rows, 1)]


@dataclass(frozen=True)
class Rotary(Transpose):
    """Transpose, then each head's rows from adjacent pairs (EasyLM) to halves (HF): the
    first half of a head is its even source columns, the second half its odd ones."""

    name: str = "rotary"
    heads_of: str = "num_attention_heads"  # the LlamaSpec field that counts its heads

    def heads(self, spec: LlamaSpec) -> int:
        return getattr(spec, self.heads_of)

    def row_segments(self, rows: int, heads: int) -> list[Segment]:
        head_dim = rows // heads
        half = head_dim // 2
        return [
            (h * head_dim + a * half, h * head_dim + a, half, 2)
            for h in range(heads)
            for a in range(2)
        ]


COPY, TRANSPOSE = Transform(), Transpose()
ROTARY_Q = Rotary("rotary_q", "num_attention_heads")
ROTARY_K = Rotary("rotary_k", "num_key_value_heads")

GLOBAL_TENSORS = [
    ("transformer/wte/embedding", "model.embed_tokens.weight", COPY),
    ("transformer/ln_f/kernel", "model.norm.weight", COPY),
]
LAYER_TENSORS = [
    ("attention/wq/kernel", "self_attn.q_proj.weight", ROTARY_Q),
    ("attention/wk/kernel", "self_attn.k_proj.weight", ROTARY_K),
    ("attention/wv/kernel", "self_attn.v_proj.weight", TRANSPOSE),
    ("attention/wo/kernel", "self_attn.o_proj.weight", TRANSPOSE),
    ("feed_forward/w1/kernel", "mlp.gate_proj.weight", TRANSPOSE),
    ("feed_forward/w2/kernel", "mlp.down_proj.weight", TRANSPOSE),
    ("feed_forward/w3/kernel", "mlp.up_proj.weight", TRANSPOSE),
    ("attention_norm/kernel", "input_layernorm.weight", COPY),
    ("ffn_norm/kernel", "post_attention_layernorm.weight", COPY),
]
HEAD_TENSORS = {
    "reward": ("score/kernel", "score.weight", TRANSPOSE),
    "causal": ("lm_head/kernel", "lm_head.weight", TRANSPOSE),
}
ARCHITECTURES = {"reward": "LlamaForSequenceClassification", "causal": "LlamaForCausalLM"}
CONFIG_FILE = "config.json"  # hf_config's file: written last, a model folder's completion marker
_LAYER_RE = re.compile(r"^transformer/h/(\d+)/")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where it comes from and how it is transformed."""

    src: TensorInfo
    hf_name: str
    transform: Transform
    out_shape: tuple[int, ...]
    heads: int = 0  # the heads a rotary transform reorders

    def row_segments(self) -> list[Segment]:
        """The transposing writer's runs (see :class:`Transpose`)."""
        assert isinstance(self.transform, Transpose), self.transform
        return self.transform.row_segments(self.out_shape[0], self.heads)


def easylm_shapes(spec: LlamaSpec) -> dict[str, tuple[int, ...]]:
    """Expected EasyLM key -> shape for a spec."""
    d, hd = spec.hidden_size, spec.head_dim
    q, kv, inter = (
        spec.num_attention_heads * hd,
        spec.num_key_value_heads * hd,
        spec.intermediate_size,
    )
    per_layer = {
        "attention/wq/kernel": (d, q),
        "attention/wk/kernel": (d, kv),
        "attention/wv/kernel": (d, kv),
        "attention/wo/kernel": (q, d),
        "feed_forward/w1/kernel": (d, inter),
        "feed_forward/w2/kernel": (inter, d),
        "feed_forward/w3/kernel": (d, inter),
        "attention_norm/kernel": (d,),
        "ffn_norm/kernel": (d,),
    }
    out = {"transformer/wte/embedding": (spec.vocab_size, d), "transformer/ln_f/kernel": (d,)}
    for i in range(spec.num_hidden_layers):
        for k, s in per_layer.items():
            out[f"transformer/h/{i}/{k}"] = s
    if spec.kind == "reward":
        out["score/kernel"] = (d, 1)
    else:
        out["lm_head/kernel"] = (d, spec.vocab_size)
    return out


def _shape(index: CheckpointIndex, name: str) -> tuple[int, ...]:
    info = index.tensors.get(name)
    if info is None:
        raise CheckpointError(
            f"{index.uri}: missing tensor {name}; not a complete EasyLM LLaMA checkpoint"
        )
    return info.shape


def _check_params_file(index: CheckpointIndex) -> None:
    tops = {info.key[0] for info in index.tensors.values()}
    known = {"transformer", "score", "lm_head"}
    if tops - known:
        first = next(i for i in index.tensors.values() if i.key[0] not in known)
        hint = (
            "it looks like a streaming_train_state file; convert the streaming_params file instead"
            if tops & {"params", "opt_state", "step"}
            else "not the parameters of an EasyLM LLaMA model"
        )
        raise CheckpointError(
            f"{index.uri}: byte {first.entry_offset}: unexpected top-level key "
            f"{first.key[0]!r} (tensor {first.name}): {hint}"
        )


def detect_kind(index: CheckpointIndex) -> str:
    has_score = "score/kernel" in index.tensors
    has_lm = "lm_head/kernel" in index.tensors
    if has_score and has_lm:
        raise CheckpointError(
            f"{index.uri}: has both score/kernel and lm_head/kernel; expected a reward model "
            "(score) or a causal LM (lm_head), not both"
        )
    if not has_score and not has_lm:
        raise CheckpointError(
            f"{index.uri}: missing tensor score/kernel (reward model) or lm_head/kernel "
            "(causal LM); not a complete EasyLM LLaMA checkpoint"
        )
    return "reward" if has_score else "causal"


def infer_spec(
    index: CheckpointIndex,
    model_size: str = "auto",
    num_heads: int | None = None,
    rope_theta: float | None = None,
    rope_scaling: str | None = None,
) -> tuple[LlamaSpec, list[str]]:
    """Decide the model configuration from a preset or the tensor shapes plus flags.

    Returns the spec and notes saying what was assumed."""
    _check_params_file(index)
    notes: list[str] = []
    kind = detect_kind(index)
    if rope_scaling is not None and rope_scaling not in ROPE_SCALINGS:
        raise UsageError(
            f"--rope-scaling {rope_scaling!r} is not supported (choose: {', '.join(ROPE_SCALINGS)})"
        )
    if model_size != "auto":
        if model_size not in PRESETS:
            raise UsageError(
                f"--model-size {model_size!r} is unknown (choose auto or one of {', '.join(PRESETS)})"
            )
        spec = replace(PRESETS[model_size], kind=kind)
        if num_heads is not None and num_heads != spec.num_attention_heads:
            raise UsageError(
                f"--num-heads {num_heads} contradicts --model-size {model_size} "
                f"({spec.num_attention_heads} heads); pass one or the other"
            )
    else:
        vocab, dim = _shape(index, "transformer/wte/embedding")
        layer_ids = sorted(
            {int(m.group(1)) for name in index.tensors if (m := _LAYER_RE.match(name))}
        )
        if not layer_ids:
            raise CheckpointError(f"{index.uri}: no transformer/h/<i> layers found")
        if layer_ids != list(range(len(layer_ids))):
            gap = next(i for i in range(len(layer_ids) + 1) if i not in layer_ids)
            raise CheckpointError(
                f"{index.uri}: missing tensor transformer/h/{gap}/... (layers found: "
                f"{layer_ids[0]}..{layer_ids[-1]}, not contiguous from 0)"
            )
        n_layers = len(layer_ids)
        inter = _shape(index, "transformer/h/0/feed_forward/w1/kernel")[-1]
        kv_width = _shape(index, "transformer/h/0/attention/wk/kernel")[-1]
        llama3 = vocab == LLAMA3_VOCAB
        match = next(
            (
                name
                for name, p in PRESETS.items()
                if (p.hidden_size, p.intermediate_size, p.num_hidden_layers, p.vocab_size)
                == (dim, inter, n_layers, vocab)
                and p.num_key_value_heads * p.head_dim == kv_width
                and (p.rope_scaling is not None) == llama3  # Llama-3 shapes -> the 3.1 preset
            ),
            None,
        )
        if num_heads is None and match is None:
            raise UsageError(
                f"{index.uri}: the number of attention heads cannot be read from the tensor "
                f"shapes (hidden size {dim}, {n_layers} layers, intermediate {inter}, vocab "
                f"{vocab} match no preset); pass --model-size ({', '.join(PRESETS)}) or "
                "--num-heads N"
            )
        if num_heads is not None:
            heads = num_heads
        else:
            assert match is not None  # refused just above
            heads = PRESETS[match].num_attention_heads
        if match is not None and num_heads is None:
            notes.append(
                f"auto: tensor shapes match preset {match}; using its {heads} attention heads"
            )
        if heads <= 0 or dim % heads:
            raise UsageError(f"--num-heads {heads} does not divide the hidden size {dim}")
        head_dim = dim // heads
        if kv_width % head_dim:
            raise CheckpointError(
                f"{index.uri}: tensor transformer/h/0/attention/wk/kernel has width {kv_width}, "
                f"not a multiple of head_dim {head_dim} ({heads} heads); check --num-heads"
            )
        kv_heads = kv_width // head_dim
        if heads % kv_heads:
            raise CheckpointError(
                f"{index.uri}: {kv_heads} key/value heads do not divide {heads} query heads; "
                "check --num-heads"
            )
        if llama3:
            base = PRESETS["8b31"] if dim == 4096 else PRESETS["70b31"]
            notes.append(
                f"auto: vocabulary {LLAMA3_VOCAB} -> assuming Llama-3.1 settings (rope_theta "
                "500000, llama3 rope scaling factor 8, rms_norm_eps 1e-5); pass "
                "--model-size 8b3/70b3 for Llama-3.0"
            )
            spec = replace(
                base,
                hidden_size=dim,
                intermediate_size=inter,
                num_hidden_layers=n_layers,
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                kind=kind,
            )
        else:
            eps = PRESETS[match].rms_norm_eps if match else 1e-6
            spec = LlamaSpec(dim, inter, n_layers, heads, kv_heads, vocab, eps, kind=kind)
            if match is None:
                notes.append(
                    f"auto: rope_theta {EASYLM_ROPE_THETA:g} (EasyLM's default), rms_norm_eps "
                    f"{eps:g}; pass --rope-theta to change"
                )
    if rope_theta is not None:
        spec = replace(spec, rope_theta=float(rope_theta))
    if rope_scaling is not None:
        spec = replace(spec, rope_scaling=dict(ROPE_SCALINGS[rope_scaling]))
        if spec.max_position_embeddings < 131072:
            spec = replace(spec, max_position_embeddings=131072)
    if spec.vocab_size == LLAMA3_VOCAB:
        spec = replace(spec, bos_token_id=LLAMA3_BOS, eos_token_id=LLAMA3_EOS)
    return spec, notes


def plan(index: CheckpointIndex, spec: LlamaSpec) -> list[TensorPlan]:
    """Map every checkpoint tensor to its HF tensor, checking names, shapes and dtypes."""
    expected = easylm_shapes(spec)
    for name, shape in expected.items():  # shapes first: a wrong preset says so plainly
        info = index.tensors.get(name)
        if info is None:
            continue
        if info.shape != shape:
            raise CheckpointError(
                f"{index.uri}: byte {info.entry_offset}: tensor {name} has shape "
                f"{list(info.shape)} but the configuration (hidden {spec.hidden_size}, "
                f"{spec.num_attention_heads} heads, {spec.num_key_value_heads} kv heads, "
                f"intermediate {spec.intermediate_size}, vocab {spec.vocab_size}) needs "
                f"{list(shape)}; check --model-size/--num-heads"
            )
        if info.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{index.uri}: byte {info.entry_offset}: tensor {name} has dtype {info.dtype}; "
                "LLaMA weights must be floating point"
            )
    missing = [k for k in expected if k not in index.tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{index.uri}: missing tensor {missing[0]}{more}; the checkpoint is incomplete or "
            "not the model the configuration describes"
        )
    extra = [info for name, info in index.tensors.items() if name not in expected]
    if extra:
        e = extra[0]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{index.uri}: byte {e.entry_offset}: unexpected tensor {e.name}{more} "
            f"for a {spec.num_hidden_layers}-layer LLaMA {spec.kind} model"
        )
    table = [(s, h, t) for s, h, t in GLOBAL_TENSORS]
    for i in range(spec.num_hidden_layers):
        table += [
            (f"transformer/h/{i}/{s}", f"model.layers.{i}.{h}", t) for s, h, t in LAYER_TENSORS
        ]
    table.append(HEAD_TENSORS[spec.kind])
    return [
        TensorPlan(index.tensors[src], hf, t, t.out_shape(index.tensors[src].shape), t.heads(spec))
        for src, hf, t in table
    ]


def hf_config(spec: LlamaSpec, torch_dtype: str, pad_token_id: int | None = None) -> dict:
    """config.json for transformers. Writes the rope settings both as ``rope_parameters``
    (transformers >= 5) and as ``rope_theta``/``rope_scaling`` (transformers 4.x)."""
    if pad_token_id is None:
        pad_token_id = LLAMA3_PAD_TOKEN_ID if spec.vocab_size == LLAMA3_VOCAB else 0
    rope_parameters = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_scaling:
        rope_parameters = {**spec.rope_scaling, "rope_theta": spec.rope_theta}
    cfg = {
        "architectures": [ARCHITECTURES[spec.kind]],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": spec.rms_norm_eps,
        "max_position_embeddings": spec.max_position_embeddings,
        "rope_theta": spec.rope_theta,
        "rope_scaling": dict(spec.rope_scaling) if spec.rope_scaling else None,
        "rope_parameters": rope_parameters,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "pretraining_tp": 1,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }
    if spec.kind == "reward":
        cfg["num_labels"] = 1
        cfg["id2label"] = {"0": "LABEL_0"}
        cfg["label2id"] = {"LABEL_0": 0}
    return cfg
