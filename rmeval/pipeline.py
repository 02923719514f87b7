"""``rmeval pipeline CONFIG``: plan → launch → collect → results/<dataset>/ → fit → report
→ README.md.

The config is a YAML mapping; relative paths are relative to the config file. Its keys are
the one schema of :data:`rmeval.options.CONFIG_KEYS` (shared with the entries of
``.github/eval-schedule.yml``; unknown keys and wrong types are errors naming the key; old
spellings such as ``dataset_file``, ``features_dir`` and ``dataset`` are accepted with a
deprecation note)::

    source: bucket/rm_checkpoints/demo    # checkpoints: a local dir or gs://BUCKET/PREFIX
    prefix: demo-counts                   # run-name prefix
    store: store                          # where run-one publishes <run>/metrics.json
    backend: local                        # local (process pool) | beaker
    max_parallel: 2
    workspace: org/ws                     # beaker backend only
    tokenizer: bucket/tokenizer           # run-one's options (rmeval/options.py): required,
    eval_data: rewardbench-sample.jsonl   #   RewardBench data (default: the hub dataset),
    model_size: auto                      #   converter preset,
    num_heads: 4                          #   converter heads when model_size is auto,
    benchmarks: [rewardbench, rewardbench2]  # default [rewardbench]; one conversion feeds both
    eval_data_v2: rewardbench2-sample.jsonl  #   RewardBench 2 data (default: the hub dataset)
    scoring: trained                      #   trained (default) | run_rm; also dtype,
                                          #   subsets, max_length, rope_theta, rope_scaling
    feature_counts_dir: bucket/feats      # regressor_feats_ID__<uuid>__SWAPS_<n>.json
    dataset_total_size: 7000
    results_dir: results
    results_dataset: demo                 # results/<results_dataset>/<table>.csv
    table: counts-runs
    fit: {model: linear, seed: 42}        # or false; sub-keys model, log_linear, seed
    report: true
    log_dir: logs

Every run-one option is checked before any conversion (launch's
:func:`rmeval.launch.check_local_tasks` on the local backend; the values of each task on
Beaker). Re-running is idempotent: runs already published are skipped by ``plan``; an
unchanged table writes nothing, and the fit and report are only rebuilt when the table
changed. :func:`build_outputs` (the fit, report and README stage) is also what
``rmeval readme`` runs after fetch-results' collect.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rmeval import naming, options, storage
from rmeval.errors import ConfigError, ResultsError

log = logging.getLogger(__name__)

_PATH_KEYS = (
    "source",
    "store",
    "eval_data",
    "tokenizer",
    "feature_counts_dir",
    "experiments_file",
    "results_dir",
    "log_dir",
    "template",
)


@dataclass
class PipelineResult:
    runs_ok: int = 0
    runs_skipped: int = 0
    runs_failed: list[str] = field(default_factory=list)
    table: Path | None = None
    table_changed: bool = False
    history: Path | None = None
    issues: int = 0
    fit_dir: Path | None = None
    report: Path | None = None
    readme: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.runs_failed else 0

    def lines(self) -> list[str]:
        out = [
            f"runs:    {self.runs_ok} converted and scored now, {self.runs_skipped} skipped"
            + (f", {len(self.runs_failed)} FAILED" if self.runs_failed else "")
        ]
        out += [f"  failed: {f}" for f in self.runs_failed]
        out.append(
            f"table:   {self.table}" + ("" if self.table_changed else " (unchanged)")
            if self.table
            else "table:   (none)"
        )
        if self.history:
            out.append(f"history: {self.history}")
        if self.issues:
            out.append(f"issues:  {self.issues} (see the table's .issues.json)")
        out.append(f"fit:     {self.fit_dir}" if self.fit_dir else "fit:     (skipped)")
        out.append(f"report:  {self.report}" if self.report else "report:  (skipped)")
        if self.readme:
            out.append(f"readme:  {self.readme}")
        out += [f"note:    {n}" for n in self.notes]
        return out


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a pipeline config; relative paths become relative to its directory."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of pipeline settings")
    cfg = options.check_config(raw, str(path), options.PIPELINE, ConfigError)
    base = path.resolve().parent
    for key in _PATH_KEYS:
        v = cfg.get(key)
        if isinstance(v, str) and v and "://" not in v and not os.path.isabs(v):
            cfg[key] = str(base / v)
    cfg["backend"] = cfg.get("backend") or "local"
    if cfg["backend"] == "beaker" and not cfg.get("workspace"):
        raise ConfigError(f"{path}: backend beaker needs a workspace (ORG/NAME)")
    for key, default in (
        ("max_parallel", 1),
        ("table", "runs"),
        ("log_dir", str(base / "logs")),
        ("fit", {"model": "linear"}),
        ("report", True),
    ):
        if cfg.get(key) is None:
            cfg[key] = default
    return cfg


def _run_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """run-one's options of the config: the template variables of the planned tasks."""
    return {o.dest: cfg[o.dest] for o in options.TEMPLATE_OPTIONS if cfg.get(o.dest) is not None}


