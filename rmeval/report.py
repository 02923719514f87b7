"""Render the results table (and optionally a fit) as an executed Jupyter notebook.

``rmeval report CSV [--fit DIR] --out report.ipynb``

The notebook is built with nbformat and executed with nbclient (kernel ``python3``), so its
tables and figures are stored in it: the top runs, the distribution of Overall and of each
section, Overall against budget, a per-subset heatmap and, with ``--fit``, the dev metrics
beside the mean baseline, the learning curve, predicted vs actual and the largest
coefficients. The figures are drawn by :mod:`rmeval.figures`; their titles carry the
dataset, the run count and the table's version and date (:func:`table_context`). Every
figure is also written as a PNG into ``<stem>_figures/`` beside the notebook — the very bytes
embedded in the notebook. Without ``--fit`` the notebook says why there is no regressor (the
table's own reason, e.g. no feature columns, when it cannot be fitted). An underdetermined
fit is called so, and its R² is not shown.

Regenerating from the same data gives byte-identical files: cell ids are fixed, execution
timing is not recorded, stderr output (warnings, font-cache notes) is dropped from the
stored outputs, PNGs carry no software/date metadata, the date comes from the table's
HISTORY record (else the file's modification day), and the notebook names the CSV by a
path relative to itself.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any

from rmeval import storage
from rmeval.errors import AlreadyExistsError, FitError
from rmeval.procutil import child_env
from rmeval.rewardbench.scoring import OVERALL, SECTION_NAMES, SUBSETS
from rmeval.table import (
    V2_OVERALL,
    figures_dir,  # where a notebook's PNGs go: <stem>_figures/
)

log = logging.getLogger(__name__)

KERNEL = "python3"
FIGURE_KEY = "rmeval_figure"  # cell metadata key naming the figure a cell draws
TOP_RUNS = 10


@dataclass
class ReportResult:
    notebook: Path
    figures: list[Path]


# --------------------------------------------------------------------------- context


def table_context(csv: str, frame) -> dict[str, Any]:
    """What the titles say about the table: ``dataset`` (``<dataset>/<table>`` for a table
    in a results directory with a HISTORY.jsonl, else the table's name), ``table`` (file
    name), ``n`` (runs with an Overall), and ``version`` and ``date`` of the HISTORY record
    whose sha256 is the CSV's (else no version and the file's modification day, UTC)."""
    from rmeval import results

    name = storage.basename(csv)
    stem = name[:-4] if name.endswith(".csv") else name
    out: dict[str, Any] = {
        "dataset": stem,
        "table": name,
        "n": int(frame[OVERALL].notna().sum()),
        "version": None,
        "date": None,
    }
    if not storage.is_gcs(csv):
        path = storage.local_path(csv)
        if (path.parent / results.HISTORY_FILE).exists():
            out["dataset"] = f"{path.parent.name}/{stem}"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            for rec in results.read_history(path.parent):
                if rec.get("table") == name and rec.get("sha256") == digest:
                    out["version"] = rec.get("version")
                    out["date"] = str(rec.get("time") or "")[:10] or None
    if out["date"] is None:
        info = next(iter(storage.list_objects(csv)), None)
        updated = info.updated if info is not None else None
        out["date"] = updated.astimezone(timezone.utc).date().isoformat() if updated else "undated"
    return out


def fit_summary(metrics: dict[str, Any]) -> str:
    """The fit's dev quality in words (markdown): RMSE and R² beside the mean baseline's,
    or, for an underdetermined fit, that it is one, instead of its R²."""
    dev, base = metrics["dev"], metrics["baseline"]
    bdev = base["dev"]

    def num(v):
        return "n/a" if v is None else f"{v:.4g}".replace("-", "−")

    baseline = f"mean baseline (every run predicted as the training mean, {base['prediction']:.4f})"
    if metrics.get("underdetermined"):
        n_terms = metrics["n_terms"]
        return (
            f"**Underdetermined fit, so no R² is shown:** {metrics['n_train']} training rows "
            f"for {n_terms} terms + intercept ({n_terms + 1} unknowns). Least squares then has "
            "many exact solutions: the fit reproduces its training rows, and neither its "
            "coefficients nor its dev R² say anything about the features. It needs a table "
            f"of at least {metrics['rows_needed']} runs (or fewer features).\n\n"
            f"Dev ({metrics['n_dev']} runs): RMSE {num(dev['rmse'])}; "
            f"{baseline}: RMSE {num(bdev['rmse'])}."
        )
    return (
        f"Dev ({metrics['n_dev']} runs): RMSE {num(dev['rmse'])}, R² {num(dev['r2'])}; "
        f"{baseline}: RMSE {num(bdev['rmse'])}, R² {num(bdev['r2'])}."
    )


# --------------------------------------------------------------------------- building


_SETUP = """\
import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display

