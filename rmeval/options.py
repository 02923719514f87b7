"""The shared option declarations: one table of convert / evaluate / run-one options and
one config schema, from which argparse, pipeline.yml, .github/eval-schedule.yml and the
Beaker template's run-one variables all derive.

:data:`OPTIONS` declares every option of ``convert``, ``evaluate`` and ``run-one`` once:
its flag and aliases, type, choices, default, help and the commands that take it. The
options marked ``template`` are also run-one arguments that ``plan`` and ``launch
--source`` take (as template variables of ``rmeval/templates/beaker/convert-and-eval.yml.j2``,
given only when set) and keys of a pipeline or schedule config. :func:`add_arguments` adds a
command's options to an argparse parser; :func:`parser` builds the standalone parser that
``launch`` and ``plan`` use to read a task's ``rmeval run-one …`` arguments.

:data:`CONFIG_KEYS` is the one schema of ``rmeval pipeline CONFIG`` files and of the
entries of ``.github/eval-schedule.yml``: one spelling per key (underscores), strict types,
the ``fit:`` sub-keys included. :func:`check_config` refuses an unknown key naming it and
the known ones, names the key of a wrong type, and accepts an old spelling
(``dataset_file``, ``eval-dataset``, ``features_dir``, ``dataset``, any dashed key) with a
deprecation note naming the new key.

The flags renamed by issue 13 keep their old names as aliases: ``--dataset`` (evaluate,
run-one: RewardBench data; the upstream ``run_rm`` name) is now ``--eval-data``, collect's
``--dataset`` is ``--results-dataset``; outputs take ``--output`` (``--out`` kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rmeval.errors import UsageError

log = logging.getLogger(__name__)

CONVERT, EVALUATE, RUN_ONE, PLAN, LAUNCH = "convert", "evaluate", "run-one", "plan", "launch"
COLLECT = "collect"
REPRODUCE = "reproduce"
SAMPLE = "rewardbench-sample"
STATUS = "status"
# The commands whose template-variable options are run-one arguments of the planned tasks.
TEMPLATE_COMMANDS = (PLAN, LAUNCH)
# The commands whose options override a published run's recorded settings (default: as
# recorded, so their default is None).
RECORDED_COMMANDS = (REPRODUCE,)


# --------------------------------------------------------------------------- value types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _model_sizes() -> tuple[str, ...]:
    from rmeval.checkpoints.llama import PRESETS

    return ("auto", *PRESETS)


def _scorings() -> tuple[str, ...]:
    from rmeval.rewardbench.formats import SCORINGS

    return SCORINGS


def _default_scoring() -> str:
    from rmeval.rewardbench.formats import DEFAULT_SCORING

    return DEFAULT_SCORING


def _devices() -> tuple[str, ...]:
    from rmeval.rewardbench.evaluate import DEVICES

    return DEVICES


def _dtypes() -> tuple[str, ...]:
    from rmeval.rewardbench.evaluate import DTYPES

    return DTYPES


def _rope_scalings() -> tuple[str, ...]:
    from rmeval.checkpoints.llama import ROPE_SCALINGS

    return tuple(ROPE_SCALINGS)


def _reward_tolerance() -> float:
    from rmeval.reproduce import DEFAULT_REWARD_TOLERANCE

    return DEFAULT_REWARD_TOLERANCE


def _benchmarks() -> tuple[str, ...]:
    from rmeval.rewardbench.data import BENCHMARKS

    return BENCHMARKS


def _default_benchmark() -> str:
    from rmeval.rewardbench.data import DEFAULT_BENCHMARK

    return DEFAULT_BENCHMARK


def _targets() -> tuple[str, ...]:
    from rmeval.table import TARGETS

    return TARGETS


def _default_target() -> str:
    from rmeval.table import TARGET

    return TARGET


def _hub_dataset_v2() -> str:
    from rmeval.rewardbench.data import HUB_DATASET_V2

    return HUB_DATASET_V2


def _max_attempts() -> int:
    from rmeval.state import DEFAULT_MAX_ATTEMPTS

    return DEFAULT_MAX_ATTEMPTS


def _hub_dataset() -> str:
    from rmeval.rewardbench.data import HUB_DATASET

    return HUB_DATASET


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option. ``flags[0]`` is its name (a positional when it has no leading dash);
    ``aliases`` are other spellings accepted silently, ``deprecated`` ones accepted with a
    note naming ``flags[0]``. ``choices`` and ``default`` may be callables (read lazily, so
    that ``rmeval --help`` imports nothing heavy). ``template``: a run-one argument that
    plan/launch take as a template variable and configs take as a key."""

    dest: str
    flags: tuple[str, ...]
    help: str
    commands: frozenset[str]
    type: Callable[[str], Any] | None = str
    choices: tuple | Callable[[], tuple] | None = None
    default: Any = None
    nargs: str | int | None = None
    metavar: str | tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    switch: bool = False  # a store_true flag
    required: bool = False
    template: bool = False
    hidden: bool = False

    @property
    def name(self) -> str:
        return self.flags[0]

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    def resolved_choices(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices

    def resolved_default(self) -> Any:
        return self.default() if callable(self.default) else self.default


def _cmds(*names: str) -> frozenset[str]:
    return frozenset(names)


_RUN = (RUN_ONE, *TEMPLATE_COMMANDS)  # run-one options that plan/launch pass on to tasks

OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------ positionals and outputs
    Option("src", ("src",), "streaming_params[_<step>] file (local path or gs://)", _cmds(CONVERT)),
    Option("out", ("out",), "output directory (local path or gs://bucket/prefix)", _cmds(CONVERT)),
    Option("model", ("model",), "model directory (local or gs://)", _cmds(EVALUATE)),
    Option(
        "checkpoint",
        ("checkpoint",),
        ".../<run dir>/streaming_params[_<step>] (local or gs://)",
        _cmds(RUN_ONE),
    ),
    Option(
        "output",
        ("--output",),
        "metrics.json to write (local or gs://)",
        _cmds(EVALUATE),
        aliases=("--out",),
    ),
    Option(
        "save_scores",
        ("--save-scores",),
        "per-pair rewards as JSON lines (local or gs://)",
        _cmds(EVALUATE),
    ),
    Option(
        "model_name",
        ("--model-name",),
        "'model' in metrics.json (default MODEL)",
        _cmds(EVALUATE),
    ),
    Option(
        "store",
        ("--store",),
        "results store URI (dir or gs://…): <store>/<run>/metrics.json (required)",
        _cmds(RUN_ONE, REPRODUCE, STATUS),
    ),
    Option(
        "prefix",
        ("--prefix",),
        "run-name prefix: <prefix>-<experiment>",
        _cmds(RUN_ONE, STATUS),
    ),
    Option(
        "run_name",
        ("--run-name",),
        "the run's name in the store (default <prefix>-<experiment>; plan passes one when two "
        "experiments would share a name)",
        _cmds(RUN_ONE),
    ),
    Option(
        "keep_model",
        ("--keep-model",),
        "keep the converted model here (local dir or gs://)",
        _cmds(RUN_ONE),
        metavar="URI",
    ),
    Option(
        "work_dir",
        ("--work-dir",),
        "where temporary files go (default: TMPDIR)",
        _cmds(RUN_ONE, REPRODUCE),
    ),
    # ------------------------------------------------------------ convert
    Option(
        "tokenizer",
        ("--tokenizer",),
        "tokenizer the checkpoint was trained with (sentencepiece tokenizer.model or a Hugging "
        "Face tokenizer dir; local or gs://), saved with the model; a reward-model "
        "evaluation needs one (run-one refuses to start without it)",
        _cmds(CONVERT, *_RUN),
        template=True,
    ),
    Option(
        "model_size",
        ("--model-size",),
        "auto (tensor shapes + --num-heads) or an EasyLM preset",
        _cmds(CONVERT, *_RUN),
        choices=_model_sizes,
        default="auto",
        template=True,
    ),
    Option(
        "num_heads",
        ("--num-heads",),
        "attention heads (with --model-size auto, when the shapes match no preset)",
        _cmds(CONVERT, *_RUN),
        type=positive_int,
        metavar="N",
        template=True,
    ),
    Option(
        "rope_theta",
        ("--rope-theta",),
        "rotary base (default EasyLM's 10000; Llama-3 presets: 500000)",
        _cmds(CONVERT, *_RUN),
        type=positive_float,
        template=True,
    ),
    Option(
        "rope_scaling",
        ("--rope-scaling",),
        "rotary scaling (llama3: Llama-3.1's)",
        _cmds(CONVERT, *_RUN),
        choices=_rope_scalings,
        template=True,
    ),
    Option(
        "max_shard_size",
        ("--max-shard-size",),
        "safetensors shard size, e.g. 5GB, 500MB",
        _cmds(CONVERT),
        default="5GB",
    ),
    Option(
        "verify",
        ("--verify",),
        "compare the converted model with the JAX forward of the checkpoint (needs jax)",
        _cmds(CONVERT, RUN_ONE),
        type=None,
        switch=True,
    ),
    # ------------------------------------------------------------ convert and evaluate
    Option(
        "dtype",
        ("--dtype",),
        "weights' dtype: auto keeps the stored dtype when converting and evaluates in bf16 "
        "on a GPU, fp32 on the CPU; fp16 (run_rm's default) evaluates only on a GPU",
        _cmds(CONVERT, EVALUATE, *_RUN, REPRODUCE),
        choices=_dtypes,
        default="auto",
        template=True,
    ),
    # ------------------------------------------------------------ evaluate
    Option(
        "benchmark",
        ("--benchmark",),
        "which benchmark the data is: RewardBench pairs or RewardBench 2 rows (with the "
        "default --eval-data, that benchmark's hub dataset)",
        _cmds(EVALUATE, SAMPLE),
        choices=_benchmarks,
        default=_default_benchmark,
    ),
    Option(
        "eval_data",
        ("--eval-data",),
        "RewardBench data: a .json/.jsonl/.parquet file (local or gs://) or a hub id "
        "(the hub needs access)",
        _cmds(EVALUATE, *_RUN),
        default=_hub_dataset,
        deprecated=("--dataset",),
        template=True,
    ),
    Option(
        "benchmarks",
        ("--benchmarks",),
        "the benchmarks to score the converted model on (one conversion feeds all); a run is "
        "done for a benchmark when its metrics file is in the store",
        _cmds(*_RUN),
        choices=_benchmarks,
        nargs="+",
        metavar="BENCHMARK",
        template=True,
    ),
    Option(
        "eval_data_v2",
        ("--eval-data-v2",),
        "RewardBench 2 data for --benchmarks rewardbench2: a .json/.jsonl/.parquet file "
        "(local or gs://) or a hub id",
        _cmds(*_RUN),
        default=_hub_dataset_v2,
        template=True,
    ),
    Option(
        "subsets",
        ("--subsets",),
        "score only these RewardBench subsets",
        _cmds(EVALUATE, *_RUN),
        nargs="+",
        metavar="SUBSET",
        template=True,
    ),
    Option(
        "scoring",
        ("--scoring",),
        "'trained': EasyLM's training text, reward at the eos; 'run_rm': what RewardBench's "
        "run_rm scores (upstream numbers)",
        _cmds(EVALUATE, *_RUN, REPRODUCE),
        choices=_scorings,
        default=_default_scoring,
        template=True,
    ),
    Option(
        "device",
        ("--device",),
        "where to evaluate (auto: cuda when available)",
        _cmds(EVALUATE, RUN_ONE, REPRODUCE),
        choices=_devices,
        default="auto",
    ),
    Option(
        "max_length",
        ("--max-length",),
        "tokens kept per text (from the end)",
        _cmds(EVALUATE, *_RUN),
        type=positive_int,
        default=2048,
        metavar="N",
        template=True,
    ),
    Option(
        "max_tokens",
        ("--max-tokens",),
        "padded tokens per batch (default 8192)",
        _cmds(EVALUATE, RUN_ONE),
        type=positive_int,
        metavar="N",
    ),
    Option(
        "chat_template",
        ("--chat-template",),
        "run_rm only: 'tokenizer', 'tulu' or a Jinja template file instead of run_rm's choice "
        "(the tokenizer's template if it has one, else tulu)",
        _cmds(EVALUATE),
    ),
    # ------------------------------------------------------------ collect
    Option(
        "results_dataset",
        ("--results-dataset",),
        "results dataset name: results/<results-dataset>/<table>.csv, e.g. helpsteer2",
        _cmds(COLLECT),
        deprecated=("--dataset",),
    ),
    # ------------------------------------------------------------ reproduce
    Option(
        "run",
        ("run",),
        "the published run's name (<store>/<run>/); omit with --random-new",
        _cmds(REPRODUCE),
        nargs="?",
    ),
    Option(
        "reward_tolerance",
        ("--reward-tolerance",),
        "largest absolute per-pair reward difference accepted",
        _cmds(REPRODUCE),
        type=positive_float,
        default=_reward_tolerance,
        metavar="EPS",
    ),
    Option(
        "random_new",
        ("--random-new",),
        "reproduce one random run that the table AFTER.csv has and BEFORE.csv lacks "
        "(a collect's new rows; none: nothing to do)",
        _cmds(REPRODUCE),
        nargs=2,
        metavar=("BEFORE.csv", "AFTER.csv"),
    ),
    Option(
        "target",
        ("--target",),
        "the regressor's target column: RewardBench's Overall or RewardBench 2's rb2_Overall "
        "(recorded in the columns sidecar that fit and report read)",
        _cmds(COLLECT),
        choices=_targets,
        default=_default_target,
    ),
    # ------------------------------------------------------------ the rest
    Option(
        "overwrite",
        ("--overwrite",),
        "replace existing outputs",
        _cmds(CONVERT, EVALUATE),
        type=None,
        switch=True,
    ),
    Option(
        "force",
        ("--force",),
        "redo a run that is already published",
        _cmds(RUN_ONE),
        type=None,
        switch=True,
    ),
    # ------------------------------------------------------------ run state (rmeval.state)
    Option(
        "gpus",
        ("--gpus",),
        "GPU ids this run may use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; default: the "
        "inherited CUDA_VISIBLE_DEVICES); recorded in the claim",
        _cmds(RUN_ONE),
        metavar="IDS",
    ),
    Option(
        "notify",
        ("--notify",),
        "webhook URL (Slack-compatible) told of each given-up run (plan) and each new best "
        "Overall (run-one); a failing webhook is logged, never fatal",
        _cmds(RUN_ONE, PLAN),
        metavar="URL",
    ),
    Option(
        "max_attempts",
        ("--max-attempts",),
        "retry a failed run until it has failed this often, then list it as given up",
        _cmds(PLAN, STATUS),
        type=positive_int,
        default=_max_attempts,
        metavar="N",
    ),
    Option(
        "retry_failed",
        ("--retry-failed",),
        "plan given-up runs again",
        _cmds(PLAN, STATUS),
        type=None,
        switch=True,
    ),
)

