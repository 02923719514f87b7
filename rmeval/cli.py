"""Command line: parses arguments, calls one function per command, prints.

No logic lives here. Heavy imports (torch, transformers, google-cloud-storage) happen inside
the handlers so that ``rmeval --help`` stays fast. Each command has a ``_add_<name>`` that
declares its arguments and a ``_run_<name>`` that calls the stage module.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from rmeval import options
from rmeval.errors import RmevalError, UsageError

log = logging.getLogger("rmeval")

Handler = Callable[[argparse.Namespace], int]


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries speak only on errors unless -v: expected failures must stay
    # one line (google-auth, for one, logs its own warning before raising).
    root.setLevel(logging.ERROR if not verbose else logging.DEBUG)
    logging.getLogger("rmeval").setLevel(level)


def _print(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- storage (ls)


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list objects under a local dir, file:// or gs:// URI")
    p.add_argument("uri", help="directory or gs://bucket/prefix")
    p.add_argument(
        "--match", default=None, help="glob on the object's base name, e.g. 'streaming_params*'"
    )
    p.set_defaults(handler=_run_ls)


def _run_ls(args: argparse.Namespace) -> int:
    from rmeval import storage

    n = 0
    for obj in storage.list_objects(args.uri, match=args.match):
        _print(f"{obj.size:>14}  {obj.updated.isoformat() if obj.updated else '-':<32}  {obj.uri}")
        n += 1
    log.info("%d object(s)", n)
    return 0


# --------------------------------------------------------------------------- plan / launch / run-one


def _seconds(text: str) -> float:
    from rmeval.backends.beaker import resolve_timeout

    try:
        return resolve_timeout(float(text))
    except (ValueError, UsageError):
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, got {text!r}"
        ) from None


def _add_beaker_timeout(p: argparse.ArgumentParser) -> None:
    from rmeval.backends import beaker

    p.add_argument(
        beaker.TIMEOUT_OPTION,
        dest="beaker_timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=f"give up when a Beaker call gets no answer for this long, retries included "
        f"(default ${beaker.TIMEOUT_ENV} or {beaker.DEFAULT_TIMEOUT:g})",
    )


def _add_plan_source_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by `plan` and `launch --source` (with the seed's aliases)."""
    p.add_argument("--source", default=None, help="gs://BUCKET/PREFIX or a local directory")
    p.add_argument("--gcs_bucket", default=None, help="seed alias: bucket name (no gs://)")
    p.add_argument("--gcs_dir_path", default=None, help="seed alias: prefix in --gcs_bucket")
    p.add_argument(
        "--template",
        default=None,
        help="Jinja spec template (default: rmeval/templates/beaker/convert-and-eval.yml.j2)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="rmeval/templates/presets/NAME[-counts].yml, or a path to a .yml",
    )
    p.add_argument("--prefix", default=None, help="run-name prefix: <prefix>-<experiment>")
    p.add_argument(
        "--experiment-prefix", default=None, help="Beaker experiment name prefix (rm-eval-)"
    )
    p.add_argument("--store", default=None, help="results store URI (dir or gs://…)")
    p.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template variable (VALUE parsed as YAML), repeatable",
    )
    p.add_argument("--force", action="store_true", help="plan runs that are already done too")
    options.add_arguments(p, options.PLAN)  # run-one's options, as template variables
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="a source without checkpoints is not an error (nothing to do, exit 0)",
    )
    p.add_argument(
        "--is_reward_model",
        action="store_true",
        help="seed alias, accepted for compatibility: every checkpoint is a reward model",
    )