from rmeval import figures

pd.set_option("display.max_columns", 50)
pd.set_option("display.width", 200)
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9})


def show(fig):
    \"\"\"Display the figure as a PNG with no volatile metadata.\"\"\"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    display(Image(data=buf.getvalue(), format="png"))
"""


def _read_code(var: str, uri: str, relative: str) -> str:
    if storage.is_gcs(uri):
        return f"from rmeval import storage\n\n{var} = pd.read_csv(io.BytesIO(storage.read_bytes({uri!r})))"
    return f"{var} = pd.read_csv({relative!r})"


def _rel(uri: str, base: Path) -> str:
    if storage.is_gcs(uri):
        return uri
    return os.path.relpath(storage.local_path(uri).resolve(), base.resolve()).replace(os.sep, "/")


def build_notebook(
    csv: str,
    notebook_dir: Path,
    frame,
    fit_dir: str | None = None,
    fit_info=None,
    meta: dict[str, Any] | None = None,
    no_fit: str | None = None,
):
    """The (unexecuted) notebook for ``frame`` read from ``csv``. Code cells that draw a
    figure carry ``metadata[FIGURE_KEY]`` = the figure's file stem. ``meta`` is
    :func:`table_context`; ``no_fit`` what to say in place of the regressor section when
    there is no ``fit_dir``."""
    import nbformat
    from nbformat import v4

    from rmeval.fit import LABEL_COLUMNS

    meta = meta or table_context(csv, frame)
    cols = list(map(str, frame.columns))
    sections = [s for s in SECTION_NAMES if s in cols]
    subsets = [s for s in SUBSETS if s in cols]
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    csv_rel = _rel(csv, notebook_dir)
    cells = []

    def md(text: str) -> None:
        cells.append(v4.new_markdown_cell(text))

    def code(src: str, figure: str | None = None) -> None:
        cell = v4.new_code_cell(src)
        if figure:
            cell.metadata[FIGURE_KEY] = figure
        cells.append(cell)

    when = f"version {meta['version']} of {meta['date']}" if meta["version"] else meta["date"]
    md(
        f"# RewardBench results: {meta['dataset']}\n\n"
        f"{meta['n']} runs · {when} · `{meta['table']}`. "
        "Generated by `rmeval report`; regenerate rather than edit."
    )
    code(_SETUP)
    code(
        _read_code("df", csv, csv_rel)
        + f"\nMETA = {meta!r}\nLABEL = {label!r}\nSECTIONS = {sections!r}\nSUBSETS = {subsets!r}\n"
        "labels = figures.run_labels(df[LABEL]) if LABEL else [str(i) for i in df.index]\n"
        "df.shape"
    )

    md("## Top runs by Overall")
    shown = [c for c in ([label] if label else []) + ["budget", *sections, OVERALL] if c in cols]
    code(
        f"top = df.sort_values({OVERALL!r}, ascending=False, kind='mergesort').head({TOP_RUNS})\n"
        f"top[{shown!r}].round(4).reset_index(drop=True)"
    )

    md("## Distribution of Overall and of each section")
    code("show(figures.overall_distribution(df, META))", figure="overall_distribution")
    if sections:
        code(
            "show(figures.section_distributions(df, SECTIONS, META))",
            figure="section_distributions",
        )
        code(f"df[SECTIONS + [{OVERALL!r}]].describe().round(4)")

    md("## Overall against budget")
    if "budget" in cols:
        code("show(figures.overall_vs_budget(df, labels, META))", figure="overall_vs_budget")
    else:
        md("_The table has no `budget` column._")

    if V2_OVERALL in cols:
        md(
            "## RewardBench vs RewardBench 2\n\n"
            f"`{OVERALL}` (RewardBench) beside `{V2_OVERALL}` (RewardBench 2: the mean of its "
            "six subsets), per run."
        )
        name_col = "name" if "name" in cols else None
        pair = [c for c in [name_col, OVERALL, V2_OVERALL] if c]
        code(
            f"both = df[{pair!r}].sort_values({OVERALL!r}, ascending=False, kind='mergesort')\n"
            "both.round(4).reset_index(drop=True)"
        )

    md("## Accuracy per RewardBench subset")
    if subsets:
        code("show(figures.subset_heatmap(df, SUBSETS, labels, META))", figure="subset_heatmap")
    else:
        md("_The table has no per-subset accuracy columns._")

    if fit_dir is None:
        md(f"## Regressor\n\n_{no_fit or 'No fit was given.'}_")
    else:
        metrics, _coefs = fit_info
        fit_rel = _rel(fit_dir, notebook_dir)
        lightgbm = metrics.get("model") == "lightgbm"
        terms_file = "importance.jsonl" if lightgbm else "coef.jsonl"
        md(
            f"## Regressor: {metrics.get('model')} on {len(metrics.get('features', []))} feature(s)"
            f"{' (log-linear)' if metrics.get('log_linear') else ''}, target {metrics.get('target')}"
            f"\n\n{fit_summary(metrics)}"
        )
        if storage.is_gcs(fit_dir):
            load = (
                "from rmeval import storage\n\n"
                f"FIT = {fit_rel!r}\n"
                "metrics = json.loads(storage.read_text(FIT + '/metrics.json'))\n"
                f"coefs = [json.loads(x) for x in storage.read_text(FIT + '/{terms_file}').splitlines() if x]\n"
                "preds = pd.read_csv(io.BytesIO(storage.read_bytes(FIT + '/predictions.csv')))\n"
            )
        else:
            load = (
                f"FIT = {fit_rel!r}\n"
                "with open(FIT + '/metrics.json', encoding='utf-8') as f:\n"
                "    metrics = json.load(f)\n"
                f"with open(FIT + '/{terms_file}', encoding='utf-8') as f:\n"
                "    coefs = [json.loads(x) for x in f if x.strip()]\n"
                "preds = pd.read_csv(FIT + '/predictions.csv')\n"
            )
        code(
            load
            + "pd.DataFrame([{'training rows': p['n_train'], 'underdetermined': p.get('underdetermined'),\n"
            "               'train RMSE': p['train']['rmse'], 'dev RMSE': p['dev']['rmse']}\n"
            "              for p in metrics['learning_curve']]).round(6)"
        )
        code(
            "show(figures.predicted_vs_actual(preds, metrics, META))", figure="predicted_vs_actual"
        )
        code("show(figures.learning_curve(metrics, META))", figure="learning_curve")
        code(
            "show(figures.top_terms(coefs, metrics, META))",
            figure="top_importances" if lightgbm else "top_coefficients",
        )
        key = "importance" if lightgbm else "coef"
        code(f"pd.DataFrame(coefs)[['feat', {key!r}]].head(30)")

    nb = v4.new_notebook()
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata = {
        "kernelspec": {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}
    }
    nbformat.validate(nb)
    return nb


# --------------------------------------------------------------------------- executing


def _execute(nb, workdir: Path, timeout: int) -> None:
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    with tempfile.TemporaryDirectory(prefix="rmeval-kernel-") as kdir:
        # IPC transport in a private dir: no TCP ports, no "unencrypted TCP" warning.
        km = KernelManager(kernel_name=KERNEL, transport="ipc", ip=str(Path(kdir) / "kernel"))
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            kernel_name=KERNEL,
            record_timing=False,
            allow_errors=False,
            resources={"metadata": {"path": str(workdir)}},
        )
        try:
            client.execute(env=child_env())  # the kernel imports this same rmeval
        except CellExecutionError as exc:
            ename = getattr(exc, "ename", "") or "error"
            evalue = (getattr(exc, "evalue", "") or "").splitlines()
            raise FitError(
                f"report notebook failed: {ename}: {evalue[0] if evalue else ''} "
                "(run with -v for the cell)"
            ) from exc
        except (CellTimeoutError, DeadKernelError, TimeoutError) as exc:
            raise FitError(f"report notebook did not finish: {type(exc).__name__}") from exc
        finally:
            # nbclient shuts down only kernels it created itself
            if km.has_kernel:
                km.shutdown_kernel(now=False)


def _clean(nb) -> None:
    """Drop what changes from run to run without the data changing."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                log.debug("notebook stderr: %s", out.get("text", "").strip())
                continue
            kept.append(out)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)