# reproduce's overrides of what a run recorded
RECORDED_SETTINGS = ("dtype", "device", "scoring")

BY_DEST: dict[str, Option] = {}
for _o in OPTIONS:
    BY_DEST.setdefault(_o.dest, _o)
TEMPLATE_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.template)


def options_of(command: str) -> list[Option]:
    return [o for o in OPTIONS if command in o.commands]


# --------------------------------------------------------------------------- argparse


class _Deprecated(argparse.Action):
    """Stores like the plain action; an old spelling prints one note naming the new one."""

    def __init__(self, *args, new_name: str, old_names: tuple[str, ...], **kwargs):
        self.new_name, self.old_names = new_name, old_names
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_names:
            print(
                f"rmeval: note: {option_string} is deprecated; use {self.new_name}",
                file=sys.stderr,
                flush=True,
            )
        setattr(namespace, self.dest, values)


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """Add every option of ``command`` to ``p``. For plan and launch, the run-one options
    are template variables: their default is None (unset: the template's own default, which
    is run-one's)."""
    as_variable = command in TEMPLATE_COMMANDS
    as_recorded = command in RECORDED_COMMANDS
    for o in options_of(command):
        kwargs: dict[str, Any] = {"help": argparse.SUPPRESS if o.hidden else o.help}
        unset = (as_variable and o.template) or (as_recorded and o.dest in RECORDED_SETTINGS)
        default = None if unset else o.resolved_default()
        if o.switch:
            p.add_argument(*o.flags, *o.aliases, dest=o.dest, action="store_true", **kwargs)
            continue
        choices = o.resolved_choices()
        if choices is not None:
            kwargs["choices"] = choices
        if o.type is not None:
            kwargs["type"] = o.type
        if o.nargs is not None:
            kwargs["nargs"] = o.nargs
        if o.metavar is not None:
            kwargs["metavar"] = o.metavar
        if o.positional:
            p.add_argument(o.name, **kwargs)
            continue
        if default is not None and not o.hidden:
            kwargs["help"] += f" (default {default})"
        elif as_variable and o.template:
            kwargs["help"] += " (passed to each task's run-one)"
        elif unset:
            kwargs["help"] += " (default: as the run recorded)"
        if o.deprecated:
            kwargs["action"] = _Deprecated
            kwargs["new_name"] = o.name
            kwargs["old_names"] = o.deprecated
        p.add_argument(
            *o.flags,
            *o.aliases,
            *o.deprecated,
            dest=o.dest,
            default=default,
            required=o.required,
            **kwargs,
        )