def _plan_kwargs(args: argparse.Namespace) -> dict:
    from rmeval import specs

    return {
        "options": options.template_values(args),
        "source": args.source,
        "gcs_bucket": args.gcs_bucket,
        "gcs_dir_path": args.gcs_dir_path,
        "template": args.template,
        "preset": args.preset,
        "prefix": args.prefix,
        "store": args.store,
        "experiment_prefix": args.experiment_prefix,
        "values": specs.parse_set(args.values),
        "force": args.force,
        "allow_empty": args.allow_empty,
        "max_attempts": getattr(args, "max_attempts", None),
        "retry_failed": getattr(args, "retry_failed", False),
        "notify": getattr(args, "notify", None),
    }


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="list checkpoints, drop finished runs, render a Beaker spec",
        description="List streaming_params* under --source, name runs, drop those already "
        "done (metrics.json in --store; with --workspace, an existing Beaker experiment), "
        "and render the spec template. Prints found / done / to run.",
    )
    _add_plan_source_args(p)
    p.add_argument("--output", "--output_file", dest="output", default=None, help="spec file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--json", action="store_true", help="print the run list as JSON")
    p.add_argument(
        "--workspace",
        "--beaker_workspace",
        dest="workspace",
        default=None,
        help="Beaker ORG/NAME: experiments that exist there count as done",
    )
    _add_beaker_timeout(p)
    p.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from rmeval import plan

    kwargs = _plan_kwargs(args)
    p, spec = plan.make_plan(workspace=args.workspace, beaker_timeout=args.beaker_timeout, **kwargs)
    log.info("%s", p.summary())
    if args.json:
        _print(p.to_json())
    if spec is None:
        log.info("nothing to do")
        return 0
    if args.output:
        plan.write_spec(spec.text, args.output, overwrite=args.overwrite)
        log.info("wrote %s (%d task(s))", args.output, len(p.to_run))
    elif not args.json:
        _print(spec.text.rstrip("\n"))
    return 0


def _add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="run a spec's tasks on the local pool or on Beaker",
        description="Run SPEC (from `rmeval plan`) or plan on the spot from --source.",
    )
    p.add_argument("spec", nargs="?", default=None, help="spec file (omit with --source)")
    _add_plan_source_args(p)
    p.add_argument("--backend", choices=["local", "beaker"], default="local")
    p.add_argument("--dry-run", action="store_true", help="print what would run / be created")
    p.add_argument("--max-parallel", type=int, default=1, help="local: worker processes")
    p.add_argument("--log-dir", default="rmeval-logs", help="local: one log file per run here")
    p.add_argument("--workspace", default=None, help="beaker: ORG/NAME to create experiments in")
    _add_beaker_timeout(p)
    p.set_defaults(handler=_run_launch)


def _run_launch(args: argparse.Namespace) -> int:
    from rmeval import launch

    plan_kwargs = _plan_kwargs(args) if (args.source or args.gcs_bucket) else None
    if plan_kwargs is None and options.template_values(args):
        given = ", ".join(f"--{k.replace('_', '-')}" for k in options.template_values(args))
        raise UsageError(f"{given}: only with --source (they set the planned tasks' options)")
    summary = launch.launch(
        args.spec,
        backend=args.backend,
        plan_args=plan_kwargs,
        dry_run=args.dry_run,
        max_parallel=args.max_parallel,
        workspace=args.workspace,
        experiment_prefix=args.experiment_prefix,
        log_dir=args.log_dir,
        beaker_timeout=args.beaker_timeout,
    )
    if not summary.outcomes:
        log.info("nothing to do")
        return 0
    for line in summary.lines():
        _print(line)
    return summary.exit_code


def _add_run_one(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run-one",
        help="convert, evaluate and publish one checkpoint",
        description="convert -> evaluate -> publish <store>/<run>/metrics.json (+ scores, "
        "provenance). Every option is checked before any conversion (rmeval/preflight.py). "
        "Skips a run whose metrics.json exists unless --force.",
    )
    options.add_arguments(p, options.RUN_ONE)
    p.set_defaults(handler=_run_run_one)


def _run_run_one(args: argparse.Namespace) -> int:
    from rmeval import run
    from rmeval.preflight import run_options

    result = run.run_one(args.checkpoint, args.store, **run_options(args))
    if args.result_json:
        run.write_result_json(result, args.result_json)
    if result.status == "claimed":  # another runner has it: not an error
        _print(result.detail)
        return 0
    _print(f"{result.status} {result.run} {result.result_uri}")
    return 0


