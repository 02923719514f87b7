"""Command line: parses arguments, calls one function per command, prints.

No logic lives here. Heavy imports (torch, transformers, google-cloud-storage) happen inside
the handlers so that ``rmeval --help`` stays fast. Each command has a ``_add_<name>`` that
declares its arguments and a ``_run_<name>`` that calls the stage module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rmeval import options, outcome
from rmeval.errors import AlreadyExistsError, RmevalError, UsageError

log = logging.getLogger("rmeval")

Handler = Callable[[argparse.Namespace], int]

# What an AlreadyExistsError of the library (which names the path only) ends with: each
# command's own way to replace the output (`exists_hint` of its parser; pipeline and demo
# name the config key, see rmeval.pipeline.exists_hint).
OVERWRITE_HINT = "pass --overwrite to replace it"
FORCE_HINT = "pass --force to replace it"


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
    p.set_defaults(handler=_run_plan, exists_hint=OVERWRITE_HINT)


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
    p.set_defaults(handler=_run_run_one, exists_hint=FORCE_HINT)


def _run_run_one(args: argparse.Namespace) -> int:
    from rmeval import run
    from rmeval.preflight import run_options

    result = run.run_one(args.checkpoint, args.store, **run_options(args))
    args.result_record = result.record()  # the status file's fields (--result-json)
    if result.status == "claimed":  # another runner has it: not an error
        _print(result.detail)
        return 0
    _print(f"{result.status} {result.run} {result.result_uri}")
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-score a published run with its recorded settings and compare",
        description="Re-score <store>/<run>/ from its kept model, or by converting its "
        "checkpoint again, with the settings its provenance.json records (--dtype, --device, "
        "--scoring override them), and compare per-subset accuracies and per-pair rewards "
        "with the stored ones. Exit 1 when a decision changed at equal settings or a reward "
        "moved by more than --reward-tolerance.",
    )
    options.add_arguments(p, options.REPRODUCE)
    p.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from rmeval import reproduce

    kwargs = options.values(args, options.REPRODUCE)
    run = reproduce.choose_run(args.run, kwargs.pop("random_new"), kwargs["store"])
    if run is None:
        _print("reproduce: the table has no new run; nothing to do")
        return 0
    result = reproduce.reproduce(run, kwargs.pop("store"), progress=False, **kwargs)
    for line in result.lines():
        _print(line)
    return 0 if result.ok else 1


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
    p.add_argument("--source", default=None, help="checkpoints too: those not started are planned")
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

    if not args.store:
        raise UsageError("status: --store is required")
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
    p.set_defaults(handler=_run_convert, exists_hint=OVERWRITE_HINT)


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
    p.set_defaults(handler=_run_collect, exists_hint=OVERWRITE_HINT)


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
        target=args.target,
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


def _add_diff(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two versions of a results table (runs added, removed, changed)",
        description="Each side is a CSV, a results dataset directory, DIR@v3 (a HISTORY "
        "version) or DIR@<git rev> (e.g. results/helpsteer2@HEAD~1); with --dataset-dir, "
        "a bare v3 or git rev. Prints markdown (default) or --json: runs added, removed and "
        "changed by name, each changed run's Overall and section deltas, and the best run "
        "before and after. Tables with different scoring formats or weights are refused "
        "unless --force.",
    )
    p.add_argument(
        "old",
        nargs="?",
        help="older table: CSV, DIR, DIR@v3, DIR@HEAD~1 (or v3 with --dataset-dir)",
    )
    p.add_argument("new", nargs="?", help="newer table, the same forms")
    p.add_argument(
        "--last",
        action="store_true",
        help="with --dataset-dir and no OLD/NEW: the newest version against the one before",
    )
    p.add_argument("--dataset-dir", default=None, metavar="DIR", help="e.g. results/helpsteer2")
    p.add_argument("--table", default=None, help="table name in the dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument(
        "--force", action="store_true", help="diff tables with different scoring or weights"
    )
    p.set_defaults(handler=_run_diff)


def _run_diff(args: argparse.Namespace) -> int:
    from rmeval import diff

    old, new = args.old, args.new
    if args.last:
        if old is not None or args.dataset_dir is None:
            raise UsageError("--last takes --dataset-dir and no OLD/NEW")
        old, new = diff.last_versions(args.dataset_dir, args.table)
    elif new is None:
        raise UsageError("give OLD and NEW (or --dataset-dir DIR --last)")
    d = diff.diff(old, new, dataset_dir=args.dataset_dir, table=args.table, force=args.force)
    _print((diff.as_json(d) if args.json else diff.markdown(d)).rstrip("\n"))
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
    p.add_argument(
        "--target",
        default=None,
        help="score column to predict (default: what collect --target recorded, else Overall)",
    )
    p.add_argument("--features", nargs="+", default=None, metavar="COLUMN", help="feature columns")
    p.add_argument("--seed", type=int, default=42, help="train/dev split seed (default 42)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(handler=_run_fit, exists_hint=OVERWRITE_HINT)


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
    p.set_defaults(handler=_run_report, exists_hint=OVERWRITE_HINT)


def _run_report(args: argparse.Namespace) -> int:
    from rmeval.report import report

    r = report(
        args.csv, args.output, fit_dir=args.fit, overwrite=args.overwrite, timeout=args.timeout
    )
    _print(
        f"wrote {r.notebook} and {len(r.figures)} figure(s) in {r.figures[0].parent if r.figures else '-'}"
    )
    return 0


def _add_readme(sub: argparse._SubParsersAction) -> None:
    from rmeval.fit import MODELS

    p = sub.add_parser(
        "readme",
        help="fit, report and README.md of a results dataset (what GitHub shows in its folder)",
        description="Rebuild beside results/<dataset>/<table>.csv: the fit (<table>.<model>.fit/, "
        "when the table has feature columns and enough rows), the report notebook with its PNG "
        "figures, and README.md (run count, date, top runs, section scores, the fit's dev RMSE "
        "and R² beside the mean baseline, the figures). What is up to date with the table is "
        "kept; --rebuild rebuilds it all.",
    )
    p.add_argument("dataset_dir", help="e.g. results/helpsteer2")
    p.add_argument("--table", default=None, help="table name (default: the newest in HISTORY)")
    p.add_argument("--model", choices=MODELS, default="linear", help="regressor (default linear)")
    p.add_argument("--no-fit", action="store_true", help="no regressor")
    p.add_argument("--rebuild", action="store_true", help="rebuild even what is up to date")
    p.set_defaults(handler=_run_readme)


def _run_readme(args: argparse.Namespace) -> int:
    from rmeval.pipeline import dataset_outputs

    out, notes = dataset_outputs(
        args.dataset_dir,
        table=args.table,
        fit=False if args.no_fit else {"model": args.model},
        rebuild=args.rebuild,
    )
    for note in notes:
        _print(f"note: {note}")
    for p in (out.fit_dir, out.report, out.readme):
        if p is not None:
            _print(f"wrote {p}")
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
    from rmeval.pipeline import load_config

    result = _pipeline(load_config(args.config), args.config)
    for line in result.lines():
        _print(line)
    return result.exit_code


def _pipeline(cfg: dict, config: str | os.PathLike):
    """run_pipeline, with an existing output's hint naming the config key that placed it."""
    from rmeval.pipeline import exists_hint, run_pipeline

    try:
        return run_pipeline(cfg)
    except AlreadyExistsError as exc:
        exc.hint = exc.hint or exists_hint(cfg, exc.path, config)
        raise


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
    from rmeval.pipeline import load_config

    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    lay = build(args.workdir, runs=args.runs, seed=args.seed, results_dir=args.results_dir)
    _print(f"bucket:  {lay.checkpoints} ({len(lay.runs)} checkpoints)")
    _print(f"config:  {lay.config}")
    result = _pipeline(load_config(lay.config), lay.config)
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
        "easylm-trained, tulu or tokenizer), atomically; prints the section scores and Overall. "
        "--benchmark rewardbench2: RewardBench 2 rows (every completion one text, best-of-n "
        "with shared tie credit, the Ties formula), run_v2's metrics.json and Overall.",
    )
    options.add_arguments(p, options.EVALUATE)
    p.set_defaults(handler=_run_evaluate, exists_hint=OVERWRITE_HINT)