def values(args: argparse.Namespace | Mapping[str, Any], command: str) -> dict[str, Any]:
    """``{dest: value}`` of ``command``'s options in ``args`` (positionals and the hidden
    status-file option left out): the keyword arguments of the stage function."""
    get = args.get if isinstance(args, Mapping) else lambda k, d=None: getattr(args, k, d)
    return {o.dest: get(o.dest) for o in options_of(command) if not o.positional and not o.hidden}


def template_values(args: argparse.Namespace) -> dict[str, Any]:
    """The run-one options given to plan/launch, as template variables (unset ones left out)."""
    return {
        o.dest: getattr(args, o.dest)
        for o in TEMPLATE_OPTIONS
        if getattr(args, o.dest, None) is not None
    }


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise UsageError(f"{self.prog}: {message}")


def parser(command: str) -> argparse.ArgumentParser:
    """A standalone parser of ``command``'s arguments that raises :class:`UsageError`
    instead of exiting (for the ``rmeval run-one …`` arguments of a spec's tasks)."""
    p = _RaisingParser(prog=f"rmeval {command}", add_help=False)
    add_arguments(p, command)
    return p


# --------------------------------------------------------------------------- config schema

PIPELINE, SCHEDULE = "pipeline", "schedule"


@dataclass(frozen=True)
class Key:
    """One key of a pipeline config or a schedule entry: its Python type(s), the contexts
    that accept it, choices (per context when they differ), and old spellings."""

    name: str
    kind: type | tuple[type, ...]
    contexts: frozenset[str]
    help: str
    # per context, or one tuple, or a callable giving it (an option's lazy choices)
    choices: Mapping[str, tuple] | tuple | Callable[[], tuple] | None = None
    old: tuple[str, ...] = ()
    required: frozenset[str] = frozenset()
    list_of: type | None = None  # kind list: the type of its items
    positive: bool = False  # a number that must be > 0

    def choices_in(self, context: str) -> tuple | Callable[[], tuple] | None:
        if isinstance(self.choices, Mapping):
            return self.choices.get(context)
        return self.choices