# --------------------------------------------------------------------------- status


def _add_status(sub: argparse._SubParsersAction) -> None:
    from rmeval import status

    p = sub.add_parser(
        "status",
        help="what runs, what is done (Overall), what failed and why, from the store",
        description="One line per run of --store: planned, running (who, since when), done "
        "(Overall), failed (stage, error, attempts), given up or superseded; then the counts. "
        "One listing of the store; state files are read only for unfinished runs.",
    )
    p.add_argument("--store", required=True, help="results store URI (dir or gs://…)")
    p.add_argument("--source", default=None, help="checkpoints too: those not started are planned")
    p.add_argument("--prefix", default=None, help="run-name prefix (with --source)")
    p.add_argument(
        "--workspace", default=None, help="Beaker ORG/NAME: show each run's experiment state"
    )
    p.add_argument("--experiment-prefix", default=None, help="Beaker experiment name prefix")
    p.add_argument("--json", action="store_true", help="print the runs and counts as JSON")
    p.add_argument("--only", choices=status.ORDER, default=None, help="only the runs in this state")
    options.add_arguments(p, options.STATUS)
    _add_beaker_timeout(p)
    p.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from rmeval import status

    st = status.status(
        args.store,
        source=args.source,
        prefix=args.prefix,
        workspace=args.workspace,
        experiment_prefix=args.experiment_prefix,
        max_attempts=args.max_attempts,
        retry_failed=args.retry_failed,
        beaker_timeout=args.beaker_timeout,
    )
    _print(st.to_json(args.only) if args.json else st.table(args.only))
    return 0


# --------------------------------------------------------------------------- convert / verify


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="EasyLM streaming checkpoint -> Hugging Face model (streaming, atomic)",
        description="Convert one EasyLM streaming_params file (local or gs://) into a Hugging "
        "Face directory (safetensors shards + index + config.json [+ tokenizer]). Built in "
        "OUT.partial-<id> and renamed at the end; gs:// outputs are uploaded after the build.",
    )
    options.add_arguments(p, options.CONVERT)
    p.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from rmeval.checkpoints.convert import convert

    kwargs = options.values(args, options.CONVERT)
    if kwargs["dtype"] == "auto":  # convert's auto: as stored
        kwargs["dtype"] = None
    result = convert(args.src, args.out, **kwargs)
    for note in result.notes:
        _print(f"note: {note}")
    if result.verify is not None:
        _print(result.verify.summary())
    _print(result.summary())
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="compare a converted model with the JAX forward of its EasyLM checkpoint",
        description="Run the EasyLM forward (JAX) from the raw checkpoint and the HF model from "
        "OUT on one padded batch of different-length sequences; exit 1 above tolerance "
        "(1e-4 relative when weights are exact; 3e-2*sqrt(layers/4) when rounded to bf16/fp16).",
    )
    p.add_argument("checkpoint", help="streaming_params file (local or gs://)")
    p.add_argument("out", help="converted model directory (local or gs://)")
    p.add_argument("--tolerance", type=float, default=None, help="relative tolerance override")
    p.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from rmeval.checkpoints.reference import verify

    result = verify(args.checkpoint, args.out, tolerance=args.tolerance, raise_on_fail=True)
    _print(result.summary())
    return 0


