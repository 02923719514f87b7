"""Fit the regressor on the results table: feature counts -> a RewardBench score.

``rmeval fit CSV --model linear|quadratic|lightgbm [--log-linear] [--target Overall] --out DIR``

Rows are split 80/20 into train and dev (``seed``); the model is fitted on train and scored
on dev (MSE, RMSE, R²) beside a mean baseline (predict the training mean for every dev row),
with a learning curve at 25/50/75/100 % of train. ``DIR`` receives

- ``metrics.json``   model, target, features, split sizes, dev metrics, the baseline's dev
  metrics, learning curve (train and dev), intercept, the number of model terms and whether
  the fit is underdetermined (fewer training rows than unknowns: terms plus intercept; its
  dev R² then says nothing about the features), library versions (no timestamps: a refit on
  the same data is identical);
- ``model.pkl``      the bare fitted estimator, as allenai/hybrid-preferences'
  ``scripts/sample_best_subset.py`` loads it (``joblib.load``): a scikit-learn
  ``LinearRegression`` with ``feature_names_in_`` and ``coef_`` (for ``quadratic`` its inputs
  are the terms ``poly.pkl`` makes), or a ``lightgbm.LGBMRegressor``;
- ``poly.pkl``       (``quadratic`` only) the fitted ``PolynomialFeatures``: its
  ``feature_names_in_`` are the table's feature columns and ``transform`` gives the frame
  ``model.pkl`` predicts from. Upstream loads it only when the model path contains
  "quadratic", so give such fits an ``--out`` with that word in it;
- ``coef.jsonl``     (``linear``, ``quadratic``) one line per model term
  ``{"feat", "coef", "terms"}``, sorted by coefficient, largest first: ``feat`` is the
  estimator's input name (upstream's key; ``model.pkl``'s ``feature_names_in_``), ``terms``
  the feature columns the term multiplies;
- ``importance.jsonl`` (``lightgbm``) ``{"feat", "importance", "terms"}``, the total gain of
  each feature's splits, largest first;
- ``predictions.csv`` the label of each row (when the table has one), its split, the actual
  and the predicted target;
- ``model.joblib``   rmeval's richer file ``{"model": pipeline, "features", "target",
  "log_linear", "model_kind"}`` (load with :func:`load_model`, predict with :func:`predict`;
  joblib files are pickles: load only your own).

With ``--log-linear`` the models see ``log1p`` of the counts; ``model.pkl`` then expects
``log1p`` inputs too (``metrics.json`` says ``"log_linear": true``).

Feature columns: ``features=`` when given, else the ones collect recorded for the table in
its ``<table>.columns.json`` sidecar (:func:`recorded_features`), else every numeric column that is not a score, a subset
accuracy or a metadata column (:data:`NON_FEATURE_COLUMNS`).

scikit-learn and joblib come from the optional extra ``[fit]``, LightGBM from ``[lightgbm]``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rmeval import storage
from rmeval.errors import AlreadyExistsError, FitError
from rmeval.rewardbench.scoring import META_KEYS, OVERALL, SECTION_NAMES, SUBSETS
from rmeval.table import V2_COLUMNS

log = logging.getLogger(__name__)

MODELS = ("linear", "quadratic", "lightgbm")
LEARNING_CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
DEV_FRACTION = 0.2
# Upstream's LightGBM settings (train_regressor.py), plus what makes a refit identical.
LIGHTGBM_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "n_estimators": 100,
    "deterministic": True,
    "force_row_wise": True,
    "n_jobs": 1,
    "verbose": -1,
}

# Columns of the results table that are never features.
ID_COLUMNS = ("run", "name", "experiment", "uuid", "budget", "label", "step", "checkpoint")
NON_FEATURE_COLUMNS: frozenset[str] = frozenset(
    {*META_KEYS, *SECTION_NAMES, OVERALL, *SUBSETS, *ID_COLUMNS, *V2_COLUMNS}
)
# The column that names a row in plots and predictions, first present wins.
LABEL_COLUMNS = ("run", "name", "experiment", "model", "uuid")

METRICS_FILE = "metrics.json"
COEF_FILE = "coef.jsonl"
IMPORTANCE_FILE = "importance.jsonl"
PREDICTIONS_FILE = "predictions.csv"
MODEL_FILE = "model.joblib"
UPSTREAM_MODEL_FILE = "model.pkl"
UPSTREAM_POLY_FILE = "poly.pkl"
# metrics.json keys the report reads that older fits lack (read_fit refuses those).
FIT_KEYS = ("model", "target", "dev", "baseline", "n_terms", "underdetermined", "learning_curve")


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
    baseline: dict[str, Any] = field(default_factory=dict)
    n_terms: int | None = None
    underdetermined: bool = False
    rows_needed: int | None = None

    def summary(self) -> list[str]:
        """What ``rmeval fit`` prints: the split, dev metrics beside the baseline, the
        largest terms."""
        base = self.baseline["dev"]
        lines = [
            f"{self.model} fit of {self.target} on {len(self.features)} feature(s): "
            f"train {self.n_train}, dev {self.n_dev}; dev MSE {self.dev['mse']:.4g}, "
            f"RMSE {self.dev['rmse']:.4g} (mean baseline {base['rmse']:.4g}), "
            + (
                f"R² n/a: {underdetermined_text(self.n_train, self.n_terms, self.rows_needed)}"
                if self.underdetermined
                else f"R² {_fmt_r2(self.dev['r2'])} (mean baseline {_fmt_r2(base['r2'])})"
            )
        ]
        key = "importance" if self.model == "lightgbm" else "coef"
        for c in sorted(self.coefficients, key=lambda c: -abs(c[key] or 0))[:5]:
            lines.append(f"  {c[key]:+.4g}  {term_label(c['terms'])}")
        return lines


def _fmt_r2(r2: float | None) -> str:
    return "n/a" if r2 is None else f"{r2:.4f}"


def underdetermined_text(n_train: int, n_terms: int | None, rows_needed: int | None) -> str:
    """The plain words for a fit with fewer training rows than unknowns."""
    return (
        f"underdetermined: {n_train} training rows for {n_terms} terms + intercept; "
        f"needs a table of at least {rows_needed} runs, or fewer features"
    )


def term_label(terms: Sequence[str]) -> str:
    """A model term for people: the feature, or its factors joined by `` × ``."""
    return " × ".join(terms)


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
        raise FitError(f"{csv}: not a readable CSV table ({reason})") from exc
    return frame


def _columns_sidecar(csv: str | os.PathLike) -> tuple[str, dict] | None:
    """``csv``'s ``<table>.columns.json`` sidecar (its path and content), or ``None`` when
    there is none."""
    from rmeval.table import columns_path

    sidecar = columns_path(csv)
    if not storage.exists(sidecar):
        return None
    try:
        data = json.loads(storage.read_text(sidecar))
    except json.JSONDecodeError as exc:
        raise FitError(f"{sidecar}: not valid JSON ({exc.msg}); collect the table again") from exc
    return str(sidecar), data if isinstance(data, dict) else {}


def recorded_features(csv: str | os.PathLike) -> list[str] | None:
    """The feature columns collect recorded for ``csv`` (the ``features`` list of its
    ``<table>.columns.json`` sidecar), or ``None`` when there is no sidecar."""
    found = _columns_sidecar(csv)
    if found is None:
        return None
    sidecar, data = found
    feats = data.get("features")
    if not isinstance(feats, list) or not all(isinstance(c, str) for c in feats):
        raise FitError(
            f"{sidecar}: no list of feature columns under 'features'; collect the table again"
        )
    return list(feats)


def recorded_target(csv: str | os.PathLike) -> str | None:
    """The target collect recorded for ``csv`` (``--target``: its columns sidecar's
    ``target``), or ``None`` without a sidecar."""
    found = _columns_sidecar(csv)
    target = found[1].get("target") if found is not None else None
    return target if isinstance(target, str) else None


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
    recorded = None if features else recorded_features(csv)
    return check_table(frame, target=target, features=features, recorded=recorded, name=csv)


def unfit_reason(csv: str | os.PathLike, frame, target: str = OVERALL) -> str | None:
    """Why :func:`fit` would refuse the table ``frame`` read from ``csv`` (the error line,
    naming the table by its file name), or ``None`` when it can be fitted."""
    csv = os.fspath(csv)
    try:
        check_table(
            frame, target=target, recorded=recorded_features(csv), name=storage.basename(csv)
        )
    except FitError as exc:
        return str(exc)
    return None


def check_table(
    frame,
    *,
    target: str = OVERALL,
    features: Sequence[str] | None = None,
    recorded: Sequence[str] | None = None,
    name: str = "table",
):
    """``(frame, features)`` of a table already read; see :func:`load_table`. The
    feature columns are ``features``, else ``recorded``, else detected; errors start with
    ``name``."""
    if target not in frame.columns:
        raise FitError(
            f"{name}: no {target!r} column; give a results table from `rmeval collect` "
            "(or name the score column with --target)"
        )
    if not _is_numeric(frame[target]):
        raise FitError(f"{name}: column {target!r} is not numeric")
    if features:
        source = "--features"
        cols = list(dict.fromkeys(features))
    else:
        source = "the recorded feature list" if recorded is not None else "detection"
        cols = list(recorded) if recorded is not None else detect_features(frame, target)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise FitError(
            f"{name}: feature column(s) not in the table ({source}): {', '.join(missing[:5])}"
        )
    if not cols:
        raise FitError(
            f"{name}: no feature columns (every column is a score or metadata); "
            "collect the table with feature counts, or name them with --features"
        )
    for c in cols:
        if not _is_numeric(frame[c]):
            raise FitError(f"{name}: feature column {c!r} is not numeric")
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        log.warning("%s: %d row(s) without %s left out of the fit", name, missing_target, target)
        frame = frame[frame[target].notna()].reset_index(drop=True)
    for c in cols:
        n = int(frame[c].isna().sum())
        if n:
            raise FitError(
                f"{name}: feature column {c!r} has {n} missing value(s); "
                "fill them or drop those rows before fitting"
            )
    if len(frame) < len(cols) + 2:
        raise FitError(
            f"{name}: {len(frame)} row(s) with {target} for {len(cols)} feature(s); "
            f"fitting needs at least {len(cols) + 2}"
        )
    return frame, cols


# --------------------------------------------------------------------------- the model


def _estimator(model: str, seed: int):
    """An unfitted pipeline whose last step ``reg`` is what ``model.pkl`` holds."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    if model == "linear":
        return Pipeline([("reg", LinearRegression())])
    if model == "quadratic":
        # pandas output: the terms keep names, so model.pkl has feature_names_in_
        poly = PolynomialFeatures(degree=2, include_bias=False).set_output(transform="pandas")
        return Pipeline([("poly", poly), ("reg", LinearRegression())])
    if model == "lightgbm":
        lightgbm = _lightgbm()
        return Pipeline([("reg", lightgbm.LGBMRegressor(**LIGHTGBM_PARAMS, random_state=seed))])
    raise FitError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise FitError(
            "lightgbm is not installed; install rmeval with the [lightgbm] extra "
            "(pip install 'rmeval[lightgbm]') or choose --model linear|quadratic"
        ) from None
    return lightgbm