LANDINGS = ("push", "pull-request")  # how fetch-results lands a dataset (the first: default)
_BOTH = frozenset({PIPELINE, SCHEDULE})
_PIPE = frozenset({PIPELINE})
# an option's argparse type -> the Python type(s) a config value of it has
_PY_TYPES: dict[Callable[[str], Any] | None, type | tuple[type, ...]] = {
    str: str,
    positive_int: int,
    positive_float: (int, float),
    None: bool,
}


def _option_keys() -> list[Key]:
    keys = []
    for o in TEMPLATE_OPTIONS:
        kind = list if o.nargs else _PY_TYPES.get(o.type, str)
        old = tuple(f.lstrip("-") for f in o.deprecated)
        keys.append(
            Key(
                o.dest,
                kind,
                _BOTH,
                f"run-one {o.name}: {o.help}",
                choices=o.choices,
                old=tuple(k for k in old if k != "dataset"),  # 'dataset' is results_dataset's
                list_of=str if o.nargs else None,
                positive=o.type in (positive_int, positive_float),
            )
        )
    return keys


CONFIG_KEYS: tuple[Key, ...] = (
    Key("source", str, _BOTH, "checkpoints: gs://BUCKET/PREFIX or a local dir", required=_BOTH),
    Key("store", str, _BOTH, "where run-one publishes <run>/metrics.json", required=_BOTH),
    Key("preset", str, _BOTH, "rmeval/templates/presets/<preset>.yml"),
    Key("template", str, _BOTH, "spec template (default convert-and-eval.yml.j2)"),
    Key("prefix", str, _BOTH, "run-name prefix"),
    Key(
        "backend",
        str,
        _BOTH,
        "pipeline: local (process pool) | beaker; schedule: runners (GPU runners) | beaker",
        choices={PIPELINE: ("local", "beaker"), SCHEDULE: ("runners", "beaker")},
    ),
    Key("max_parallel", int, _PIPE, "local backend: worker processes", positive=True),
    Key("workspace", str, _PIPE, "beaker backend: ORG/NAME"),
    Key("log_dir", str, _PIPE, "local backend: one log per run here"),
    Key(
        "results_dataset",
        str,
        _BOTH,
        "results/<results_dataset>/<table>.csv",
        old=("dataset",),
        required=_BOTH,
    ),
    Key("results_dir", str, _PIPE, "the committed results directory", required=_PIPE),
    Key("table", str, _BOTH, "table name (default runs)"),
    Key(
        "feature_counts_dir",
        str,
        _BOTH,
        "regressor_feats_ID__<uuid>__SWAPS_<n>.json for the counts join",
        old=("features_dir",),
    ),
    Key("experiments_file", str, _PIPE, "'<experiment>::<feat>___<feat>' lines (instead)"),
    Key(
        "dataset_total_size",
        int,
        _PIPE,
        "rescale budgets to a 7,000-example dataset",
        positive=True,
    ),
    *_option_keys(),
    Key(
        "land",
        str,
        frozenset({SCHEDULE}),
        "fetch-results: push to the branch, or pull-request (one PR per dataset); default push",
        choices=LANDINGS,
    ),
    Key(
        "notify",
        str,
        _BOTH,
        "webhook URL (from a secret) for given-up runs and new best Overall (--notify)",
    ),
    Key("fit", (dict, bool), _PIPE, "fit settings (model, log_linear, seed) or false"),
    Key("report", bool, _PIPE, "render the report notebook"),
)
# 'dataset_file' was the pipeline's name of the RewardBench data, 'eval-dataset' the schedule's.
_EXTRA_OLD = {"dataset_file": "eval_data", "eval_dataset": "eval_data"}