def run_pipeline(cfg: dict[str, Any], *, progress: bool = True) -> PipelineResult:
    """Run every stage of the pipeline described by ``cfg`` (see :func:`load_config`)."""
    from rmeval import collect, results, specs
    from rmeval.launch import launch
    from rmeval.plan import make_plan

    res = PipelineResult()

    # plan once: runs already published in the store (or launched on Beaker) are skipped
    # by exact name, and the plan names every run this pipeline's table may hold.
    values = _run_values(cfg)
    if cfg["backend"] == "local":
        values.setdefault("keep_model", False)
    plan, spec = make_plan(
        cfg["source"],
        template=cfg.get("template") or str(specs.DEFAULT_TEMPLATE),
        preset=cfg.get("preset"),
        prefix=cfg.get("prefix"),
        store=cfg["store"],
        values=values,
        workspace=cfg.get("workspace") if cfg["backend"] == "beaker" else None,
    )
    log.info("%s", plan.summary())
    if spec is not None:
        summary = launch(
            spec,
            backend=cfg["backend"],
            max_parallel=cfg["max_parallel"],
            workspace=cfg.get("workspace"),
            experiment_prefix=plan.experiment_prefix,
            log_dir=cfg["log_dir"],
            progress=progress,
        )
        log.info("%s", summary.lines()[-1])
        res.runs_ok = summary.count("ok") + summary.count("created")
        res.runs_skipped = sum(summary.count(k) for k in ("skipped", "claimed", "exists"))
        res.runs_failed = [f"{o.name} (log: {o.log})" for o in summary.failed]
    res.runs_skipped += len(plan.done)

    # collect into results/<dataset>/<table>.csv with history
    # Collect exactly this pipeline's runs: a store or workspace may hold other datasets'
    # runs, and prefixes can nest (helpsteer2-counts, helpsteer2-counts-v2).
    runs = {r.run for r in plan.to_run + plan.done}
    collect_opts: dict[str, Any] = {}
    if cfg["backend"] == "beaker":
        from rmeval.backends.beaker import source_uri

        source = source_uri(cfg["workspace"])
        collect_opts["experiment_prefix"] = plan.experiment_prefix
        collect_opts["names"] = {
            naming.eval_experiment_name(r, plan.experiment_prefix) for r in runs
        }
    else:
        source = cfg["store"]
        collect_opts["names"] = runs
    if cfg.get("feature_counts_dir"):
        collect_opts["feature_counts_dir"] = cfg["feature_counts_dir"]
        if cfg.get("dataset_total_size"):
            collect_opts["dataset_total_size"] = cfg["dataset_total_size"]
    elif cfg.get("experiments_file"):
        collect_opts["experiments_file"] = cfg["experiments_file"]
    outcome = collect.collect_and_write(
        source,
        results_dir=cfg["results_dir"],
        dataset=cfg["results_dataset"],
        table_name=cfg["table"],
        command="rmeval pipeline",
        **collect_opts,
    )
    paths = results.table_paths(cfg["results_dir"], cfg["results_dataset"], cfg["table"])
    table = paths.csv
    res.table = table if table.exists() else None
    res.table_changed = not outcome.unchanged
    res.issues = len(outcome.table.issues)
    res.history = paths.history if paths.history.exists() else None
    if res.table is None:
        res.notes.append("no runs were collected; nothing to fit or report")
        return res

    # fit, report and README, rebuilt only when the table changed (or they are missing)
    built = build_outputs(
        paths,
        fit=cfg.get("fit"),
        report=bool(cfg.get("report")),
        changed=res.table_changed,
        notes=res.notes,
    )
    res.fit_dir, res.report, res.readme = built.fit_dir, built.report, built.readme
    return res


# The config keys that name where the pipeline writes, most specific first.
_OUTPUT_KEYS = ("log_dir", "results_dir", "store")


def exists_hint(cfg: dict[str, Any], path: str, config: str | os.PathLike) -> str:
    """How a pipeline user deals with an output that is there already (an
    :class:`~rmeval.errors.AlreadyExistsError` at ``path``): a pipeline has no overwrite
    flag, so name the key of ``config`` whose location holds it."""
    target = path.rstrip("/")
    for key in _OUTPUT_KEYS:
        root = str(cfg.get(key) or "").rstrip("/")
        if root and (target == root or target.startswith(root + "/")):
            return f"move it away, or set {key} in {config} to another location"
    return f"move it away, or change where {config} writes"


