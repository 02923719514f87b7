"""rmeval.figures: what each report figure shows, read back from the real matplotlib
objects (titles, labels, ticks, lines, texts), on tables and fits made by the real code."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from rmeval import figures, naming
from rmeval import fit as fitmod
from rmeval.rewardbench.scoring import SECTION_NAMES, SUBSETS
from tests.fit_helpers import FEAT_A, FEAT_B, FEAT_NOISE, synthetic_table, write_table

META = {"dataset": "helpsteer2/counts-runs", "table": "counts-runs.csv", "n": 0, "version": 3}
META["date"] = "2026-11-30"


def _meta(frame) -> dict:
    return {**META, "n": len(frame)}


def _titles(fig) -> str:
    parts = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    return "\n".join(parts)


def _line(ax, label_start: str):
    found = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith(label_start)]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def _uuid(i: int) -> str:
    return hashlib.md5(str(i).encode()).hexdigest()


def _budget_table(outlier: int | None = 13) -> pd.DataFrame:
    """Four runs at each of six budgets, Overall rising with the budget plus small noise;
    one run (``outlier``) far above the others."""
    rng = np.random.default_rng(1)
    frame = synthetic_table(n=24, seed=2)
    budgets = np.repeat([500, 1500, 2500, 3500, 4500, 5500], 4)
    frame["budget"] = budgets
    frame["name"] = [
        f"rm-eval-hs2-count-tulu2_13b_rm_human_datamodel_counts_7000_ID__{_uuid(i)}__SWAPS_{b}"
        for i, b in enumerate(budgets)
    ]
    frame["Overall"] = 0.55 + 2e-5 * budgets + rng.normal(0, 0.004, len(frame))
    if outlier is not None:
        frame.loc[outlier, "Overall"] += 0.1
    return frame


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    frame = synthetic_table(n=60)
    csv = write_table(frame, root / "runs.csv")
    fitmod.fit(csv, root / "fit")
    metrics, rows = fitmod.read_fit(root / "fit")
    preds = pd.read_csv(root / "fit" / "predictions.csv")
    return frame, metrics, rows, preds


def _all_figures(frame, metrics, rows, preds):
    meta = _meta(frame)
    labels = figures.run_labels(frame["name"])
    return {
        "overall_distribution": figures.overall_distribution(frame, meta),
        "section_distributions": figures.section_distributions(frame, SECTION_NAMES, meta),
        "overall_vs_budget": figures.overall_vs_budget(frame, labels, meta),
        "subset_heatmap": figures.subset_heatmap(frame, SUBSETS, labels, meta),
        "predicted_vs_actual": figures.predicted_vs_actual(preds, metrics, meta),
        "learning_curve": figures.learning_curve(metrics, meta),
        "top_coefficients": figures.top_terms(rows, metrics, meta),
    }


def test_every_panel_has_a_y_label_and_every_title_the_context(fitted):
    frame, metrics, rows, preds = fitted
    for name, fig in _all_figures(frame, metrics, rows, preds).items():
        for ax in fig.axes:
            assert ax.get_ylabel().strip(), f"{name}: a panel without a y label"
        titles = _titles(fig)
        assert "helpsteer2/counts-runs" in titles, name
        assert "v3 of 2026-11-30" in titles, name
        assert re.search(r"\b60 runs\b|of 60 runs|fit on 48 of 60 runs", titles), (name, titles)


def test_count_axes_have_integer_ticks(fitted):
    frame, metrics, rows, preds = fitted
    figs = _all_figures(frame, metrics, rows, preds)
    hist_axes = figs["overall_distribution"].axes + figs["section_distributions"].axes
    assert len(hist_axes) == 1 + len(SECTION_NAMES)
    for ax in hist_axes:
        ticks = ax.get_yticks()
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    budget_ax = figs["overall_vs_budget"].axes[0]
    assert all(float(t).is_integer() for t in budget_ax.get_xticks())


def test_overall_vs_budget_shows_means_trend_and_labels_the_outlier():
    frame = _budget_table(outlier=13)
    labels = figures.run_labels(frame["name"])
    fig = figures.overall_vs_budget(frame, labels, _meta(frame))
    ax = fig.axes[0]
    means = _line(ax, "per-budget mean")
    expected = {
        b: float(frame.loc[frame["budget"] == b, "Overall"].mean()) for b in range(500, 6000, 1000)
    }
    assert list(means.get_xdata()) == list(expected)
    np.testing.assert_allclose(means.get_ydata(), list(expected.values()), rtol=1e-12)
    # the trend line is the least-squares line through every run (closed form here)
    x, y = frame["budget"].to_numpy(float), frame["Overall"].to_numpy(float)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    trend = _line(ax, "trend")
    tx, ty = trend.get_xdata(), trend.get_ydata()
    assert (ty[1] - ty[0]) / (tx[1] - tx[0]) == pytest.approx(slope, rel=1e-9)
    # only the run pushed up is labelled, by what tells it apart: its uuid and budget
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"ID {_uuid(13)[:8]} · SWAPS 3500"]
    assert texts[0] == labels[13] == naming.run_label(frame["name"][13])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("outlier") for t in legend)


def test_overall_vs_budget_draws_means_only_where_a_budget_has_several_runs():
    """A mean of one run is that run: a line through single runs would only zigzag through
    the points and suggest a curve that is not there."""
    frame = _budget_table(outlier=None).drop_duplicates("budget").reset_index(drop=True)
    frame = pd.concat([frame, frame.iloc[[2]].assign(Overall=0.5)], ignore_index=True)
    fig = figures.overall_vs_budget(frame, figures.run_labels(frame["name"]), _meta(frame))
    ax = fig.axes[0]
    means = _line(ax, "per-budget mean")
    assert list(means.get_xdata()) == [2500.0]  # the one budget with two runs
    expected = float(frame.loc[frame["budget"] == 2500, "Overall"].mean())
    assert list(means.get_ydata()) == pytest.approx([expected])
    single = frame.drop_duplicates("budget")
    fig = figures.overall_vs_budget(single, figures.run_labels(single["name"]), _meta(single))
    assert not [ln for ln in fig.axes[0].get_lines() if "mean" in str(ln.get_label())]
    assert "one run per budget" in _titles(fig)


def test_overall_vs_budget_without_outliers_labels_nothing():
    frame = _budget_table(outlier=None)
    fig = figures.overall_vs_budget(frame, figures.run_labels(frame["name"]), _meta(frame))
    assert len(fig.axes[0].texts) == 0


def test_predicted_vs_actual_carries_rmse_r2_and_the_mean_baseline(fitted):
    frame, metrics, _rows, preds = fitted
    ax = figures.predicted_vs_actual(preds, metrics, _meta(frame)).axes[0]
    text = "\n".join(t.get_text() for t in ax.texts)
    dev = preds[preds["split"] == "dev"]
    rmse = float(np.sqrt(((dev["actual"] - dev["predicted"]) ** 2).mean()))
    assert f"RMSE {rmse:.4g}" in text
    assert f"R² {metrics['dev']['r2']:.4g}" in text
    train_mean = float(preds.loc[preds["split"] == "train", "actual"].mean())
    base_rmse = float(np.sqrt(((dev["actual"] - train_mean) ** 2).mean()))
    assert f"mean baseline: RMSE {base_rmse:.4g}" in text
    baseline = _line(ax, "mean baseline")
    np.testing.assert_allclose(baseline.get_ydata(), train_mean, rtol=1e-9)


def test_underdetermined_fit_shows_no_r2(tmp_path):
    frame = synthetic_table(n=6)
    frame["extra::x=1"] = np.arange(6) % 3
    csv = write_table(frame, tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit")
    metrics, rows = fitmod.read_fit(tmp_path / "fit")
    assert metrics["underdetermined"]
    preds = pd.read_csv(tmp_path / "fit" / "predictions.csv")
    ax = figures.predicted_vs_actual(preds, metrics, _meta(frame)).axes[0]
    text = "\n".join(t.get_text() for t in ax.texts)
    assert "no R²: underdetermined, 4 training rows for 4 terms + intercept" in text
    r2 = metrics["dev"]["r2"]
    assert f"{r2:.4g}".replace("-", "−") not in text and f"{r2:.4g}" not in text
    curve_ax = figures.learning_curve(metrics, _meta(frame)).axes[0]
    legend = [t.get_text() for t in curve_ax.get_legend().get_texts()]
    assert "underdetermined (< 5 rows)" in legend
    coef_fig = figures.top_terms(rows, metrics, _meta(frame))
    assert "underdetermined fit" in _titles(coef_fig)


def test_learning_curve_shows_train_and_dev_on_integer_ticks(fitted):
    frame, metrics, _rows, _preds = fitted
    ax = figures.learning_curve(metrics, _meta(frame)).axes[0]
    curve = metrics["learning_curve"]
    n = [p["n_train"] for p in curve]
    for split in ("train", "dev"):
        line = _line(ax, split)
        assert list(line.get_xdata()) == n
        np.testing.assert_allclose(line.get_ydata(), [p[split]["rmse"] for p in curve])
    assert list(ax.get_xticks()) == n == [12, 24, 36, 48]
    assert _line(ax, "mean baseline").get_ydata()[0] == metrics["baseline"]["dev"]["rmse"]


SIBLINGS = [
    "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Computer sciences",
    "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Mathematics",
    "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Computer sciences, "
    "information and general works",
    "analyzer_closed_set::feature_name=languages|constraints=Computer sciences",
]


def test_coefficient_labels_keep_what_tells_features_apart(tmp_path):
    """Features that share a long prefix and differ only at the end keep their ends."""
    rng = np.random.default_rng(0)
    frame = synthetic_table(n=60)
    for i, name in enumerate(SIBLINGS):
        frame[name] = rng.integers(0, 1000, len(frame)) + i
    csv = write_table(frame, tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit")
    metrics, rows = fitmod.read_fit(tmp_path / "fit")
    ax = figures.top_terms(rows, metrics, _meta(frame)).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    n_features = len({FEAT_A, FEAT_B, FEAT_NOISE, *SIBLINGS})
    assert len(labels) == len(rows) == n_features and len(set(labels)) == len(labels)
    shown = {" ".join(lab.splitlines()).replace("| ", "|") for lab in labels}
    for name in SIBLINGS:  # wrapped, not cut: every word of each name is there
        assert any(s.replace(" ", "") == name.replace(" ", "") for s in shown), (name, shown)
    assert all(len(line) <= figures.LABEL_WIDTH for lab in labels for line in lab.splitlines())


def test_product_terms_cut_in_the_middle_keep_kind_and_value(tmp_path):
    frame = synthetic_table(n=60)
    for i, name in enumerate(SIBLINGS[:2]):
        frame[name] = np.random.default_rng(i).integers(0, 1000, len(frame))
    csv = write_table(frame, tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit_quadratic", model="quadratic", features=[FEAT_A, *SIBLINGS[:2]])
    metrics, rows = fitmod.read_fit(tmp_path / "fit_quadratic")
    ax = figures.top_terms(rows, metrics, _meta(frame)).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(set(labels)) == len(labels) == 9
    product = next(lab for lab in labels if "Computer sciences" in lab and "Mathematics" in lab)
    first, second = product.split("\n× ")
    assert first.startswith("analyzer_closed_set::") and "…" in first
    assert {first.split("constraints=")[1], second.split("constraints=")[1]} == {
        "Computer sciences",
        "Mathematics",
    }
    assert ax.get_ylabel() == "term"


def test_wrap_label_and_shorten():
    name = SIBLINGS[0]
    assert figures.wrap_label(name) == (
        "analyzer_closed_set::feature_name=subject_of_expertise|\nconstraints=Computer sciences"
    )
    assert figures.wrap_label("token_len_diff::min_val=0.0|max_val=0.33") == (
        "token_len_diff::min_val=0.0|max_val=0.33"
    )
    cut = figures.shorten(name, 52)
    assert cut == "analyzer_closed_set::…constraints=Computer sciences"
    assert figures.shorten(name, 40) == "…constraints=Computer sciences"
    long = "kind::" + "|".join(f"part{i}=value{i}" for i in range(40))
    wrapped = figures.wrap_label(long)
    lines = wrapped.splitlines()
    assert len(lines) <= 3 and all(len(x) <= figures.LABEL_WIDTH for x in lines)
    assert wrapped.startswith("kind::…") and wrapped.endswith("part39=value39")
    assert len(figures.shorten("x" * 200, 20)) == 20


def test_run_labels_are_short_and_distinct():
    names = [
        "rm-eval-hs2-count-tulu2_13b_rm_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026",
        "rm-eval-hs2-count-tulu2_13b_rm_ID__07add08aff3a4fa6a5294c7bc41ae1f9__SWAPS_4026",
    ]
    # the first 8 hex digits collide: the labels take more of the uuid
    assert figures.run_labels(names) == [
        "ID 07add08aa33a · SWAPS 4026",
        "ID 07add08aff3a · SWAPS 4026",
    ]
    plain = ["rm-eval-helpsteer2-count-000", "rm-eval-helpsteer2-count-001"]
    assert figures.run_labels(plain) == ["000", "001"]


def test_lightgbm_importances(tmp_path):
    csv = write_table(synthetic_table(n=120), tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "fit", model="lightgbm")
    metrics, rows = fitmod.read_fit(tmp_path / "fit")
    assert all("importance" in r for r in rows)
    ax = figures.top_terms(rows, metrics, _meta(pd.read_csv(csv))).axes[0]
    assert "importances" in ax.get_title() and "gain" in ax.get_xlabel()
    assert json.loads((tmp_path / "fit" / "metrics.json").read_text())["n_terms"] is None
