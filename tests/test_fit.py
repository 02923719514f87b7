"""rmeval fit on synthetic tables with a known generating function."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmeval import fit as fitmod
from rmeval.cli import main
from rmeval.errors import AlreadyExistsError, FitError
from tests.fit_helpers import (
    FEAT_A,
    FEAT_B,
    FEAT_NOISE,
    NOISE,
    TRUE_A,
    TRUE_B,
    rmse,
    synthetic_table,
    write_table,
)


def _coefs(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "coef.jsonl").read_text().splitlines()]


def test_linear_fit_recovers_signs_and_ranking(tmp_path):
    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    out = tmp_path / "fit"
    res = fitmod.fit(csv, out, model="linear")

    # the features are the count columns only: scores, subsets, ids are left out
    assert sorted(res.features) == sorted([FEAT_A, FEAT_B, FEAT_NOISE])
    coefs = _coefs(out)
    by = {c["feat"]: c["coef"] for c in coefs}
    assert by[FEAT_A] > 0 > by[FEAT_B]
    assert abs(by[FEAT_A]) > abs(by[FEAT_B]) > 5 * abs(by[FEAT_NOISE])
    # close to the generating values (noise 0.005 on a 0..0.4 signal)
    assert by[FEAT_A] == pytest.approx(TRUE_A, rel=0.1)
    assert by[FEAT_B] == pytest.approx(TRUE_B, rel=0.2)
    # sorted largest first
    assert [c["coef"] for c in coefs] == sorted((c["coef"] for c in coefs), reverse=True)
    assert coefs[0]["feat"] == FEAT_A and coefs[-1]["feat"] == FEAT_B
    assert all(c["terms"] == [c["feat"]] for c in coefs)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_dev"] == 80 and metrics["n_dev"] == 16
    assert metrics["dev"]["r2"] > 0.95
    assert metrics["dev"]["rmse"] < 3 * NOISE
    assert metrics["dev"]["rmse"] == pytest.approx(metrics["dev"]["mse"] ** 0.5)
    curve = metrics["learning_curve"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 0.75, 1.0]
    assert [p["n_train"] for p in curve] == [16, 32, 48, 64]
    assert curve[-1]["dev"] == metrics["dev"]

    # predictions.csv: every row once, dev rows match the reported metrics
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["name", "split", "actual", "predicted"]
    assert sorted(preds["name"]) == sorted(synthetic_table()["name"])
    dev = preds[preds["split"] == "dev"]
    assert len(dev) == 16
    assert rmse(dev["actual"], dev["predicted"]) == pytest.approx(metrics["dev"]["rmse"], rel=1e-6)

    # the saved model predicts the same from the table
    saved = fitmod.load_model(out)
    assert saved["features"] == res.features and saved["target"] == "Overall"
    table = pd.read_csv(csv)
    by_name = dict(zip(preds["name"], preds["predicted"], strict=True))
    expected = np.array([by_name[n] for n in table["name"]])
    np.testing.assert_allclose(fitmod.predict(out, table), expected, rtol=1e-8)


def test_same_seed_same_split_different_seed_different_split(tmp_path):
    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    fitmod.fit(csv, tmp_path / "a", seed=7)
    fitmod.fit(csv, tmp_path / "b", seed=7)
    fitmod.fit(csv, tmp_path / "c", seed=8)
    for name in ("metrics.json", "coef.jsonl", "predictions.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    split = lambda d: list(pd.read_csv(tmp_path / d / "predictions.csv")["split"])  # noqa: E731
    assert split("a") != split("c")


def test_quadratic_beats_linear_on_a_curved_response(tmp_path):
    csv = write_table(synthetic_table(n=120, kind="quadratic"), tmp_path / "runs.csv")
    lin = fitmod.fit(csv, tmp_path / "lin", model="linear", features=[FEAT_A, FEAT_B])
    quad = fitmod.fit(csv, tmp_path / "quad", model="quadratic", features=[FEAT_A, FEAT_B])
    assert quad.dev["rmse"] < 0.5 * lin.dev["rmse"]
    coefs = _coefs(tmp_path / "quad")
    assert len(coefs) == 5  # a, b, a^2, a*b, b^2
    by = {tuple(c["terms"]): c for c in coefs}
    assert sorted(by) == sorted(
        [(FEAT_A,), (FEAT_B,), (FEAT_A, FEAT_A), (FEAT_A, FEAT_B), (FEAT_B, FEAT_B)]
    )
    assert by[(FEAT_A, FEAT_A)]["coef"] == pytest.approx(8e-7, rel=0.2)
    assert by[(FEAT_A, FEAT_A)]["feat"] == f"{FEAT_A}^2"  # scikit-learn's name of the term


def test_log_linear_recovers_log_coefficients(tmp_path):
    csv = write_table(synthetic_table(kind="log"), tmp_path / "runs.csv")
    res = fitmod.fit(csv, tmp_path / "fit", log_linear=True, features=[FEAT_A, FEAT_B])
    by = {c["feat"]: c["coef"] for c in res.coefficients}
    assert by[FEAT_A] == pytest.approx(0.05, rel=0.15)
    assert by[FEAT_B] == pytest.approx(-0.02, rel=0.3)
    plain = fitmod.fit(csv, tmp_path / "plain", features=[FEAT_A, FEAT_B])
    assert res.dev["rmse"] < plain.dev["rmse"]


def test_recorded_feature_columns_win_over_detection(tmp_path):
    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    (tmp_path / "runs.columns.json").write_text(
        json.dumps({"target": "Overall", "features": [FEAT_A]})
    )
    res = fitmod.fit(csv, tmp_path / "fit")
    assert res.features == [FEAT_A]
    (tmp_path / "runs.columns.json").write_text(json.dumps({"features": []}))
    with pytest.raises(FitError, match="no feature columns"):
        fitmod.fit(csv, tmp_path / "fit2")
    assert not (tmp_path / "fit2").exists()


def test_fit_to_gcs(tmp_path, gcs_bucket):
    from rmeval import storage

    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    storage.upload_file(csv, f"{gcs_bucket}/tables/runs.csv")
    out = f"{gcs_bucket}/fits/linear"
    fitmod.fit(f"{gcs_bucket}/tables/runs.csv", out)
    metrics, coefs = fitmod.read_fit(out)
    assert metrics["n_rows"] == 80 and coefs[0]["feat"] == FEAT_A
    assert fitmod.load_model(out)["features"] == metrics["features"]
    with pytest.raises(AlreadyExistsError, match="already exists"):
        fitmod.fit(csv, out)


def test_cli_fit_and_no_overwrite(tmp_path, capsys):
    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    out = tmp_path / "fit"
    assert main(["fit", csv, "--model", "linear", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and str(out) in printed
    before = (out / "coef.jsonl").read_bytes()
    assert main(["fit", csv, "--model", "quadratic", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "coef.jsonl").read_bytes() == before
    assert main(["fit", csv, "--model", "quadratic", "--out", str(out), "--overwrite"]) == 0
    assert len(_coefs(out)) == 9  # 3 linear + 6 second-order terms
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "runs.csv"]  # no temp dirs left


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no_overall", "no 'Overall' column"),
        ("no_features", "no feature columns"),
        ("too_few_rows", "fitting needs at least 5"),
        ("not_csv", "not a readable CSV"),
        ("missing_feature", "feature column(s) not in the table"),
    ],
)
def test_bad_input_one_line_exit_1_nothing_written(tmp_path, capsys, case, expect):
    frame = synthetic_table(n=20)
    args = []
    if case == "no_overall":
        frame = frame.drop(columns=["Overall"])
    elif case == "no_features":
        frame = frame.drop(columns=[FEAT_A, FEAT_B, FEAT_NOISE])
    elif case == "too_few_rows":
        frame = frame.head(4)
    elif case == "missing_feature":
        args = ["--features", FEAT_A, "no such feature"]
    csv = write_table(frame, tmp_path / "in" / "runs.csv")
    if case == "not_csv":
        Path(csv).write_bytes(b'"unterminated,\n\x00\x01')
    out = tmp_path / "out"
    if case == "no_overall":  # once through a real process: stderr and exit status
        proc = subprocess.run(
            [sys.executable, "-m", "rmeval", "fit", csv, "--out", str(out), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        rc, err = proc.returncode, proc.stderr
    else:
        rc = main(["fit", csv, "--out", str(out), *args])
        err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rmeval: error: ")
    assert expect in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["runs.csv"]


# --------------------------------------------------------------------------- upstream use


def _candidates(features: list[str]) -> pd.DataFrame:
    """Candidate instances to route to humans, one-hot on the feature columns (what
    upstream's ``convert_to_binary`` makes from the raw features): each row turns on a
    different set of features."""
    rows = [
        {FEAT_A: 1, FEAT_B: 0, FEAT_NOISE: 0},
        {FEAT_A: 0, FEAT_B: 1, FEAT_NOISE: 0},
        {FEAT_A: 1, FEAT_B: 1, FEAT_NOISE: 1},
        {FEAT_A: 0, FEAT_B: 0, FEAT_NOISE: 1},
        {FEAT_A: 0, FEAT_B: 0, FEAT_NOISE: 0},
    ]
    return pd.DataFrame(rows)[features]


def test_linear_model_pkl_gives_upstream_gains(tmp_path):
    """The loading path of upstream's ``sample_best_subset.py`` (topk, linear): joblib-load
    ``model.pkl``, pair ``feature_names_in_`` with ``coef_``, weigh each candidate's one-hot
    features by them, and take the top-``budget`` gains."""
    import joblib

    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    out = tmp_path / "linear_model"
    fitmod.fit(csv, out, model="linear")

    model = joblib.load(out / "model.pkl")  # a bare estimator: no rmeval needed to use it
    assert type(model).__module__.startswith("sklearn.")
    names = list(model.feature_names_in_)
    assert names == json.loads((out / "metrics.json").read_text())["features"]
    assert model.coef_.shape == (len(names),)
    weights = pd.Series(model.coef_, index=names)
    # coef.jsonl carries the same pairs under upstream's key
    rows = _coefs(out)
    assert {r["feat"]: r["coef"] for r in rows} == pytest.approx(weights.to_dict(), rel=1e-12)

    binary = _candidates(names)
    gains = (binary * weights).sum(axis=1)
    # a gain is what the model predicts one more such instance adds to a proxy mix's counts
    base = pd.DataFrame([[300, 200, 100]] * len(binary), columns=names)
    added = model.predict(base + binary) - model.predict(base)
    np.testing.assert_allclose(gains.to_numpy(), added, rtol=1e-9, atol=1e-15)
    # the generating function rewards FEAT_A and penalises FEAT_B
    order = list(gains.sort_values(ascending=False).index)
    assert order[0] == 0 and order[-1] == 1
    budget = 2
    assert gains.sort_values(ascending=False)[:budget].sum() == pytest.approx(
        gains[0] + gains[order[1]]
    )
    assert not (out / "poly.pkl").exists()


def test_quadratic_writes_poly_pkl_for_upstream(tmp_path):
    """Upstream's quadratic path: ``poly.pkl`` beside ``model.pkl`` (loaded when the model
    path says "quadratic"), gain = predict(poly(candidate)) - predict(poly(zeros)). The
    gains are checked against coef.jsonl's terms multiplied out by hand."""
    import joblib

    csv = write_table(synthetic_table(n=120, kind="quadratic"), tmp_path / "runs.csv")
    out = tmp_path / "helpsteer2_quadratic_model"
    fitmod.fit(csv, out, model="quadratic")
    model_path = out / "model.pkl"
    assert "quadratic" in str(model_path)
    model = joblib.load(model_path)
    poly = joblib.load(model_path.parent / "poly.pkl")
    features = json.loads((out / "metrics.json").read_text())["features"]
    assert list(poly.feature_names_in_) == features
    assert list(model.feature_names_in_) == list(poly.get_feature_names_out())

    binary = _candidates(features)
    zeros = pd.DataFrame(0, index=range(1), columns=features)
    gains = model.predict(poly.transform(binary)) - model.predict(poly.transform(zeros))

    rows = _coefs(out)
    assert sorted(r["feat"] for r in rows) == sorted(model.feature_names_in_)
    by_hand = np.zeros(len(binary))
    for r in rows:
        term = np.ones(len(binary))
        for col in r["terms"]:
            term = term * binary[col].to_numpy(dtype=float)
        by_hand += r["coef"] * term
    np.testing.assert_allclose(gains, by_hand, rtol=1e-9, atol=1e-12)