def _run_evaluate(args: argparse.Namespace) -> int:
    from rmeval.rewardbench.evaluate import DEFAULT_MAX_TOKENS, evaluate, format_summary

    result = evaluate(
        args.model,
        args.eval_data,
        args.output,
        benchmark=args.benchmark,
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
        help="write a deterministic RewardBench-format sample (all 23 subsets, generated text; "
        "--benchmark rewardbench2: all six RewardBench 2 subsets, Ties ref/tied pairs)",
    )
    options.add_arguments(p, options.SAMPLE)
    p.add_argument("out", help="JSON-lines file to write (local or gs://)")
    p.add_argument("--per-subset", type=int, default=10, help="pairs per subset (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_rewardbench_sample, exists_hint=OVERWRITE_HINT)


def _run_rewardbench_sample(args: argparse.Namespace) -> int:
    from rmeval.rewardbench.data import write_sample

    out = write_sample(
        args.out,
        per_subset=args.per_subset,
        seed=args.seed,
        overwrite=args.overwrite,
        benchmark=args.benchmark,
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
    _add_reproduce,
    _add_status,
    _add_convert,
    _add_verify,
    _add_evaluate,
    _add_rewardbench_sample,
    _add_collect,
    _add_history,
    _add_diff,
    _add_fit,
    _add_report,
    _add_readme,
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
        # the status file of the process that runs this command for someone (rmeval/outcome.py)
        command.add_argument(outcome.FLAG, dest="result_json", default=None, help=argparse.SUPPRESS)
    return parser


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
    if args.verbose:  # which code runs: what a bug report needs first
        from rmeval import version

        log.debug("rmeval %s from %s: %s", version(), os.path.dirname(__file__), args.command)
    # Google credentials (GOOGLE_SERVICE_ACCOUNT) are checked by the first GCS client a
    # command asks for (rmeval.storage.gcs_client), whichever the command.
    try:
        code = int(args.handler(args) or 0)
        if args.result_json:
            record = outcome.success(code, getattr(args, "result_record", None))
            outcome.write(args.result_json, record)
    except RmevalError as exc:
        if isinstance(exc, AlreadyExistsError) and exc.hint is None:
            exc.hint = getattr(args, "exists_hint", None)
        return _fail(args, exc, str(exc), exc.exit_code)
    except OSError as exc:
        # The last resort for a write no stage translated (read-only or full disk,
        # permissions): still one line that names the path and what the errno means.
        from rmeval.storage import os_error_line

        return _fail(args, exc, os_error_line(exc, fallback=_output_paths(args)), 1)
    except KeyboardInterrupt as exc:
        print("rmeval: interrupted", file=sys.stderr)
        outcome.write_failure(args.result_json, outcome.failure(exc, "interrupted", 130))
        return 130
    except Exception as exc:  # a bug: its traceback follows, and the status file says so
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        outcome.write_failure(args.result_json, outcome.failure(exc, message, 1))
        raise
    return code


def _fail(args: argparse.Namespace, exc: BaseException, line: str, code: int) -> int:
    """One line on stderr (and, with -v, the traceback with its causes: the Google or
    Beaker error a wrapper kept with ``raise … from``); the failure in the status file."""
    print(f"rmeval: error: {line}", file=sys.stderr, flush=True)
    if args.verbose:
        log.debug("traceback", exc_info=exc)
    outcome.write_failure(args.result_json, outcome.failure(exc, line, code))
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
