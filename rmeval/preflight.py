"""Preflight: every run-one option checked before any conversion, by the one function that
run-one, launch (the local pool: before any worker starts) and pipeline use.

A conversion takes 15-20 minutes for a 13B model; an option that cannot work must fail
before it, in well under a second where that is possible. Two levels, cheapest first:

- :func:`check_values` (no I/O; plan runs it on every rendered task, launch on every task
  of a spec): the store given, the checkpoint's run name, a tokenizer given (a
  reward-model evaluation needs one), and every choice (scoring, device, dtype,
  model size, rope scaling) and number;
- :func:`check_run` adds what needs the machine: the device and dtype here (fp16 needs a
  GPU), Google credentials for every gs:// location, the store and ``--keep-model``
  writable (a probe written and deleted, local or gs://), the evaluation data readable and
  of RewardBench's format (with the asked subsets), the checkpoint's index (headers only)
  against ``--model-size``/``--num-heads`` through the converter's own
  :func:`rmeval.checkpoints.llama.infer_spec` and :func:`~rmeval.checkpoints.llama.plan`,
  and the tokenizer loadable with every id inside the model's vocabulary.

A :class:`Checked` carries what was already checked, so that launch checks a store, a
dataset, a device or a tokenizer that many tasks share once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from rmeval import naming, storage
from rmeval.errors import CheckpointError, EvalError, StoreError, UsageError

log = logging.getLogger(__name__)

CHECK_PREFIX = "rmeval-check-"  # the temporary directory a tokenizer is loaded in


@dataclass
class Checked:
    """What :func:`check_run` found fine already (shared by the tasks of one launch)."""

    devices: set[tuple[str, str]] = field(default_factory=set)
    writable: set[str] = field(default_factory=set)
    credentials: set[str] = field(default_factory=set)
    datasets: set[tuple[str, str, tuple[str, ...]]] = field(default_factory=set)
    tokenizers: dict[str, int] = field(default_factory=dict)  # tokenizer -> ids


def _choice(value: Any, choices: tuple, flag: str) -> None:
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _positive(value: Any, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise UsageError(f"{flag} must be a positive number, got {value!r}")


def check_values(
    checkpoint: str,
    store: str | None,
    *,
    prefix: str | None = None,
    run_name: str | None = None,
    tokenizer: str | None = None,
    model_size: str = "auto",
    num_heads: int | None = None,
    rope_theta: float | None = None,
    rope_scaling: str | None = None,
    scoring: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
    max_tokens: int | None = None,
    **_: Any,
) -> str:
    """The checks that need nothing but the values; returns the run's name."""
    from rmeval.checkpoints.llama import PRESETS, ROPE_SCALINGS
    from rmeval.rewardbench import formats
    from rmeval.rewardbench.evaluate import DEVICES, DTYPES

    if not store:
        raise UsageError(
            "--store is required: the results store (a directory or gs://BUCKET/PREFIX) "
            "where run-one publishes <run>/metrics.json"
        )
    run = naming.check_run_name(run_name) if run_name else naming.run_name(checkpoint, prefix)
    if naming.is_train_state_file(storage.basename(checkpoint)):
        raise CheckpointError(
            f"{checkpoint}: is a streaming_train_state file (optimizer state included); pass "
            "the streaming_params file next to it"
        )
    formats.check_scoring(scoring if scoring is not None else formats.DEFAULT_SCORING)
    _choice(device, DEVICES, "--device")
    _choice(dtype, DTYPES, "--dtype")
    _choice(model_size, ("auto", *PRESETS), "--model-size")
    if rope_scaling is not None:
        _choice(rope_scaling, tuple(ROPE_SCALINGS), "--rope-scaling")
    for value, flag in (
        (num_heads, "--num-heads"),
        (rope_theta, "--rope-theta"),
        (max_length, "--max-length"),
        (max_tokens, "--max-tokens"),
    ):
        _positive(value, flag)
    if not tokenizer:
        raise UsageError(
            "no --tokenizer: a reward-model evaluation needs the tokenizer the "
            "checkpoint was trained with (a sentencepiece tokenizer.model or a Hugging Face "
            "tokenizer directory, local or gs://); pass --tokenizer (plan/launch: --tokenizer "
            "or `tokenizer:` in the preset or config)"
        )
    return run


