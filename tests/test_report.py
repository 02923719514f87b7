"""rmeval report: a real nbclient execution of the generated notebook (python3 kernel)."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from rmeval import fit as fitmod
from rmeval import report as reportmod
from rmeval.cli import main
from tests.fit_helpers import synthetic_table, write_table

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
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmeval: error: ") and expect in err[0]
    assert not out.exists() and not reportmod.figures_dir(out).exists()