# --------------------------------------------------------------------------- collect, history


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect RewardBench metrics (store or beaker://) into the regressor table",
        description="Fetch every run's metrics.json from a results store (local dir or gs://) "
        "or a Beaker workspace, compute section scores and Overall, join the features, and "
        "write a deterministic CSV (or update results/<dataset>/<table>.csv with history). "
        "Runs or files left out are named in the summary and in <table>.issues.json.",
    )
    p.add_argument(
        "--source", required=True, help="results store (dir or gs://…) or beaker://ORG/WORKSPACE"
    )
    p.add_argument(
        "--experiment-prefix",
        default=None,
        help="keep runs whose names contain this (beaker default: rm-eval-)",
    )
    p.add_argument(
        "--max-concurrency", type=int, default=32, help="metrics fetched at once (default 32)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--feature-counts-dir",
        default=None,
        help="dir of regressor_feats_ID__<uuid>__SWAPS_<n>.json",
    )
    g.add_argument(
        "--experiments-file", default=None, help="file of '<experiment>::<feat>___<feat>' lines"
    )
    p.add_argument(
        "--dataset-total-size",
        type=int,
        default=None,
        help="rescale budgets to a 7,000-example dataset",
    )
    p.add_argument(
        "--gpt4-threshold",
        type=float,
        default=None,
        help="add label = Overall > T (a fraction, e.g. 0.85)",
    )
    p.add_argument("--output", default=None, help="CSV to write (local or gs://)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--results-dir",
        default=None,
        help="committed results dir (with --results-dataset, --table)",
    )
    options.add_arguments(p, options.COLLECT)
    p.add_argument("--table", default=None, help="table name, e.g. counts-runs")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1, writing nothing, if any run or file was left out",
    )
    p.add_argument(
        "--allow-shrink",
        action="store_true",
        help="replace a table even by one with fewer than half its rows",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="collect and print the summary; write nothing"
    )
    _add_beaker_timeout(p)
    p.set_defaults(handler=_run_collect)


def _run_collect(args: argparse.Namespace) -> int:
    from rmeval import collect

    out = collect.collect_and_write(
        args.source,
        output=args.output,
        overwrite=args.overwrite,
        results_dir=args.results_dir,
        dataset=args.results_dataset,
        table_name=args.table,
        strict=args.strict,
        dry_run=args.dry_run,
        allow_shrink=args.allow_shrink,
        beaker_timeout=args.beaker_timeout,
        experiment_prefix=args.experiment_prefix,
        max_concurrency=args.max_concurrency,
        feature_counts_dir=args.feature_counts_dir,
        experiments_file=args.experiments_file,
        dataset_total_size=args.dataset_total_size,
        gpt4_threshold=args.gpt4_threshold,
    )
    _print(out.table.summary())
    if out.unchanged:
        _print("results unchanged; nothing written")
    elif out.record is not None:
        r = out.record
        _print(f"version {r['version']}: {r['rows']} sha256 {r['sha256'][:12]}")
    for path in out.written:
        _print(f"wrote {path}")
    return 0


def _add_history(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="list the versions of a results dataset (HISTORY.jsonl)")
    p.add_argument("dataset_dir", help="e.g. results/helpsteer2")
    p.add_argument("--json", action="store_true", help="print the raw records")
    p.set_defaults(handler=_run_history)


def _run_history(args: argparse.Namespace) -> int:
    import json

    from rmeval import results

    records = results.read_history(args.dataset_dir)
    if args.json:
        for r in records:
            _print(json.dumps(r, ensure_ascii=False))
    else:
        _print(results.format_history(records))
    return 0


# --------------------------------------------------------------------------- fit, report


