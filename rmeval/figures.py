"""The report's figures: one function per figure, each returning a matplotlib ``Figure``.

The report notebook calls these (so the figures are code that is linted and tested, and the
notebook's cells stay one line each). Every figure's title carries the table's context
(dataset, run count, HISTORY version and date: :func:`context_line`), every panel has a y
label, and axes that count things have integer ticks. Figures are built with
``matplotlib.figure.Figure`` directly (no pyplot state), so building one never shows or
leaks a window.

``meta`` is the dict :func:`rmeval.report.table_context` makes: ``dataset``, ``table``,
``n``, ``version`` (or ``None``) and ``date``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rmeval import naming
from rmeval.fit import term_label
from rmeval.rewardbench.scoring import OVERALL, SECTION_OF

TOP_TERMS = 15
HEATMAP_ROWS = 40
LABEL_WIDTH = 56  # characters per line of a feature label
OUTLIER_SIGMAS = 3.0
MAX_OUTLIER_LABELS = 5
ELLIPSIS = "…"

COLORS = {"train": "tab:gray", "dev": "tab:red", "mean": "black", "trend": "tab:orange"}


# --------------------------------------------------------------------------- text


def context_line(meta: Mapping[str, Any], n: str | None = None) -> str:
    """``demo/counts-runs · 6 runs · v1 of 2026-12-02``: what every title carries."""
    version = meta.get("version")
    when = f"v{version} of {meta['date']}" if version is not None else str(meta["date"])
    count = n if n is not None else f"{meta['n']} runs"
    return f"{meta['dataset']} · {count} · {when}"


def _title(ax, title: str, meta: Mapping[str, Any], n: str | None = None, note: str = "") -> None:
    ax.set_title(f"{title}\n{context_line(meta, n)}" + (f"\n{note}" if note else ""), fontsize=9)


def _tokens(text: str) -> list[str]:
    """``text`` split after each ``::`` and ``|`` (the joints of a feature name)."""
    return [t for t in re.split(r"(?<=::)|(?<=\|)", text) if t]


def _middle(text: str, width: int) -> str:
    """``text`` with its middle replaced by ``…`` to fit ``width`` characters."""
    if len(text) <= width:
        return text
    keep = max(width - 1, 2)
    return text[: keep // 2] + ELLIPSIS + text[len(text) - (keep - keep // 2) :]


def shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters: the kind before ``::``
    and as many whole trailing parts as fit stay, with ``…`` between (a plain middle cut
    when even the last part does not fit)."""
    return _keep_tail(text, width) or _middle(text, width)


def _keep_tail(text: str, width: int) -> str | None:
    """:func:`shorten` by whole parts, or ``None`` when the last part alone is too long."""
    if len(text) <= width:
        return text
    parts = _tokens(text)
    head = parts[0] if len(parts) > 1 and parts[0].endswith("::") else ""
    if len(head) > width // 2:
        head = ""
    rest = parts[1:] if head else parts
    tail = ""
    for part in reversed(rest):
        if len(head) + 1 + len(part) + len(tail) > width:
            break
        tail = part + tail
    return head + ELLIPSIS + tail if tail else None


def wrap_label(text: str, width: int = LABEL_WIDTH, max_lines: int = 3) -> str:
    """A feature name (or an ``a × b`` term) as lines of at most ``width`` characters,
    broken at ``::`` and ``|`` (and spaces inside a long value). A name needing more than
    ``max_lines`` lines is cut in the middle (:func:`shorten`); each factor of a product
    gets a line of its own, cut in the middle when longer (two lines when its last part
    alone fills one)."""
    factors = text.split(" × ")
    if len(factors) > 1:
        return "\n× ".join(_keep_tail(f, width) or wrap_label(f, width, 2) for f in factors)
    limit = width * max_lines
    lines = _lines(shorten(text, limit), width)
    while len(lines) > max_lines and limit > width:
        limit -= width // 4 or 1
        lines = _lines(shorten(text, limit), width)
    return "\n".join(lines)


def _lines(text: str, width: int) -> list[str]:
    """``text`` packed into lines of at most ``width``, broken after ``::``, ``|`` or a
    space (mid-word only where a word alone is longer than a line)."""
    lines: list[str] = []
    for piece in re.split(r"(?<=::)|(?<=\|)|(?<= )", text):
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        if lines and len(lines[-1].rstrip()) + len(piece.rstrip()) <= width:
            lines[-1] += piece
        elif piece:
            lines.append(piece)
    return [line.rstrip() for line in lines]