@dataclass
class Outputs:
    """What :func:`build_outputs` left beside a table."""

    fit_dir: Path | None = None
    report: Path | None = None
    readme: Path | None = None
    figures: list[Path] = field(default_factory=list)


def build_outputs(
    paths,
    *,
    fit: dict[str, Any] | bool | None = True,
    report: bool = True,
    changed: bool = True,
    notes: list[str] | None = None,
) -> Outputs:
    """The fit (when the table has features and rows enough), the report notebook with its
    figures, and README.md of the table at ``paths`` (:class:`rmeval.table.TablePaths`).
    Without ``changed``, only what is missing or older than its inputs is rebuilt. Why a fit
    was skipped goes to ``notes`` and into the README."""
    from rmeval import readme
    from rmeval.fit import read_table, unfit_reason
    from rmeval.report import report as build_report

    notes = notes if notes is not None else []
    out = Outputs()
    table = paths.csv
    no_fit = None
    if fit:
        fit_opts = fit if isinstance(fit, dict) else {}
        model = fit_opts.get("model") or "linear"
        fit_dir = paths.fit_dir(model)
        reason = unfit_reason(table, read_table(str(table)))
        if reason:
            no_fit = reason
            notes.append(f"fit skipped: {reason}")
            if fit_dir.exists():
                storage.delete(str(fit_dir))
        else:
            out.fit_dir = _fit(table, fit_dir, fit_opts, rebuild=changed, notes=notes)
            if out.fit_dir is None:
                no_fit = notes[-1].removeprefix("fit skipped: ")
    if report:
        nb = paths.report
        if (
            changed
            or not nb.exists()
            or (out.fit_dir and not _newer(nb, out.fit_dir))
            or (out.fit_dir is None and _mentions_fit(nb))
        ):
            build_report(table, nb, fit_dir=out.fit_dir, overwrite=True)
        out.report = nb
        if paths.figures.is_dir():
            out.figures = _figure_order(nb, paths.figures)
    text = readme.render(paths, fit_dir=out.fit_dir, no_fit=no_fit, figures=out.figures)
    out.readme = readme.write(paths, text)
    return out


def dataset_outputs(
    dataset_dir: str | os.PathLike,
    *,
    table: str | None = None,
    fit: dict[str, Any] | bool = True,
    rebuild: bool = False,
) -> tuple[Outputs, list[str]]:
    """``rmeval readme``: :func:`build_outputs` for the table of a results dataset directory
    (``table``, else the one its newest HISTORY record names); what is older than the table
    is rebuilt (everything with ``rebuild``). Returns the outputs and the notes."""
    from rmeval import results

    d = storage.local_path(os.fspath(dataset_dir))
    csv = results.dataset_table(d, table)
    if not csv.is_file():
        raise ResultsError(f"{csv}: no such table; run `rmeval collect` into {d} first")
    paths = results.table_paths(d.parent, d.name, csv.stem)
    notes: list[str] = []
    stale = rebuild or not _newer(paths.report, csv)
    return build_outputs(paths, fit=fit, changed=stale, notes=notes), notes


def _mentions_fit(nb: Path) -> bool:
    """Whether a report notebook was built with a fit (its predicted-vs-actual figure)."""
    from rmeval.report import figure_names

    return nb.exists() and "predicted_vs_actual" in figure_names(nb)


def _figure_order(nb: Path, fig_dir: Path) -> list[Path]:
    from rmeval.report import figure_names

    return [fig_dir / f"{n}.png" for n in figure_names(nb) if (fig_dir / f"{n}.png").is_file()]


def _newer(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.stat().st_mtime >= b.stat().st_mtime


def _fit(
    table: Path, out: Path, opts: dict[str, Any], *, rebuild: bool, notes: list[str]
) -> Path | None:
    from rmeval.errors import FitError
    from rmeval.fit import fit

    wanted = {
        "model": opts.get("model", "linear"),
        "log_linear": bool(opts.get("log_linear", False)),
        "seed": int(opts.get("seed", 42)),
    }
    if out.exists() and not rebuild and _fit_settings(out) == wanted:
        return out
    try:
        fit(table, out, **wanted, overwrite=True)
    except FitError as exc:
        # A small table (e.g. a handful of demo runs) cannot support a regressor yet: say so
        # and carry on to the report rather than failing the whole pipeline.
        notes.append(f"fit skipped: {exc}")
        if out.exists():
            storage.delete(str(out))
        return None
    return out


def _fit_settings(fit_dir: Path) -> dict[str, Any] | None:
    """The settings an existing fit was made with (None if unreadable)."""
    from rmeval.errors import FitError
    from rmeval.fit import read_fit

    try:
        metrics, _ = read_fit(fit_dir)
    except FitError:
        return None
    return {k: metrics.get(k) for k in ("model", "log_linear", "seed")}