def _figures(nb) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for cell in nb.cells:
        name = cell.metadata.get(FIGURE_KEY)
        if not name:
            continue
        pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        if len(pngs) != 1:
            raise FitError(
                f"report notebook: cell drawing {name!r} produced {len(pngs)} images, expected 1"
            )
        out[f"{name}.png"] = base64.b64decode(pngs[0])
    return out


# --------------------------------------------------------------------------- report


def report(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fit_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: int = 600,
) -> ReportResult:
    """Build, execute and write the report notebook ``out`` (a local ``.ipynb``) and its
    PNG figures (``<stem>_figures/``). Existing output needs ``overwrite``."""
    import nbformat

    from rmeval.fit import read_fit, read_table, unfit_reason

    csv = os.fspath(csv)
    out_s = os.fspath(out)
    if storage.is_gcs(out_s):
        raise FitError(f"{out_s}: the report is written locally; give a local path for --out")
    nb_path = storage.local_path(out_s)
    if nb_path.suffix != ".ipynb":
        raise FitError(f"{nb_path}: --out must name a .ipynb file")
    fig_dir = figures_dir(nb_path)
    if not overwrite:
        for p in (nb_path, fig_dir):
            if p.exists():
                raise AlreadyExistsError(p)

    frame = read_table(csv)
    if OVERALL not in frame.columns:
        raise FitError(f"{csv}: no {OVERALL!r} column; give a results table from `rmeval collect`")
    if frame[OVERALL].notna().sum() == 0:
        raise FitError(f"{csv}: the {OVERALL!r} column has no values")
    fit_info = None
    fit_s = None
    no_fit = None
    if fit_dir is not None:
        fit_s = os.fspath(fit_dir)
        fit_info = read_fit(fit_s)
    else:
        reason = unfit_reason(csv, frame)
        no_fit = (
            f"No regressor was fitted: {reason}."
            if reason
            else "No fit was given: `rmeval fit TABLE --out DIR`, then `rmeval report TABLE "
            "--fit DIR --out ...` adds it here."
        )
    meta = table_context(csv, frame)

    nb_path.parent.mkdir(parents=True, exist_ok=True)
    nb = build_notebook(csv, nb_path.parent, frame, fit_s, fit_info, meta=meta, no_fit=no_fit)
    log.info("executing %d cells", len(nb.cells))
    _execute(nb, nb_path.parent, timeout)
    _clean(nb)
    nbformat.validate(nb)
    figures = _figures(nb)
    text = nbformat.writes(nb) + "\n"

    # the figures first, the notebook (what a reader opens) last; each swapped in whole
    with storage.staged_dir(fig_dir, overwrite=overwrite) as tmp:
        for name, data in sorted(figures.items()):
            (tmp / name).write_bytes(data)
    storage.write_bytes(nb_path, text.encode("utf-8"), overwrite=overwrite)
    return ReportResult(notebook=nb_path, figures=[fig_dir / n for n in sorted(figures)])


def figure_names(nb_path: str | os.PathLike) -> list[str]:
    """The figure stems stored in a report notebook, in order."""
    import nbformat

    nb = nbformat.read(os.fspath(nb_path), as_version=4)
    return [c.metadata[FIGURE_KEY] for c in nb.cells if FIGURE_KEY in c.metadata]


__all__ = [
    "FIGURE_KEY",
    "ReportResult",
    "build_notebook",
    "figure_names",
    "figures_dir",
    "fit_summary",
    "report",
    "table_context",
]