def input_names(model: str, features: Sequence[str]) -> list[str]:
    """The column names the estimator is fitted with: the feature names, except that
    LightGBM refuses JSON-special characters (``"``, ``,``, ``:``, brackets) and turns
    spaces into ``_`` in its own names, so its columns get those replaced (positions and
    ``metrics.json``'s ``features`` keep the real names)."""
    if model != "lightgbm":
        return list(features)
    out: list[str] = []
    for f in features:
        name = re.sub(r'[",:\[\]{}\s]', "_", f)
        while name in out:
            name += "_"
        out.append(name)
    return out


def _design(frame, features: Sequence[str], log_linear: bool, csv: str, model: str = "linear"):
    """The estimator's input: a float frame of the feature columns (``log1p`` of them with
    ``log_linear``), named by :func:`input_names`."""
    import numpy as np

    x = frame[list(features)].astype(float)
    if log_linear:
        bad = [c for c in features if (x[c] < 0).any()]
        if bad:
            raise FitError(
                f"{csv}: --log-linear needs non-negative features; {bad[0]!r} has negative values"
            )
        x = np.log1p(x)
    x.columns = input_names(model, features)
    return x.reset_index(drop=True)


def _terms(estimator, features: Sequence[str]) -> list[list[str]]:
    """The feature columns behind each model input, in the estimator's order."""
    if "poly" not in estimator.named_steps:
        return [[f] for f in features]
    out = []
    for powers in estimator.named_steps["poly"].powers_:
        term: list[str] = []
        for j, p in enumerate(powers):
            term += [features[j]] * int(p)
        out.append(term)
    return out