def _fit_models() -> tuple[str, ...]:
    from rmeval.fit import MODELS

    return MODELS


FIT_KEYS: tuple[Key, ...] = (
    Key("model", str, _PIPE, "linear | quadratic | lightgbm"),
    Key("log_linear", bool, _PIPE, "fit on log1p of the features"),
    Key("seed", int, _PIPE, "train/dev split seed"),
)


def keys_of(context: str, keys: Iterable[Key] = CONFIG_KEYS) -> dict[str, Key]:
    return {k.name: k for k in keys if context in k.contexts}


def _renames(keys: Mapping[str, Key]) -> dict[str, str]:
    out = {old: k.name for k in keys.values() for old in k.old}
    out.update({o: n for o, n in _EXTRA_OLD.items() if n in keys})
    return out


def _type_name(kind) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    names.update({dict: "a mapping", list: "a list"})
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_value(key: Key, value: Any, where: str, context: str, error) -> None:
    kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise error(f"{where}: {key.name} must be {_type_name(key.kind)}, got {value!r}")
    if key.list_of is not None and not all(isinstance(v, key.list_of) for v in value):
        raise error(f"{where}: {key.name} must be a list of {_type_name(key.list_of)}s")
    choices = key.choices_in(context)
    if callable(choices):
        choices = choices()
    for v in value if isinstance(value, list) else [value]:  # a list: each of its items
        if choices is not None and v not in choices:
            raise error(
                f"{where}: {key.name} must be one of {', '.join(map(str, choices))}, got {v!r}"
            )
    if key.positive and value <= 0:
        raise error(f"{where}: {key.name} must be positive, got {value!r}")


