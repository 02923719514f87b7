"""Fit the regressor on the results table: feature counts -> a RewardBench score.

``rmeval fit CSV --model linear|quadratic [--log-linear] [--target Overall] --out DIR``

Rows are split 80/20 into train and dev (``seed``); the model is fitted on train and scored
on dev (MSE, RMSE, R²), with a learning curve at 25/50/75/100 % of train. ``DIR`` receives

- ``metrics.json``   model, target, features, split sizes, dev metrics, learning curve,
  intercept, library versions (no timestamps: a refit on the same data is identical);
- ``coef.jsonl``     one line per model term ``{"feature", "terms", "coef"}``, sorted by
  coefficient, largest first (``terms`` lists the feature columns a quadratic term
  multiplies; ``feature`` is a readable name);
- ``predictions.csv`` the label of each row (when the table has one), its split, the actual
  and the predicted target;
- ``model.joblib``   ``{"model": estimator, "features": [...], "target": ..., "log_linear": ...}``
  (load with :func:`load_model`; joblib files are pickles: load only your own).

Feature columns: ``features=`` when given, else the ones collect recorded for the table in
its ``<table>.columns.json`` sidecar (:func:`recorded_features`), else every numeric column that is not a score, a subset
accuracy or a metadata column (:data:`NON_FEATURE_COLUMNS`).

``--log-linear`` fits on ``log1p`` of the features (counts >= 0), i.e. a linear model in
the logarithm of the counts.

scikit-learn and joblib come from the optional extra ``[fit]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmeval import storage
from rmeval.errors import FitError
from rmeval.rewardbench.scoring import META_KEYS, OVERALL, SECTION_NAMES, SUBSETS

log = logging.getLogger(__name__)

MODELS = ("linear", "quadratic")
LEARNING_CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
DEV_FRACTION = 0.2

# Columns of the results table that are never features.
ID_COLUMNS = ("run", "name", "experiment", "uuid", "budget", "label", "step", "checkpoint")
NON_FEATURE_COLUMNS: frozenset[str] = frozenset(
    {*META_KEYS, *SECTION_NAMES, OVERALL, *SUBSETS, *ID_COLUMNS}
)
# The column that names a row in plots and predictions, first present wins.
LABEL_COLUMNS = ("run", "name", "experiment", "model", "uuid")

METRICS_FILE = "metrics.json"
COEF_FILE = "coef.jsonl"
PREDICTIONS_FILE = "predictions.csv"
MODEL_FILE = "model.joblib"


@dataclass
class FitResult:
    out: str
    model: str
    target: str
    features: list[str]
    n_train: int
    n_dev: int
    dev: dict[str, float | None]
    learning_curve: list[dict[str, Any]]
    coefficients: list[dict[str, Any]] = field(repr=False)


# --------------------------------------------------------------------------- the table


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:  # pragma: no cover - the [fit] extra is part of the test env
        raise FitError(
            "scikit-learn is not installed; install rmeval with the [fit] extra (pip install 'rmeval[fit]')"
        ) from None


def read_table(csv: str | os.PathLike):
    """The CSV as a DataFrame (local path or gs://), column names kept verbatim."""
    import pandas as pd

    csv = os.fspath(csv)
    data = storage.read_bytes(csv)
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FitError(f"{csv}: not a readable CSV table ({reason})") from None
    return frame


def recorded_features(csv: str | os.PathLike) -> list[str] | None:
    """The feature columns collect recorded for ``csv`` (the ``features`` list of its
    ``<table>.columns.json`` sidecar), or ``None`` when there is no sidecar."""
    try:
        from rmeval.collect import columns_path
    except ImportError:  # pragma: no cover - collect is part of the package
        return None
    sidecar = columns_path(csv)
    if not storage.exists(sidecar):
        return None
    try:
        data = json.loads(storage.read_text(sidecar))
    except json.JSONDecodeError as exc:
        raise FitError(f"{sidecar}: not valid JSON ({exc.msg}); collect the table again") from None
    feats = data.get("features") if isinstance(data, dict) else None
    if not isinstance(feats, list) or not all(isinstance(c, str) for c in feats):
        raise FitError(
            f"{sidecar}: no list of feature columns under 'features'; collect the table again"
        )
    return list(feats)


def _is_numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def detect_features(frame, target: str = OVERALL) -> list[str]:
    """Numeric columns that are not scores, subsets, metadata, the target, or a pandas
    index written without a name (``Unnamed: 0``)."""
    out = []
    for col in frame.columns:
        name = str(col)
        if name in NON_FEATURE_COLUMNS or name == target or name.startswith("Unnamed: "):
            continue
        if not _is_numeric(frame[col]):
            log.debug("column %r is not numeric; not a feature", name)
            continue
        out.append(name)
    return out


def label_column(frame) -> str | None:
    for col in LABEL_COLUMNS:
        if col in frame.columns:
            return col
    return None


def load_table(
    csv: str | os.PathLike,
    target: str = OVERALL,
    features: Sequence[str] | None = None,
):
    """``(frame, features)``: the rows with a target value, and the feature columns.

    Raises :class:`FitError` for a table without the target, without feature columns,
    with missing or non-numeric feature values, or with too few rows to fit."""
    csv = os.fspath(csv)
    frame = read_table(csv)
    if target not in frame.columns:
        raise FitError(
            f"{csv}: no {target!r} column; give a results table from `rmeval collect` "
            "(or name the score column with --target)"
        )
    if not _is_numeric(frame[target]):
        raise FitError(f"{csv}: column {target!r} is not numeric")
    if features:
        source = "--features"
        cols = list(dict.fromkeys(features))
    else:
        recorded = recorded_features(csv)
        source = "the recorded feature list" if recorded is not None else "detection"
        cols = recorded if recorded is not None else detect_features(frame, target)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise FitError(
            f"{csv}: feature column(s) not in the table ({source}): {', '.join(missing[:5])}"
        )
    if not cols:
        raise FitError(
            f"{csv}: no feature columns (every column is a score or metadata); "
            "collect the table with feature counts, or name them with --features"
        )
    for c in cols:
        if not _is_numeric(frame[c]):
            raise FitError(f"{csv}: feature column {c!r} is not numeric")
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        log.warning("%s: %d row(s) without %s left out of the fit", csv, missing_target, target)
        frame = frame[frame[target].notna()].reset_index(drop=True)
    for c in cols:
        n = int(frame[c].isna().sum())
        if n:
            raise FitError(
                f"{csv}: feature column {c!r} has {n} missing value(s); "
                "fill them or drop those rows before fitting"
            )
    if len(frame) < len(cols) + 2:
        raise FitError(
            f"{csv}: {len(frame)} row(s) with {target} for {len(cols)} feature(s); "
            f"fitting needs at least {len(cols) + 2}"
        )
    return frame, cols


# --------------------------------------------------------------------------- the model


def _estimator(model: str):
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    if model == "linear":
        return Pipeline([("reg", LinearRegression())])
    if model == "quadratic":
        return Pipeline(
            [
                ("poly", PolynomialFeatures(degree=2, include_bias=False)),
                ("reg", LinearRegression()),
            ]
        )
    raise FitError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _design(frame, features: Sequence[str], log_linear: bool, csv: str):
    import numpy as np

    x = frame[list(features)].to_numpy(dtype=float)
    if log_linear:
        bad = [features[j] for j in range(x.shape[1]) if (x[:, j] < 0).any()]
        if bad:
            raise FitError(
                f"{csv}: --log-linear needs non-negative features; {bad[0]!r} has negative values"
            )
        x = np.log1p(x)
    return x


def _terms(estimator, features: Sequence[str]) -> list[list[str]]:
    """The feature columns behind each coefficient, in the estimator's order."""
    if "poly" not in estimator.named_steps:
        return [[f] for f in features]
    out = []
    for powers in estimator.named_steps["poly"].powers_:
        term: list[str] = []
        for j, p in enumerate(powers):
            term += [features[j]] * int(p)
        out.append(term)
    return out


def _term_name(term: Sequence[str]) -> str:
    if len(term) == 2 and term[0] == term[1]:
        return f"{term[0]}^2"
    return " * ".join(term)


def _dev_metrics(y_true, y_pred) -> dict[str, float | None]:
    from sklearn.metrics import mean_squared_error, r2_score

    mse = float(mean_squared_error(y_true, y_pred))
    r2 = float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else None
    if r2 is not None and not math.isfinite(r2):
        r2 = None
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- fit


def fit(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = "linear",
    log_linear: bool = False,
    target: str = OVERALL,
    features: Sequence[str] | None = None,
    seed: int = 42,
    overwrite: bool = False,
) -> FitResult:
    """Fit ``model`` on ``csv`` and write metrics, coefficients, predictions and the model
    under ``out`` (local dir or gs:// prefix). Nothing is visible at ``out`` unless
    everything was written; an existing non-empty ``out`` needs ``overwrite``."""
    _sklearn()
    import joblib
    import numpy as np
    import sklearn
    from sklearn.base import clone
    from sklearn.model_selection import train_test_split

    csv = os.fspath(csv)
    out = os.fspath(out)
    if model not in MODELS:
        raise FitError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if not overwrite and next(iter(storage.list_objects_if_any(out)), None) is not None:
        raise FitError(f"{out}: already exists; pass --overwrite to replace it")

    frame, cols = load_table(csv, target=target, features=features)
    x = _design(frame, cols, log_linear, csv)
    y = frame[target].to_numpy(dtype=float)
    idx = np.arange(len(frame))
    train_idx, dev_idx = train_test_split(
        idx, test_size=DEV_FRACTION, random_state=seed, shuffle=True
    )

    estimator = _estimator(model)
    curve = []
    for frac in LEARNING_CURVE_FRACTIONS:
        n = max(1, round(frac * len(train_idx)))
        est = clone(estimator).fit(x[train_idx[:n]], y[train_idx[:n]])
        curve.append(
            {
                "fraction": frac,
                "n_train": int(n),
                "train": _dev_metrics(y[train_idx[:n]], est.predict(x[train_idx[:n]])),
                "dev": _dev_metrics(y[dev_idx], est.predict(x[dev_idx])),
            }
        )
    estimator.fit(x[train_idx], y[train_idx])
    dev = _dev_metrics(y[dev_idx], estimator.predict(x[dev_idx]))
    reg = estimator.named_steps["reg"]

    terms = _terms(estimator, cols)
    coefs = [
        {"feature": _term_name(t), "terms": t, "coef": _json_float(float(c))}
        for t, c in zip(terms, reg.coef_, strict=True)
    ]
    coefs.sort(key=lambda r: (-(r["coef"] if r["coef"] is not None else -math.inf), r["feature"]))

    label = label_column(frame)
    split = np.empty(len(frame), dtype=object)
    split[train_idx] = "train"
    split[dev_idx] = "dev"
    predicted = estimator.predict(x)

    metrics = {
        "model": model,
        "log_linear": log_linear,
        "target": target,
        "features": cols,
        "seed": seed,
        "n_rows": len(frame),
        "n_train": len(train_idx),
        "n_dev": len(dev_idx),
        "dev": dev,
        "learning_curve": curve,
        "intercept": _json_float(float(reg.intercept_)),
        "label_column": label,
        "source": storage.basename(csv),
        "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }

    import pandas as pd

    preds = pd.DataFrame(
        {
            **({label: frame[label]} if label else {}),
            "split": split,
            "actual": y,
            "predicted": predicted,
        }
    )

    with _staged_dir(out, overwrite) as tmp:
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        with open(tmp / COEF_FILE, "w", encoding="utf-8") as f:
            for row in coefs:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        preds.to_csv(tmp / PREDICTIONS_FILE, index=False, float_format="%.10g")
        joblib.dump(
            {"model": estimator, "features": cols, "target": target, "log_linear": log_linear},
            tmp / MODEL_FILE,
        )
    log.info(
        "%s: %s fit on %d rows, %d features; dev RMSE %.4g",
        storage.basename(csv),
        model,
        len(train_idx),
        len(cols),
        dev["rmse"],
    )
    return FitResult(
        out=out,
        model=model,
        target=target,
        features=cols,
        n_train=len(train_idx),
        n_dev=len(dev_idx),
        dev=dev,
        learning_curve=curve,
        coefficients=coefs,
    )


@contextlib.contextmanager
def _staged_dir(out: str, overwrite: bool):
    """A temporary directory that becomes ``out`` when the block succeeds: renamed into
    place for a local ``out`` (the old one swapped out only then), uploaded with
    ``metrics.json`` last for gs://."""
    if storage.is_gcs(out):
        tmp = Path(tempfile.mkdtemp(prefix="rmeval-fit-"))
        try:
            yield tmp
            storage.upload_tree(tmp, out, overwrite=overwrite, last=(METRICS_FILE,))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    final = storage.local_path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _swap_in(tmp, final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, final: Path, overwrite: bool) -> None:
    if final.exists() and not (final.is_dir() and not any(final.iterdir())):
        if not overwrite:
            raise FitError(f"{final}: already exists; pass --overwrite to replace it")
        old = final.with_name(f".{final.name}.old-{storage.unique_suffix()}")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
        return
    if final.exists():
        final.rmdir()
    os.replace(tmp, final)


def load_model(fit_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved ``{"model", "features", "target", "log_linear"}`` of a fit directory."""
    _sklearn()
    import joblib

    uri = storage.join(os.fspath(fit_dir), MODEL_FILE)
    if not storage.exists(uri):
        raise FitError(f"{uri}: no saved model; run `rmeval fit ... --out {fit_dir}` first")
    return joblib.load(io.BytesIO(storage.read_bytes(uri)))


def predict(fit_dir: str | os.PathLike, frame):
    """Predictions of a saved model for the rows of ``frame`` (needs its feature columns)."""
    saved = load_model(fit_dir)
    missing = [c for c in saved["features"] if c not in frame.columns]
    if missing:
        raise FitError(f"table lacks the model's feature column(s): {', '.join(missing[:5])}")
    x = _design(frame, saved["features"], saved["log_linear"], "table")
    return saved["model"].predict(x)


def read_fit(fit_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics, coefficients)`` of a fit directory."""
    fit_dir = os.fspath(fit_dir)
    metrics_uri = storage.join(fit_dir, METRICS_FILE)
    coef_uri = storage.join(fit_dir, COEF_FILE)
    for uri in (metrics_uri, coef_uri, storage.join(fit_dir, PREDICTIONS_FILE)):
        if not storage.exists(uri):
            raise FitError(f"{uri}: missing; is {fit_dir} the --out of `rmeval fit`?")
    try:
        metrics = json.loads(storage.read_text(metrics_uri))
        coefs = [json.loads(line) for line in storage.read_text(coef_uri).splitlines() if line]
    except json.JSONDecodeError as exc:
        raise FitError(
            f"{fit_dir}: corrupt fit output ({exc.msg}); run `rmeval fit` again"
        ) from None
    return metrics, coefs