def _add_fit(sub: argparse._SubParsersAction) -> None:
    from rmeval.fit import MODELS

    p = sub.add_parser(
        "fit",
        help="fit the regressor (feature counts -> Overall) on a results table",
        description="Fit a linear, quadratic or LightGBM regressor on the table's feature columns "
        "(those collect recorded in <table>.columns.json, else every numeric non-score column) "
        "with an 80/20 train/dev split; write metrics.json (dev MSE/RMSE/R² beside a mean "
        "baseline, learning curve at 25/50/75/100%), coef.jsonl (importance.jsonl for lightgbm), "
        "predictions.csv, model.joblib, and upstream's model.pkl (+ poly.pkl for quadratic) "
        "into OUT.",
    )
    p.add_argument("csv", help="results table (local or gs://)")
    p.add_argument(
        "--output", "--out", dest="output", required=True, help="output directory (local or gs://)"
    )
    p.add_argument(
        "--model", choices=MODELS, default="linear", help="lightgbm needs the [lightgbm] extra"
    )
    p.add_argument("--log-linear", action="store_true", help="fit on log1p of the features")
    p.add_argument("--target", default="Overall", help="score column to predict (default Overall)")
    p.add_argument("--features", nargs="+", default=None, metavar="COLUMN", help="feature columns")
    p.add_argument("--seed", type=int, default=42, help="train/dev split seed (default 42)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(handler=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    from rmeval.fit import fit

    r = fit(
        args.csv,
        args.output,
        model=args.model,
        log_linear=args.log_linear,
        target=args.target,
        features=args.features,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    for line in r.summary():
        _print(line)
    _print(f"wrote {r.out}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render the results table (and a fit) as an executed notebook with PNG figures",
        description="Build a Jupyter notebook from the table (top runs, distributions of Overall "
        "and the sections, Overall vs budget, per-subset heatmap; with --fit also predicted vs "
        "actual and the top coefficients), execute it, and write it with its figures as PNG in "
        "<stem>_figures/ beside it. Regenerating from the same data gives identical files.",
    )
    p.add_argument("csv", help="results table (local or gs://)")
    p.add_argument(
        "--output",
        "--out",
        dest="output",
        required=True,
        help="notebook to write (a local .ipynb path)",
    )
    p.add_argument("--fit", default=None, metavar="DIR", help="output directory of `rmeval fit`")
    p.add_argument("--overwrite", action="store_true", help="replace an existing notebook")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from rmeval.report import report

    r = report(
        args.csv, args.output, fit_dir=args.fit, overwrite=args.overwrite, timeout=args.timeout
    )
    _print(
        f"wrote {r.notebook} and {len(r.figures)} figure(s) in {r.figures[0].parent if r.figures else '-'}"
    )
    return 0


# --------------------------------------------------------------------------- pipeline, demo


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="plan -> launch -> collect -> results/<dataset>/ -> fit -> report, from a YAML config",
        description="Run the whole pipeline from a YAML config (keys: see rmeval/pipeline.py). "
        "Idempotent: published runs are skipped, an unchanged table writes nothing.",
    )
    p.add_argument("config", help="pipeline YAML (relative paths are relative to it)")
    p.set_defaults(handler=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from rmeval.pipeline import load_config, run_pipeline

    result = run_pipeline(load_config(args.config))
    for line in result.lines():
        _print(line)
    return result.exit_code


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build a local bucket of tiny EasyLM reward models and run the pipeline on it",
        description="The embedded default: a local directory laid out like the real bucket "
        "(real EasyLM checkpoints of tiny LLaMA reward models, feature counts, a tokenizer, a "
        "RewardBench-format sample), then `rmeval pipeline` on it with the local backend.",
    )
    p.add_argument("--workdir", default="demo-work", help="where the bucket and store live")
    p.add_argument("--results-dir", default="results", help="results/<dataset>/ goes here")
    p.add_argument("--runs", type=int, default=6, help="number of checkpoints (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from rmeval.demo import build
    from rmeval.pipeline import load_config, run_pipeline

    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    lay = build(args.workdir, runs=args.runs, seed=args.seed, results_dir=args.results_dir)
    _print(f"bucket:  {lay.checkpoints} ({len(lay.runs)} checkpoints)")
    _print(f"config:  {lay.config}")
    result = run_pipeline(load_config(lay.config))
    for line in result.lines():
        _print(line)
    return result.exit_code


# --------------------------------------------------------------------------- evaluate, rewardbench-sample


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a sequence-classifier reward model on RewardBench -> metrics.json",
        description="Score a Hugging Face reward model (num_labels=1) on RewardBench. "
        "--scoring trained (default) scores EasyLM's training text (bos + <|user|>\\n{prompt}"
        "\\n<|assistant|>\\n{response}</s>, stripped) and reads the reward at the eos, as the "
        "model was trained; --scoring run_rm reproduces RewardBench's run_rm (fastchat tulu "
        "text + eos, or the tokenizer's chat template; reward at the last non-pad token). "
        "Left truncation, length-sorted batches packed by a token budget; a reward does not "
        "depend on its batch. Writes metrics.json as run_rm saves it (chat_template: "
        "easylm-trained, tulu or tokenizer), atomically; prints the section scores and Overall.",
    )
    options.add_arguments(p, options.EVALUATE)
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from rmeval.rewardbench.evaluate import DEFAULT_MAX_TOKENS, evaluate, format_summary

    result = evaluate(
        args.model,
        args.eval_data,
        args.output,
        subsets=args.subsets,
        scoring_format=args.scoring,
        chat_template=args.chat_template,
        max_length=args.max_length,
        max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
        device=args.device,
        dtype=args.dtype,
        save_scores=args.save_scores,
        overwrite=args.overwrite,
        model_name=args.model_name,
    )
    _print(format_summary(result))
    if args.output:
        _print(f"metrics: {args.output}")
    return 0


def _add_rewardbench_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rewardbench-sample",
        help="write a deterministic RewardBench-format sample (all 23 subsets, generated text)",
    )
    p.add_argument("out", help="JSON-lines file to write (local or gs://)")
    p.add_argument("--per-subset", type=int, default=10, help="pairs per subset (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_rewardbench_sample)


def _run_rewardbench_sample(args: argparse.Namespace) -> int:
    from rmeval.rewardbench.data import write_sample

    out = write_sample(
        args.out, per_subset=args.per_subset, seed=args.seed, overwrite=args.overwrite
    )
    _print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- commands
# Each stage adds its _add_/_run_ pair above this line and registers it in COMMANDS.

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ls,
    _add_plan,
    _add_launch,
    _add_run_one,
    _add_status,
    _add_convert,
    _add_verify,
    _add_evaluate,
    _add_rewardbench_sample,
    _add_collect,
    _add_history,
    _add_fit,
    _add_report,
    _add_pipeline,
    _add_demo,
]