def feature_labels(names: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """:func:`wrap_label` of each name; any that would then look alike are wrapped whole."""
    labels = [wrap_label(n, width) for n in names]
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            labels[i] = wrap_label(names[i], width, max_lines=len(names[i]) // 8 + 1)
    return labels


def run_labels(names: Sequence[str], width: int = 40) -> list[str]:
    """Short, distinct labels for runs: what their names say about them (uuid, SWAPS,
    FEATS; :func:`rmeval.naming.run_label`), longer uuids where short ones collide, else the
    part of the names after their common prefix."""
    names = [str(n) for n in names]
    for chars in (8, 12, 32):
        labels = [label for n in names if (label := naming.run_label(n, uuid_chars=chars))]
        if len(labels) == len(names) and len(set(labels)) == len(labels):
            return labels
    common = os.path.commonprefix(names) if len(names) > 1 else ""  # noqa: RUF071 (characters)
    common = common[: max(common.rfind("-"), common.rfind("_")) + 1]  # whole name parts only
    out = []
    for n in names:
        rest = n[len(common) :] or n
        out.append(rest if len(rest) <= width else shorten(rest, width))
    return out


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))


def _bins(n: int) -> int:
    return min(20, max(5, math.ceil(math.sqrt(n)) + 1))


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}".replace("-", "−")


# --------------------------------------------------------------------------- the table


def overall_distribution(df, meta: Mapping[str, Any]):
    """Histogram of Overall with its mean."""
    values = df[OVERALL].dropna()
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    ax.hist(values, bins=_bins(len(values)), color="tab:blue", edgecolor="white")
    ax.axvline(values.mean(), color=COLORS["mean"], linestyle="--", linewidth=1)
    ax.set_xlabel("Overall (RewardBench score)")
    ax.set_ylabel("runs")
    _integer_axis(ax.yaxis)
    title = f"distribution of Overall (dashed: mean {values.mean():.4f})"
    _title(ax, title, meta, f"{len(values)} runs")
    return fig


def section_distributions(df, sections: Sequence[str], meta: Mapping[str, Any]):
    """One histogram per RewardBench section, side by side."""
    fig = _figure(3.2 * len(sections), 3.4)
    axes = fig.subplots(1, len(sections), squeeze=False)[0]
    for ax, name in zip(axes, sections, strict=True):
        values = df[name].dropna()
        ax.hist(values, bins=_bins(len(values)), color="tab:green", edgecolor="white")
        ax.axvline(values.mean(), color=COLORS["mean"], linestyle="--", linewidth=1)
        ax.set_title(f"{name} (dashed: mean {values.mean():.3f})", fontsize=9)
        ax.set_xlabel("accuracy")
        ax.set_ylabel("runs")
        _integer_axis(ax.yaxis)
    fig.suptitle(f"distribution of each section\n{context_line(meta)}", fontsize=9)
    return fig


def _outliers(x, y) -> tuple[list[int], Any]:
    """Indices whose residual from the least-squares line is more than OUTLIER_SIGMAS
    robust standard deviations (1.4826 × the median absolute residual, which the outliers
    themselves do not inflate), largest first; and the line's (slope, intercept)."""
    import numpy as np

    if len(x) < 2 or len(set(x)) < 2:
        return [], None
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    if len(x) < 5 or not sigma > 0:
        return [], (slope, intercept)
    far = [i for i in np.argsort(-np.abs(resid)) if abs(resid[i]) > OUTLIER_SIGMAS * sigma]
    return [int(i) for i in far], (slope, intercept)