def test_lightgbm_model(tmp_path):
    """``--model lightgbm`` (upstream's other choice): a bare LGBMRegressor in model.pkl
    that predicts from the table's feature columns, its gain importances, and a dev error
    below the mean baseline on a table where Overall depends on FEAT_A."""
    import joblib
    import lightgbm

    csv = write_table(synthetic_table(n=200), tmp_path / "runs.csv")
    out = tmp_path / "lgbm"
    assert main(["fit", csv, "--model", "lightgbm", "--out", str(out)]) == 0
    model = joblib.load(out / "model.pkl")
    assert isinstance(model, lightgbm.LGBMRegressor)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "lightgbm" and not metrics["underdetermined"]
    table = pd.read_csv(csv)
    preds = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(
        model.predict(table[metrics["features"]]), preds["predicted"], rtol=1e-9
    )
    assert metrics["dev"]["rmse"] < 0.5 * metrics["baseline"]["dev"]["rmse"]
    imp = [json.loads(x) for x in (out / "importance.jsonl").read_text().splitlines()]
    assert imp[0]["feat"] == FEAT_A and imp[0]["importance"] > imp[-1]["importance"]
    assert not (out / "coef.jsonl").exists()
    again = tmp_path / "lgbm2"
    fitmod.fit(csv, again, model="lightgbm")
    for name in ("metrics.json", "importance.jsonl", "predictions.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_mean_baseline_is_the_training_mean(tmp_path):
    csv = write_table(synthetic_table(), tmp_path / "runs.csv")
    out = tmp_path / "fit"
    fitmod.fit(csv, out)
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    train_mean = preds.loc[preds["split"] == "train", "actual"].mean()
    dev = preds[preds["split"] == "dev"]["actual"].to_numpy()
    assert metrics["baseline"]["prediction"] == pytest.approx(train_mean)
    assert metrics["baseline"]["dev"]["rmse"] == pytest.approx(rmse(dev, train_mean))
    ss_tot = float(((dev - dev.mean()) ** 2).sum())
    ss_res = float(((dev - train_mean) ** 2).sum())
    assert metrics["baseline"]["dev"]["r2"] == pytest.approx(1 - ss_res / ss_tot)
    assert metrics["dev"]["rmse"] < 0.2 * metrics["baseline"]["dev"]["rmse"]


@pytest.mark.parametrize(
    "n, model, features, underdetermined, rows_needed",
    [
        (6, "linear", 3, False, 5),  # 4 train rows for 3 coefficients + intercept
        (6, "linear", 4, True, 7),  # the demo's shape: 4 train rows for 5 unknowns
        (80, "linear", 3, False, 5),
        (20, "quadratic", 3, False, 13),  # 16 train rows, 9 terms + intercept
        (10, "quadratic", 3, True, 13),  # 8 train rows for 10 unknowns
    ],
)
def test_underdetermined_is_flagged(tmp_path, n, model, features, underdetermined, rows_needed):
    frame = synthetic_table(n=n)
    cols = [FEAT_A, FEAT_B, FEAT_NOISE]
    if features == 4:
        frame["extra::x=1"] = np.arange(n) % 3
        cols.append("extra::x=1")
    csv = write_table(frame, tmp_path / "runs.csv")
    res = fitmod.fit(csv, tmp_path / "fit", model=model, features=cols[:features])
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    n_terms = features if model == "linear" else features * (features + 3) // 2
    assert metrics["n_terms"] == n_terms
    unknowns = n_terms + 1
    assert metrics["underdetermined"] is (metrics["n_train"] < unknowns)
    for p in metrics["learning_curve"]:
        assert p["underdetermined"] is (p["n_train"] < unknowns)
    # the smallest table whose 80% training split has a row per unknown
    need = next(m for m in range(2, 1000) if m - math.ceil(0.2 * m) >= unknowns)
    assert metrics["rows_needed"] == need
    assert res.underdetermined is metrics["underdetermined"] is underdetermined
    assert rows_needed == need


def test_cli_says_underdetermined_instead_of_r2(tmp_path, capsys):
    frame = synthetic_table(n=6)
    frame["extra::x=1"] = np.arange(6) % 3
    csv = write_table(frame, tmp_path / "runs.csv")
    assert main(["fit", csv, "--out", str(tmp_path / "fit")]) == 0
    printed = capsys.readouterr().out
    r2 = json.loads((tmp_path / "fit" / "metrics.json").read_text())["dev"]["r2"]
    assert "R² n/a: underdetermined: 4 training rows for 4 terms + intercept" in printed
    assert "at least 7 runs" in printed
    assert f"{r2:.4f}" not in printed and f"{r2:.4g}" not in printed
    assert "mean baseline" in printed


def test_kill_9_while_replacing_a_gcs_fit_keeps_the_old_one(tmp_path, gcs_bucket):
    """fit --overwrite to gs://, killed while uploading: the old fit stays whole (the new
    one is staged beside it, not written over it)."""
    from rmeval import cli, storage
    from tests.kill_at import run_killed

    out = f"{gcs_bucket}/fits/linear"
    csvs = [write_table(synthetic_table(seed=s), tmp_path / f"runs{s}.csv") for s in (1, 2)]

    def there() -> dict[str, bytes]:
        return {o.name: storage.read_bytes(o.uri) for o in storage.list_objects_if_any(out)}

    assert cli.main(["fit", str(csvs[0]), "--out", out]) == 0
    before = there()
    run_killed("http", r"^POST /upload/", "rmeval", "fit", str(csvs[1]), "--out", out,
               "--overwrite", nth=2)  # fmt: skip
    assert there() == before
    assert cli.main(["fit", str(csvs[1]), "--out", out, "--overwrite"]) == 0
    after = there()
    assert sorted(after) == sorted(before) and after != before
    assert [o.name.split("/")[0] for o in storage.list_objects(f"{gcs_bucket}/fits")] == [
        "linear"
    ] * len(after)