def _term_rows(model: str, estimator, features: Sequence[str]) -> list[dict[str, Any]]:
    """coef.jsonl rows (importance.jsonl for lightgbm), largest first."""
    reg = estimator.named_steps["reg"]
    terms = _terms(estimator, features)
    if model == "lightgbm":
        gains = reg.booster_.feature_importance(importance_type="gain")
        rows = [
            {"feat": f, "importance": _json_float(float(g)), "terms": t}
            for f, g, t in zip(features, gains, terms, strict=True)
        ]
        key = "importance"
    else:
        rows = [
            {"feat": str(f), "coef": _json_float(float(c)), "terms": t}
            for f, c, t in zip(reg.feature_names_in_, reg.coef_, terms, strict=True)
        ]
        key = "coef"
    rows.sort(key=lambda r: (-(r[key] if r[key] is not None else -math.inf), r["feat"]))
    return rows


def _n_terms(model: str, estimator) -> int | None:
    """Unknowns of a least-squares fit, less the intercept (None for trees)."""
    if model == "lightgbm":
        return None
    return len(estimator.named_steps["reg"].coef_)


def rows_needed(n_terms: int) -> int:
    """The smallest table whose training split (all but ``ceil(DEV_FRACTION * n)``
    rows, as ``train_test_split`` cuts it) has a row per unknown (terms + intercept)."""
    n = 2
    while n - math.ceil(DEV_FRACTION * n) < n_terms + 1:
        n += 1
    return n


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
    target: str | None = None,
    features: Sequence[str] | None = None,
    seed: int = 42,
    overwrite: bool = False,
) -> FitResult:
    """Fit ``model`` on ``csv`` and write metrics, coefficients, predictions and the model
    under ``out`` (local dir or gs:// prefix). Nothing is visible at ``out`` unless
    everything was written; an existing non-empty ``out`` needs ``overwrite``.
    ``target``: the column to predict (default: the one collect's ``--target`` recorded
    in the table's columns sidecar, else ``Overall``)."""
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
    estimator = _estimator(model, seed)  # a missing lightgbm fails before any work
    if storage.dir_state(out, marker=METRICS_FILE) == storage.COMPLETE and not overwrite:
        raise AlreadyExistsError(out)
    if model == "quadratic" and "quadratic" not in out:
        log.warning(
            "%s: upstream's sample_best_subset.py loads poly.pkl only when the model path "
            "contains 'quadratic'; put that word in --out if the fit is meant for it",
            out,
        )

    if target is None:
        target = recorded_target(csv) or OVERALL
    frame, cols = load_table(csv, target=target, features=features)
    x = _design(frame, cols, log_linear, csv, model)
    y = frame[target].to_numpy(dtype=float)
    idx = np.arange(len(frame))
    train_idx, dev_idx = train_test_split(
        idx, test_size=DEV_FRACTION, random_state=seed, shuffle=True
    )

    estimator.fit(x.iloc[train_idx], y[train_idx])
    n_terms = _n_terms(model, estimator)
    unknowns = None if n_terms is None else n_terms + 1
    curve = []
    for frac in LEARNING_CURVE_FRACTIONS:
        n = max(1, round(frac * len(train_idx)))
        part = train_idx[:n]
        est = clone(estimator).fit(x.iloc[part], y[part])
        curve.append(
            {
                "fraction": frac,
                "n_train": int(n),
                "underdetermined": unknowns is not None and n < unknowns,
                "train": _dev_metrics(y[part], est.predict(x.iloc[part])),
                "dev": _dev_metrics(y[dev_idx], est.predict(x.iloc[dev_idx])),
            }
        )
    dev = _dev_metrics(y[dev_idx], estimator.predict(x.iloc[dev_idx]))
    mean = float(y[train_idx].mean())
    baseline = {
        "kind": "mean of the training rows",
        "prediction": mean,
        "dev": _dev_metrics(y[dev_idx], np.full(len(dev_idx), mean)),
    }
    reg = estimator.named_steps["reg"]
    underdetermined = unknowns is not None and len(train_idx) < unknowns
    coefs = _term_rows(model, estimator, cols)

    label = label_column(frame)
    split = np.empty(len(frame), dtype=object)
    split[train_idx] = "train"
    split[dev_idx] = "dev"
    predicted = estimator.predict(x)

    versions = {"scikit-learn": sklearn.__version__, "numpy": np.__version__}
    if model == "lightgbm":
        versions["lightgbm"] = _lightgbm().__version__
    metrics = {
        "model": model,
        "log_linear": log_linear,
        "target": target,
        "features": cols,
        "seed": seed,
        "n_rows": len(frame),
        "n_train": len(train_idx),
        "n_dev": len(dev_idx),
        "n_terms": n_terms,
        "underdetermined": underdetermined,
        "rows_needed": None if n_terms is None else rows_needed(n_terms),
        "dev": dev,
        "baseline": baseline,
        "learning_curve": curve,
        "intercept": None if model == "lightgbm" else _json_float(float(reg.intercept_)),
        "label_column": label,
        "source": storage.basename(csv),
        "versions": versions,
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

    with storage.staged_dir(out, marker=METRICS_FILE, overwrite=overwrite) as tmp:
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        terms_file = IMPORTANCE_FILE if model == "lightgbm" else COEF_FILE
        with open(tmp / terms_file, "w", encoding="utf-8") as f:
            for row in coefs:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        preds.to_csv(tmp / PREDICTIONS_FILE, index=False, float_format="%.10g")
        joblib.dump(
            {
                "model": estimator,
                "features": cols,
                "target": target,
                "log_linear": log_linear,
                "model_kind": model,
            },
            tmp / MODEL_FILE,
        )
        joblib.dump(reg, tmp / UPSTREAM_MODEL_FILE)
        if "poly" in estimator.named_steps:
            joblib.dump(estimator.named_steps["poly"], tmp / UPSTREAM_POLY_FILE)
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
        baseline=baseline,
        n_terms=n_terms,
        underdetermined=underdetermined,
        rows_needed=metrics["rows_needed"],
    )