def check_run(
    checkpoint: str,
    store: str | None,
    *,
    checked: Checked | None = None,
    eval_data: str | None = None,
    subsets: list[str] | None = None,
    keep_model: str | None = None,
    work_dir: str | None = None,
    benchmarks: list[str] | None = None,
    eval_data_v2: str | None = None,
    **opts: Any,
) -> str:
    """Every check of the module doc, cheapest first; returns the run's name. Raises the
    error of the first option that cannot work (one line naming it)."""
    from rmeval.rewardbench.evaluate import dtype_name, resolve_device

    checked = checked if checked is not None else Checked()
    run = check_values(checkpoint, store, **opts)
    assert store is not None  # check_values refuses a missing store
    tokenizer: str = opts["tokenizer"]
    device, dtype = opts.get("device") or "auto", opts.get("dtype") or "auto"
    if (device, dtype) not in checked.devices:
        dtype_name(dtype, resolve_device(device))
        checked.devices.add((device, dtype))

    data = eval_data or _hub()
    uris = [checkpoint, store, tokenizer, data, eval_data_v2 or "", keep_model or ""]
    for uri in uris:
        if storage.is_gcs(uri):
            bucket = storage.split_gcs(uri)[0]
            if bucket not in checked.credentials:
                storage.gcs_client(uri)  # no credentials: one line saying where to put them
                checked.credentials.add(bucket)

    targets = [(storage.join(store, run, "metrics.json"), "--store")]
    if keep_model:
        targets.append((storage.join(keep_model, "config.json"), "--keep-model"))
    if work_dir:
        targets.append((os.path.join(work_dir, "probe"), "--work-dir"))
    for uri, flag in targets:
        key = store if flag == "--store" else uri
        if key in checked.writable:
            continue
        try:
            storage.check_writable(uri)
        except StoreError as exc:
            raise StoreError(f"{flag}: {exc}") from exc
        checked.writable.add(key)

    from rmeval.rewardbench.data import HUB_DATASET_V2, V1, V2, load_pairs, load_rows_v2

    benches = benchmarks or [V1]
    for bench, flag, uri, load in (
        (V1, "--eval-data", data, load_pairs),
        (V2, "--eval-data-v2", eval_data_v2 or HUB_DATASET_V2, load_rows_v2),
    ):
        wanted = (uri, tuple(subsets or ()))
        if bench not in benches or (bench, *wanted) in checked.datasets:
            continue
        try:
            load(uri, subsets)
        except EvalError as exc:
            raise EvalError(f"{flag}: {exc}") from exc
        checked.datasets.add((bench, *wanted))

    vocab = _check_checkpoint(checkpoint, opts)
    ids = checked.tokenizers.get(tokenizer)
    if ids is None:
        ids = _tokenizer_ids(tokenizer)
        checked.tokenizers[tokenizer] = ids
    if ids > vocab:
        raise CheckpointError(
            f"--tokenizer {tokenizer}: the tokenizer has {ids} ids but {checkpoint}'s "
            f"vocabulary has {vocab} rows; pass the tokenizer the checkpoint was trained with"
        )
    return run


def _hub() -> str:
    from rmeval.rewardbench.data import HUB_DATASET

    return HUB_DATASET


def _check_checkpoint(checkpoint: str, opts: dict[str, Any]) -> int:
    """The converter's own index pass (headers only) and shape check; the vocabulary size."""
    from rmeval.checkpoints import llama
    from rmeval.checkpoints.easylm import index_checkpoint

    index = index_checkpoint(checkpoint)
    spec, _ = llama.infer_spec(
        index,
        opts.get("model_size") or "auto",
        opts.get("num_heads"),
        opts.get("rope_theta"),
        opts.get("rope_scaling"),
    )
    llama.plan(index, spec)
    if spec.kind != "reward":
        raise CheckpointError(
            f"{checkpoint}: holds a causal LM (lm_head/kernel), not a reward model "
            "(score/kernel); run-one evaluates reward models"
        )
    return spec.vocab_size