def check_config(
    raw: Any,
    where: str,
    context: str,
    error: type[Exception] = UsageError,
) -> dict[str, Any]:
    """``raw`` checked against the schema of ``context`` (:data:`PIPELINE` or
    :data:`SCHEDULE`) and returned with every key in its one spelling. A key in an old
    spelling is accepted with a deprecation note; an unknown key, a key given twice (old and
    new), a wrong type or a missing required key raise ``error`` naming the key."""
    keys = keys_of(context)
    if not isinstance(raw, Mapping):
        raise error(f"{where}: expected a mapping of {', '.join(keys)}")
    renames = _renames(keys)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key)
        new = renames.get(name) or renames.get(name.replace("-", "_"))
        if new is None and name.replace("-", "_") in keys and name not in keys:
            new = name.replace("-", "_")
        if new is not None:
            log.warning("%s: key %r is deprecated; use %r", where, name, new)
            name = new
        if name not in keys:
            raise error(f"{where}: unknown key {key!r}; known keys: {', '.join(keys)}")
        if name in out:
            raise error(f"{where}: {name} is given twice (under an old and the new spelling)")
        if value is not None:
            _check_value(keys[name], value, where, context, error)
        out[name] = value
    missing = [k.name for k in keys.values() if context in k.required and not out.get(k.name)]
    if missing:
        raise error(f"{where}: missing required key(s): {', '.join(missing)}")
    if isinstance(out.get("fit"), Mapping):
        out["fit"] = check_fit(out["fit"], f"{where}: fit", error)
    return out