def load_model(fit_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved ``{"model", "features", "target", "log_linear", "model_kind"}`` of a fit
    directory."""
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
    model = saved.get("model_kind", "linear")
    x = _design(frame, saved["features"], saved["log_linear"], "table", model)
    return saved["model"].predict(x)


def read_fit(fit_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics, terms)`` of a fit directory: the rows of ``coef.jsonl`` (each with
    ``feat``, ``coef`` and ``terms``) or, for lightgbm, of ``importance.jsonl``."""
    fit_dir = os.fspath(fit_dir)

    def uri_of(name: str) -> str:
        uri = storage.join(fit_dir, name)
        if not storage.exists(uri):
            raise FitError(f"{uri}: missing; is {fit_dir} the --out of `rmeval fit`?")
        return uri

    def json_values(name: str, lines: bool) -> list[Any]:
        uri = uri_of(name)
        text = storage.read_text(uri)
        try:
            return [json.loads(x) for x in (text.splitlines() if lines else [text]) if x.strip()]
        except json.JSONDecodeError as exc:
            raise FitError(
                f"{uri}: corrupt fit output ({exc.msg}); run `rmeval fit` again"
            ) from exc

    metrics = (json_values(METRICS_FILE, lines=False) or [None])[0]
    if not isinstance(metrics, dict):
        raise FitError(f"{fit_dir}: {METRICS_FILE} is not a JSON object; run `rmeval fit` again")
    for key in FIT_KEYS:
        if key not in metrics:
            raise FitError(
                f"{fit_dir}: {METRICS_FILE} has no {key!r} (written by an older rmeval); "
                "run `rmeval fit` again"
            )
    coefs = json_values(IMPORTANCE_FILE if metrics.get("model") == "lightgbm" else COEF_FILE, True)
    uri_of(PREDICTIONS_FILE)
    for row in coefs:  # fits written before coef.jsonl took upstream's key
        if "feat" not in row and "feature" in row:
            row["feat"] = row.pop("feature")
        row.setdefault("terms", [row.get("feat")])
    return metrics, coefs