def _tokenizer_ids(tokenizer: str) -> int:
    from rmeval.storage import owned_tempdir
    from rmeval.tokenizer import load_tokenizer

    with owned_tempdir(CHECK_PREFIX) as work:
        tok, _ = load_tokenizer(tokenizer, work)
        return len(tok)


def spec_tasks(spec: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(name, argv after 'rmeval')`` of each task of a spec that runs ``rmeval``."""
    out = []
    for i, task in enumerate(spec.get("tasks") or []):
        words = [str(x) for x in (task.get("command") or [])]
        words += [str(x) for x in (task.get("arguments") or [])]
        if words and os.path.basename(words[0]) == "rmeval":
            out.append((str(task.get("name") or f"tasks[{i}]"), words[1:]))
    return out


def check_tasks(tasks: list[tuple[str, list[str]]], where: str) -> None:
    """:func:`check_values` on each ``(name, argv after 'rmeval')`` of a spec whose command
    is run-one (plan: at plan time; launch: before anything starts). Other commands are
    left to themselves."""
    for name, ns in parse_tasks(tasks, where):
        try:
            check_values(ns.checkpoint, ns.store, **run_options(ns))
        except (UsageError, CheckpointError, naming.NamingError) as exc:
            raise type(exc)(f"{where}: task {name}: {exc}") from exc


# Per-run values of a planned run-one task: the checkpoint (first positional) and these
# options' values. The rest of a task's arguments is the same for every run of one plan.
_PER_RUN_FLAGS = ("--run-name", "--keep-model")
_MASK = "\0per-run"


def parse_tasks(tasks: list[tuple[str, list[str]]], where: str):
    """``(name, namespace)`` of each run-one task among ``(name, argv after 'rmeval')``.
    argparse runs once per distinct argument list with the per-run values masked (a plan of
    10,000 runs has one or two), and each task gets a copy with its own values put back."""
    import copy

    parsed: dict[tuple[str, ...], Any] = {}
    for name, argv in tasks:
        masked, own = _masked(argv)
        ns = parsed.get(masked) if own is not None else None
        if ns is None:
            label = f"{where}: task {name}" if where else f"task {name}"
            ns = parse_run_one(list(masked if own is not None else argv), label)
            if ns is None:
                continue
            if own is not None:
                parsed[masked] = ns
        if own is not None:
            ns = copy.copy(ns)
            for dest, value in own.items():
                setattr(ns, dest, value)
        yield name, ns


def _masked(argv: list[str]) -> tuple[tuple[str, ...], dict[str, str] | None]:
    """``argv`` with its per-run values replaced by a mask, and those values by dest; None
    when the list is not ``run-one CHECKPOINT …`` or a value could parse as an option."""
    from rmeval import options

    if len(argv) < 2 or argv[0] != options.RUN_ONE or argv[1].startswith("-"):
        return tuple(argv), None
    words, own = list(argv), {"checkpoint": argv[1]}
    words[1] = _MASK
    for i, word in enumerate(words[:-1]):
        if word in _PER_RUN_FLAGS:
            value = words[i + 1]
            if value.startswith("-"):
                return tuple(argv), None
            own[word.lstrip("-").replace("-", "_")] = value
            words[i + 1] = _MASK
    return tuple(words), own


def parse_run_one(argv: list[str], where: str):
    """The namespace of an ``rmeval run-one …`` argument list (None for another command)."""
    from rmeval import options

    if not argv or argv[0] != options.RUN_ONE:
        return None
    try:
        return options.parser(options.RUN_ONE).parse_args(argv[1:])
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from exc


def run_options(ns) -> dict[str, Any]:
    """run-one's keyword arguments from its parsed namespace (checkpoint and store apart)."""
    from rmeval import options

    kw = options.values(ns, options.RUN_ONE)
    kw.pop("store", None)
    return kw
