"""results/<dataset>/README.md: run count and date, top runs by their distinguishing name
parts, section scores, the fit beside its mean baseline (or why there is none), figures
linked relatively; rebuilt by `rmeval readme`, untouched when nothing changed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rmeval import cli, pipeline, readme, results
from tests.fit_helpers import FEAT_A, FEAT_B, FEAT_NOISE, synthetic_table, write_table


def _dataset(tmp_path: Path, frame) -> tuple[Path, results.TablePaths]:
    """``frame`` as results/d/runs.csv with run names as collect writes them and a HISTORY
    record (version 3) for its bytes."""
    frame = frame.copy()
    frame["name"] = [
        f"rm-eval-hs2-counts-tiny_ID__{u}__SWAPS_{b}"
        for u, b in zip(frame.uuid, frame.budget, strict=True)
    ]
    paths = results.table_paths(tmp_path / "results", "d", "runs")
    write_table(frame, paths.csv)
    rec = {
        "version": 3,
        "time": "2026-11-28T12:00:00+00:00",
        "table": "runs.csv",
        "sha256": hashlib.sha256(paths.csv.read_bytes()).hexdigest(),
    }
    paths.history.write_text(json.dumps(rec) + "\n")
    return paths.csv.parent, paths


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", text)


def test_readme_of_a_fitted_table(tmp_path, capsys):
    frame = synthetic_table(n=40)
    ds, paths = _dataset(tmp_path, frame)
    assert cli.main(["readme", str(ds)]) == 0
    assert f"wrote {paths.readme}" in capsys.readouterr().out
    text = paths.readme.read_text()
    assert "**40 runs** · version 3 of 2026-11-28" in text
    # the best run first, named by its uuid and budget, with its scores
    best = frame.sort_values("Overall", ascending=False).iloc[0]
    row = next(ln for ln in text.splitlines() if ln.startswith("| 1 |"))
    assert re.search(rf"`ID {best.uuid[:8]}[0-9a-f]* · SWAPS {best.budget}`", row), row
    top = [ln.split(" | ")[1] for ln in text.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert len(top) == 10 and len(set(top)) == 10  # distinct labels
    assert f"{best.Overall:.4f}" in row and f"{best['Chat Hard']:.4f}" in row
    assert f"| Overall | {frame.Overall.mean():.4f} | {frame.Overall.min():.4f} |" in text
    # the fit's held-out RMSE and R² beside the mean baseline's, from its metrics.json
    metrics = json.loads((paths.fit_dir("linear") / "metrics.json").read_text())
    dev, base = metrics["dev"], metrics["baseline"]["dev"]
    assert f"| fit | {dev['rmse']:.4g} | {dev['r2']:.4g} |" in text
    assert re.search(rf"\| mean baseline .*\| {base['rmse']:.4g} \| .* \|", text)
    assert "Underdetermined" not in text
    # every link is relative and resolves; the figures are the report's PNGs, all of them
    links = _links(text)
    assert links and all(not link.startswith(("/", "http")) for link in links)
    assert all((ds / link).exists() for link in links)
    pngs = [link for link in links if link.endswith(".png")]
    assert sorted(Path(p).name for p in pngs) == sorted(p.name for p in paths.figures.iterdir())
    assert "predicted_vs_actual.png" in " ".join(pngs)

    # up to date: nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()}
    assert cli.main(["readme", str(ds)]) == 0
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()} == before


def test_underdetermined_fit_is_said_plainly(tmp_path):
    frame = synthetic_table(n=6)
    frame["extra::x=1"] = np.arange(6) % 3
    _, paths = _dataset(tmp_path, frame)
    out = pipeline.build_outputs(paths, report=False)
    metrics = json.loads((out.fit_dir / "metrics.json").read_text())
    assert metrics["underdetermined"]
    text = paths.readme.read_text()
    assert "**Underdetermined: not a usable fit.** 4 training rows for 4 terms" in text
    assert f"at least {metrics['rows_needed']} runs" in text
    assert "R²" not in text.split("## Regressor")[1].replace("its R²", "").replace("no R²", "")
    assert f"{metrics['dev']['r2']:.4g}".replace("-", "−") not in text


def test_no_features_or_too_few_rows_skip_the_fit_and_say_why(tmp_path):
    frame = synthetic_table(n=12).drop(columns=[FEAT_A, FEAT_B, FEAT_NOISE])
    frame["uuid"] = [f"{i:032x}" for i in range(12)]
    _, paths = _dataset(tmp_path / "a", frame)
    paths.csv.write_text(pd.read_csv(paths.csv).drop(columns=["budget"]).to_csv(index=False))
    notes: list[str] = []
    out = pipeline.build_outputs(paths, report=False, notes=notes)
    assert out.fit_dir is None and not paths.fit_dir().exists()
    text = paths.readme.read_text()
    assert "No regressor was fitted: runs.csv: no feature columns" in text
    assert "| # | run | Overall | Chat |" in text  # a scores table: no budget column
    assert notes == ["fit skipped: " + text.split("No regressor was fitted: ")[1].split(".\n")[0]]

    _, paths = _dataset(tmp_path / "b", synthetic_table(n=4))
    out = pipeline.build_outputs(paths, report=False)
    assert out.fit_dir is None
    assert "No regressor was fitted: runs.csv: 4 row(s) with Overall for 3 feature(s)" in (
        paths.readme.read_text()
    )
    assert readme.render(paths, no_fit="x") == paths.readme.read_text().replace(
        paths.readme.read_text().split("No regressor was fitted: ")[1].split(".\n")[0], "x"
    )