class _VersionAction(argparse.Action):
    """``--version``: asks for the version (git, in a checkout) only when given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        text = "show program's version number and exit"
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=text)

    def __call__(self, parser, namespace, values, option_string=None):
        from rmeval import version

        _print(f"rmeval {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmeval",
        description="Turn EasyLM reward-model checkpoints into Hugging Face models, score them "
        "on RewardBench, and collect the regressor table.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `rmeval plan -v …` as well as `rmeval -v plan …`
        command.add_argument(
            "-v", "--verbose", dest="sub_verbose", action="count", default=0, help="debug logging"
        )
    return parser


# Commands that reach GCS / Beaker from a task or a CI job: for them a GOOGLE_SERVICE_ACCOUNT
# secret is checked before any work (rmeval/credentials.py; storage uses it in memory, for
# every command). `plan` lists a gs:// source (the convert-and-eval workflow's plan job runs
# it with only that secret); `pipeline` plans, launches and collects.
CREDENTIAL_COMMANDS = frozenset({"plan", "run-one", "launch", "collect", "pipeline"})


# Options that name what a command writes: what an OSError without a file name is about.
OUTPUT_OPTIONS = ("out", "output", "results_dir", "save_scores", "store", "log_dir", "workdir")


def _output_paths(args: argparse.Namespace) -> str | None:
    paths = [str(getattr(args, k)) for k in OUTPUT_OPTIONS if getattr(args, k, None)]
    return ", ".join(paths) or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    args.verbose += args.sub_verbose
    _setup_logging(args.verbose)
    try:
        if args.command in CREDENTIAL_COMMANDS:
            from rmeval import credentials

            credentials.check_google_env()
        return int(args.handler(args) or 0)
    except RmevalError as exc:
        print(f"rmeval: error: {exc}", file=sys.stderr, flush=True)
        if args.verbose:
            log.debug("traceback", exc_info=True)
        return exc.exit_code
    except OSError as exc:
        # The last resort for a write no stage translated (read-only or full disk,
        # permissions): still one line that names the path and what the errno means.
        from rmeval.storage import os_error_line

        line = os_error_line(exc, fallback=_output_paths(args))
        print(f"rmeval: error: {line}", file=sys.stderr, flush=True)
        if args.verbose:
            log.debug("traceback", exc_info=True)
        return 1
    except KeyboardInterrupt:
        print("rmeval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