def check_fit(raw: Mapping[str, Any], where: str, error: type[Exception]) -> dict[str, Any]:
    keys = {k.name: k for k in FIT_KEYS}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name != key:
            log.warning("%s: key %r is deprecated; use %r", where, key, name)
        if name not in keys:
            raise error(f"{where}: unknown key {key!r}; known keys: {', '.join(keys)}")
        if value is not None:
            _check_value(keys[name], value, where, PIPELINE, error)
        out[name] = value
    if out.get("model") is not None and out["model"] not in _fit_models():
        raise error(
            f"{where}: model must be one of {', '.join(_fit_models())}, got {out['model']!r}"
        )
    return out


# --------------------------------------------------------------------------- documentation


def markdown_table() -> str:
    """The shared options as a Markdown table (docs/options.md is this, checked by a test)."""
    rows = ["| option | aliases | choices | default | commands |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        if o.positional or o.hidden:
            continue
        aliases = ", ".join(f"`{a}`" for a in o.aliases)
        aliases += ", ".join(f"`{a}` (deprecated)" for a in o.deprecated)
        choices = " \\| ".join(map(str, o.resolved_choices() or ())) or "-"
        default = o.resolved_default()
        default = "-" if default is None or o.switch else f"`{default}`"
        commands = [
            c
            for c in (CONVERT, EVALUATE, RUN_ONE, PLAN, LAUNCH, COLLECT, REPRODUCE, STATUS)
            if c in o.commands
        ]
        if o.template:
            commands.append("pipeline")
        rows.append(
            f"| `{o.name}` | {aliases or '-'} | {choices} | {default} | {', '.join(commands)} |"
        )
    return "\n".join(rows)


def markdown_keys() -> str:
    """The config schema as a Markdown table (docs/options.md)."""
    rows = ["| key | old spellings | type | pipeline | schedule |", "|---|---|---|---|---|"]
    renames = {**{o: k.name for k in CONFIG_KEYS for o in k.old}, **_EXTRA_OLD}
    for k in CONFIG_KEYS:
        old = sorted({o for o, n in renames.items() if n == k.name} | {k.name.replace("_", "-")})
        old = [o for o in old if o != k.name]
        rows.append(
            f"| `{k.name}` | {', '.join(f'`{o}`' for o in old) or '-'} | "
            f"{_type_name(k.kind)} | {_ctx(k, PIPELINE)} | {_ctx(k, SCHEDULE)} |"
        )
    for k in FIT_KEYS:
        rows.append(f"| `fit.{k.name}` | - | {_type_name(k.kind)} | yes | - |")
    return "\n".join(rows)


def _ctx(k: Key, context: str) -> str:
    if context not in k.contexts:
        return "-"
    return "required" if context in k.required else "yes"