def overall_vs_budget(df, labels: Sequence[str], meta: Mapping[str, Any]):
    """Overall of each run against its budget, the mean of each budget that has several
    runs, a least-squares trend line, and the runs far from it labelled."""
    import numpy as np

    keep = df[OVERALL].notna() & df["budget"].notna()
    x = df.loc[keep, "budget"].to_numpy(dtype=float)
    y = df.loc[keep, OVERALL].to_numpy(dtype=float)
    names = [labels[int(i)] for i in np.flatnonzero(keep.to_numpy())]
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=22, alpha=0.7, color="tab:blue", label="run", zorder=2)
    groups = df.loc[keep].groupby("budget", sort=True)[OVERALL]
    counts = groups.count()
    # a mean of one run is that run: means only where a budget has several runs, so that the
    # line does not zigzag through single points and suggest a curve that is not there
    means = groups.mean()[counts >= 2]
    if len(means):
        ax.plot(
            means.index.to_numpy(dtype=float),
            means.to_numpy(),
            color=COLORS["mean"],
            marker="_",
            markersize=14,
            markeredgewidth=2,
            linewidth=0.8,
            alpha=0.8,
            label="per-budget mean (budgets with 2+ runs)",
            zorder=3,
        )
    far, line = _outliers(x, y)
    if line is not None:
        slope, intercept = line
        xs = np.array([x.min(), x.max()])
        ax.plot(
            xs,
            slope * xs + intercept,
            color=COLORS["trend"],
            linestyle="--",
            linewidth=1.2,
            label=f"trend: {slope * 1000:+.3g} per 1000 swaps".replace("-", "−"),
            zorder=1,
        )
    if far:
        shown = far[:MAX_OUTLIER_LABELS]
        ax.scatter(
            x[shown],
            y[shown],
            s=60,
            facecolors="none",
            edgecolors="tab:red",
            label=f"outlier: > {OUTLIER_SIGMAS:g} robust σ from the trend",
            zorder=4,
        )
        for k, i in enumerate(shown):
            above = y[i] >= slope * x[i] + intercept
            ax.annotate(
                names[i],
                (x[i], y[i]),
                xytext=(6, 8 if above else -12 - 4 * (k % 2)),
                textcoords="offset points",
                fontsize=7,
                color="tab:red",
            )
    ax.set_xlabel("budget (SWAPS: human labels in the mix)")
    ax.set_ylabel("Overall")
    _integer_axis(ax.xaxis)
    ax.margins(x=0.08, y=0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=7, frameon=False)
    at = f"{len(x)} runs at {len(counts)} budgets" + ("" if len(means) else ", one run per budget")
    _title(ax, "Overall against budget", meta, at)
    return fig


def subset_heatmap(df, subsets: Sequence[str], labels: Sequence[str], meta: Mapping[str, Any]):
    """Accuracy per RewardBench subset of the best runs by Overall, subsets grouped by
    section."""
    order = df[OVERALL].to_numpy().argsort(kind="mergesort")[::-1]
    order = [i for i in order if not math.isnan(df[OVERALL].iloc[i])][:HEATMAP_ROWS]
    values = df.iloc[order][list(subsets)].to_numpy(dtype=float)
    fig = _figure(0.36 * len(subsets) + 3.2, 0.22 * len(order) + 2.6)
    ax = fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(subsets)), subsets, rotation=90, fontsize=7)
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=7)
    # sections: a white rule between them, their names on top
    sections = [SECTION_OF.get(s, "") for s in subsets]
    starts = [0] + [j for j in range(1, len(subsets)) if sections[j] != sections[j - 1]]
    for j in starts[1:]:
        ax.axvline(j - 0.5, color="white", linewidth=2)
    top = ax.secondary_xaxis("top")
    ends = [*starts[1:], len(subsets)]
    top.set_xticks(
        [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)],
        [sections[a] for a in starts],
        fontsize=8,
    )
    top.tick_params(length=0)
    ax.set_xlabel("RewardBench subset")
    ax.set_ylabel("run (best Overall on top)")
    fig.colorbar(im, ax=ax, label="accuracy", shrink=0.8)
    shown = f"top {len(order)} of {meta['n']} runs by Overall"
    _title(ax, "accuracy per subset", meta, shown)
    return fig


# --------------------------------------------------------------------------- the fit


def _fit_line(metrics: Mapping[str, Any]) -> str:
    return f"fit on {metrics['n_train']} of {metrics['n_rows']} runs, dev {metrics['n_dev']}"


def predicted_vs_actual(preds, metrics: Mapping[str, Any], meta: Mapping[str, Any]):
    """Predicted against actual target for train and dev rows, the identity line, the mean
    baseline's constant prediction, and the dev RMSE and R² of both."""
    target = metrics["target"]
    base = metrics["baseline"]
    fig = _figure(5.6, 6.0)
    ax = fig.add_subplot()
    for split in ("train", "dev"):
        part = preds[preds["split"] == split]
        ax.scatter(
            part["actual"],
            part["predicted"],
            s=18,
            alpha=0.8,
            color=COLORS[split],
            label=f"{split} ({len(part)})",
            zorder=3,
        )
    lo = float(min(preds["actual"].min(), preds["predicted"].min(), base["prediction"]))
    hi = float(max(preds["actual"].max(), preds["predicted"].max(), base["prediction"]))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="predicted = actual")
    ax.axhline(
        base["prediction"],
        color=COLORS["mean"],
        linestyle=":",
        linewidth=1.2,
        label=f"mean baseline ({base['prediction']:.4f})",
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    dev, bdev = metrics["dev"], base["dev"]
    if metrics.get("underdetermined"):
        text = (
            f"dev ({metrics['n_dev']} runs): RMSE {_fmt(dev['rmse'])}; mean baseline: RMSE "
            f"{_fmt(bdev['rmse'])}\nno R²: underdetermined, {metrics['n_train']} training rows "
            f"for {metrics['n_terms']} terms + intercept"
        )
    else:
        text = (
            f"dev ({metrics['n_dev']} runs): RMSE {_fmt(dev['rmse'])}, R² {_fmt(dev['r2'])}\n"
            f"mean baseline: RMSE {_fmt(bdev['rmse'])}, R² {_fmt(bdev['r2'])}"
        )
    ax.text(
        0.02,
        0.98,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=7.5,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "0.7"},
    )
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7, frameon=False)
    _title(ax, f"predicted vs actual ({metrics['model']})", meta, _fit_line(metrics))
    return fig


