"""rmeval report: a real nbclient execution of the generated notebook (python3 kernel)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest

from rmeval import fit as fitmod
from rmeval import report as reportmod
from rmeval.cli import main
from tests.fit_helpers import FEAT_A, FEAT_B, FEAT_NOISE, synthetic_table, write_table

BASE_FIGURES = {
    "overall_distribution",
    "section_distributions",
    "overall_vs_budget",
    "subset_heatmap",
}
FIT_FIGURES = {"predicted_vs_actual", "learning_curve", "top_coefficients"}


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        out.append((kind, body))
        pos += 12 + length
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    kind, body = _png_chunks(data)[0]
    assert kind == b"IHDR"
    return struct.unpack(">II", body[:8])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One table, one fit, one report — shared by the checks below."""
    root = tmp_path_factory.mktemp("report")
    csv = write_table(synthetic_table(n=60), root / "results" / "runs.csv")
    fit_dir = root / "fits" / "linear"
    fitmod.fit(csv, fit_dir)
    out = root / "results" / "report.ipynb"
    res = reportmod.report(csv, out, fit_dir=fit_dir)
    return SimpleNamespace(root=root, csv=csv, fit_dir=fit_dir, out=out, res=res)


def test_notebook_validates_and_holds_the_figures(made):
    out, res = made.out, made.res
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    assert res.notebook == out
    figures = {
        c.metadata[reportmod.FIGURE_KEY]: c for c in nb.cells if reportmod.FIGURE_KEY in c.metadata
    }
    assert set(figures) == BASE_FIGURES | FIT_FIGURES
    fig_dir = reportmod.figures_dir(out)
    assert fig_dir == out.parent / "report_figures"
    assert sorted(p.name for p in fig_dir.iterdir()) == sorted(f"{n}.png" for n in figures)
    assert sorted(res.figures) == sorted(fig_dir.iterdir())
    for name, cell in figures.items():
        pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1
        data = base64.b64decode(pngs[0])
        # the exported file is the very figure stored in the notebook
        assert (fig_dir / f"{name}.png").read_bytes() == data
        w, h = _png_size(data)
        assert w > 200 and h > 150
        chunk_kinds = {k for k, _ in _png_chunks(data)}
        assert not chunk_kinds & {b"tEXt", b"iTXt", b"zTXt", b"tIME"}  # no volatile metadata
    # every code cell ran, in order, without an error output; no timing metadata kept
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for c in code:
        assert "execution" not in c.metadata
        assert not [o for o in c.outputs if o["output_type"] == "error"]
        assert not [o for o in c.outputs if o.get("name") == "stderr"]
    assert [c.id for c in nb.cells] == [f"cell-{i:02d}" for i in range(len(nb.cells))]


def test_top_runs_table_matches_the_csv(made):
    import pandas as pd

    csv, out = made.csv, made.out
    nb = nbformat.read(out, as_version=4)
    table = pd.read_csv(csv)
    best = table.sort_values("Overall", ascending=False).iloc[0]
    top_cell = next(
        c for c in nb.cells if c.cell_type == "code" and "top = df.sort_values" in c.source
    )
    html = next(
        o["data"]["text/html"] for o in top_cell.outputs if "text/html" in o.get("data", {})
    )
    assert best["name"] in html
    assert f"{best['Overall']:.4f}".rstrip("0") in html
    # the notebook names the CSV relative to itself, so the results dir can move
    assert "'runs.csv'" in nb.cells[2].source and str(Path(csv).parent) not in nb.cells[2].source


def test_regenerating_gives_identical_files(made, tmp_path):
    csv, fit_dir, out = made.csv, made.fit_dir, made.out
    before = {p.name: p.read_bytes() for p in [out, *reportmod.figures_dir(out).iterdir()]}
    assert main(["report", csv, "--fit", str(fit_dir), "--out", str(out)]) == 1  # no --overwrite
    assert main(["report", csv, "--fit", str(fit_dir), "--out", str(out), "--overwrite"]) == 0
    after = {p.name: p.read_bytes() for p in [out, *reportmod.figures_dir(out).iterdir()]}
    assert after == before
    # no temporary files left beside it
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "report.ipynb",
        "report_figures",
        "runs.csv",
    ]