def learning_curve(metrics: Mapping[str, Any], meta: Mapping[str, Any]):
    """Train and dev RMSE against the number of training rows, with the mean baseline's
    dev RMSE and the underdetermined region shaded."""
    curve = metrics["learning_curve"]
    n = [p["n_train"] for p in curve]
    fig = _figure(6, 3.8)
    ax = fig.add_subplot()
    ax.plot(
        n, [p["train"]["rmse"] for p in curve], marker="o", color=COLORS["train"], label="train"
    )
    ax.plot(n, [p["dev"]["rmse"] for p in curve], marker="o", color=COLORS["dev"], label="dev")
    ax.axhline(
        metrics["baseline"]["dev"]["rmse"],
        color=COLORS["mean"],
        linestyle=":",
        linewidth=1.2,
        label="mean baseline (dev)",
    )
    under = [p["n_train"] for p in curve if p.get("underdetermined")]
    if under:
        ax.axvspan(
            min(n) - 0.5,
            max(under) + 0.5,
            color="0.85",
            zorder=0,
            label=f"underdetermined (< {metrics['n_terms'] + 1} rows)",
        )
    ax.set_xticks(sorted(set(n)))
    ax.set_xlim(min(n) - 0.5 - 0.05 * max(n), max(n) + 0.5 + 0.05 * max(n))
    ax.set_xlabel("training rows")
    ax.set_ylabel(f"RMSE of {metrics['target']}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=7, frameon=False)
    _title(ax, "learning curve", meta, _fit_line(metrics))
    return fig


def top_terms(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], meta):
    """The largest coefficients by magnitude (for lightgbm: the largest gain importances),
    labelled by the whole feature name, wrapped or cut in the middle."""
    lightgbm = metrics["model"] == "lightgbm"
    key = "importance" if lightgbm else "coef"
    valid = [r for r in rows if r.get(key) is not None]
    top = sorted(valid, key=lambda r: (-abs(r[key]), r["feat"]))[:TOP_TERMS][::-1]
    labels = feature_labels([term_label(r.get("terms") or [r["feat"]]) for r in top])
    lines = sum(lab.count("\n") + 1 for lab in labels)
    fig = _figure(9, 0.16 * lines + 0.22 * len(top) + 1.6)
    ax = fig.add_subplot()
    values = [r[key] for r in top]
    colors = ["tab:blue" if v >= 0 else "tab:orange" for v in values]
    ax.barh(range(len(top)), values, color=colors)
    ax.set_yticks(range(len(top)), labels, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    span = max((abs(v) for v in values), default=1.0) or 1.0
    for k, v in enumerate(values):
        ax.text(
            v + (0.01 * span if v >= 0 else -0.01 * span),
            k,
            (f"{v:.3g}" if lightgbm else f"{v:+.3g}").replace("-", "−"),
            va="center",
            ha="left" if v >= 0 else "right",
            fontsize=7,
        )
    lo = min(0.0, *values) if values else 0.0
    hi = max(0.0, *values) if values else 1.0
    ax.set_xlim(lo - 0.25 * span if lo < 0 else 0, hi + 0.25 * span if hi > 0 else 0)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    quadratic = metrics["model"] == "quadratic"
    if lightgbm:
        ax.set_xlabel("total gain of the feature's splits")
        title = f"largest feature importances ({len(top)} of {len(rows)})"
    else:
        unit = "log1p(count)" if metrics.get("log_linear") else "count"
        ax.set_xlabel(
            f"coefficient: change in {metrics['target']} per {unit}"
            + (" (or product of counts)" if quadratic else "")
        )
        title = f"largest coefficients by size ({len(top)} of {len(rows)} terms)"
    ax.set_ylabel("term" if quadratic else "feature")
    note = ""
    if metrics.get("underdetermined"):
        note = "underdetermined fit: these coefficients are one of many exact solutions"
    _title(ax, title, meta, _fit_line(metrics), note)
    return fig