def test_changed_data_changes_only_what_depends_on_it(made, tmp_path):
    csv = made.csv
    import pandas as pd

    frame = pd.read_csv(csv)
    out_a = tmp_path / "a" / "report.ipynb"
    out_b = tmp_path / "b" / "report.ipynb"
    write_table(frame, tmp_path / "a" / "runs.csv")
    frame.loc[0, "budget"] = frame["budget"].max() + 5000  # only the budget plot moves
    write_table(frame, tmp_path / "b" / "runs.csv")
    for d in ("a", "b"):  # the titles' date is the file's day: the same for both
        os.utime(tmp_path / d / "runs.csv", (1_800_000_000, 1_800_000_000))
    reportmod.report(tmp_path / "a" / "runs.csv", out_a)
    reportmod.report(tmp_path / "b" / "runs.csv", out_b)
    fa, fb = reportmod.figures_dir(out_a), reportmod.figures_dir(out_b)
    changed = sorted(p.name for p in fa.iterdir() if p.read_bytes() != (fb / p.name).read_bytes())
    assert changed == ["overall_vs_budget.png"]
    assert set(reportmod.figure_names(out_a)) == BASE_FIGURES  # no fit, no fit figures


def test_table_without_budget_or_subsets_still_reports(tmp_path):
    frame = synthetic_table(n=12, subsets=False).drop(columns=["budget"])
    csv = write_table(frame, tmp_path / "runs.csv")
    res = reportmod.report(csv, tmp_path / "r.ipynb")
    assert {p.stem for p in res.figures} == {"overall_distribution", "section_distributions"}
    text = (tmp_path / "r.ipynb").read_text()
    assert "no `budget` column" in text and "no per-subset accuracy columns" in text


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no_overall", "no 'Overall' column"),
        ("bad_fit_dir", "missing; is"),
        ("corrupt_fit", "metrics.json: corrupt fit output"),
        ("old_fit", "metrics.json has no 'baseline' (written by an older rmeval)"),
        ("not_ipynb", "must name a .ipynb file"),
    ],
)
def test_bad_input_one_line_exit_1(tmp_path, capsys, case, expect):
    frame = synthetic_table(n=10)
    if case == "no_overall":
        frame = frame.drop(columns=["Overall"])
    csv = write_table(frame, tmp_path / "runs.csv")
    out = tmp_path / ("report.txt" if case == "not_ipynb" else "report.ipynb")
    argv = ["report", csv, "--out", str(out)]
    if case == "bad_fit_dir":
        (tmp_path / "empty").mkdir()
        argv += ["--fit", str(tmp_path / "empty")]
    if case == "old_fit":
        assert main(["fit", csv, "--out", str(tmp_path / "fit")]) == 0
        capsys.readouterr()
        metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
        del metrics["baseline"]
        (tmp_path / "fit" / "metrics.json").write_text(json.dumps(metrics))
        argv += ["--fit", str(tmp_path / "fit")]
    if case == "corrupt_fit":
        (tmp_path / "fit").mkdir()
        (tmp_path / "fit" / "metrics.json").write_text('{"model": "linear"')
        argv += ["--fit", str(tmp_path / "fit")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmeval: error: ") and expect in err[0]
    assert not out.exists() and not reportmod.figures_dir(out).exists()


# --------------------------------------------------------------------------- context, no fit


def _history_record(csv: Path, version: int, time: str) -> dict:
    """A HISTORY.jsonl record as `rmeval collect` writes it (rmeval/results.py)."""
    return {
        "version": version,
        "time": time,
        "table": csv.name,
        "rows": {"total": 0, "added": 0, "changed": 0, "removed": 0},
        "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
    }


def test_titles_take_dataset_version_and_date_from_history(tmp_path):
    ds = tmp_path / "results" / "helpsteer2"
    csv = Path(write_table(synthetic_table(n=12), ds / "counts-runs.csv"))
    os.utime(csv, (1_700_000_000, 1_700_000_000))  # 2023-11-14: not what the titles say
    records = [
        {**_history_record(csv, 1, "2026-11-01T10:00:00+00:00"), "sha256": "0" * 64},
        _history_record(csv, 2, "2026-11-30T06:00:00+00:00"),
    ]
    (ds / "HISTORY.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    frame = pd.read_csv(csv)
    meta = reportmod.table_context(str(csv), frame)
    assert meta == {
        "dataset": "helpsteer2/counts-runs",
        "table": "counts-runs.csv",
        "n": 12,
        "version": 2,
        "date": "2026-11-30",
    }
    res = reportmod.report(csv, ds / "counts-runs.report.ipynb")
    nb = nbformat.read(res.notebook, as_version=4)
    assert "helpsteer2/counts-runs" in nb.cells[0].source
    assert "12 runs · version 2 of 2026-11-30" in nb.cells[0].source
    assert repr(meta) in nb.cells[2].source  # the figures get exactly this context

    # edited after the last collect: no version; the file's own day
    frame.loc[0, "Overall"] = 0.5
    frame.to_csv(csv, index=False)
    os.utime(csv, (1_700_000_000, 1_700_000_000))
    assert reportmod.table_context(str(csv), frame)["version"] is None
    assert reportmod.table_context(str(csv), frame)["date"] == "2023-11-14"
    # a table outside a results directory is named by its file
    other = Path(write_table(frame, tmp_path / "loose" / "runs.csv"))
    assert reportmod.table_context(str(other), frame)["dataset"] == "runs"


def test_a_table_without_features_says_why_there_is_no_fit(tmp_path):
    """What fetch-results runs: the pipeline skips the fit of a featureless table (its
    note) and the report says why."""
    from rmeval import pipeline

    frame = synthetic_table(n=12).drop(columns=[FEAT_A, FEAT_B, FEAT_NOISE])
    csv = Path(write_table(frame, tmp_path / "results" / "d" / "runs.csv"))
    notes: list[str] = []
    fit_dir = pipeline._fit(csv, csv.with_name("runs.fit"), {}, rebuild=True, notes=notes)
    assert fit_dir is None and "no feature columns" in notes[0]
    res = reportmod.report(csv, csv.with_name("runs.report.ipynb"), fit_dir=fit_dir)
    nb = nbformat.read(res.notebook, as_version=4)
    section = next(c.source for c in nb.cells if c.source.startswith("## Regressor"))
    assert "No regressor was fitted: runs.csv: no feature columns" in section
    assert str(tmp_path) not in section  # the file's name, not where it lies
    # a fittable table without --fit says how to add one
    csv2 = write_table(synthetic_table(n=12), tmp_path / "b" / "runs.csv")
    nb2 = nbformat.read(reportmod.report(csv2, tmp_path / "b" / "r.ipynb").notebook, as_version=4)
    assert any("No fit was given" in c.source for c in nb2.cells)


def test_underdetermined_fit_is_called_so_not_given_an_r2(tmp_path):
    frame = synthetic_table(n=6)
    frame["extra::x=1"] = np.arange(6) % 3
    csv = write_table(frame, tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit")
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    res = reportmod.report(csv, tmp_path / "r.ipynb", fit_dir=tmp_path / "fit")
    nb = nbformat.read(res.notebook, as_version=4)
    section = next(c.source for c in nb.cells if c.source.startswith("## Regressor"))
    assert "Underdetermined fit, so no R² is shown" in section
    assert "4 training rows for 4 terms + intercept (5 unknowns)" in section
    assert "at least 7 runs" in section
    r2 = metrics["dev"]["r2"]
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for shown in (f"{r2:.4g}", f"{r2:.4g}".replace("-", "−"), f"{r2:.4f}"):
        assert shown not in markdown
    assert f"RMSE {metrics['baseline']['dev']['rmse']:.4g}" in section


def test_lightgbm_fit_report(tmp_path):
    csv = write_table(synthetic_table(n=60), tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit", model="lightgbm")
    res = reportmod.report(csv, tmp_path / "r.ipynb", fit_dir=tmp_path / "fit")
    assert {p.stem for p in res.figures} == BASE_FIGURES | {
        "predicted_vs_actual",
        "learning_curve",
        "top_importances",
    }
