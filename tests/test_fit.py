"""rmeval fit on synthetic tables with a known generating function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmeval import fit as fitmod
from rmeval.cli import main
from rmeval.errors import FitError
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
    by = {c["feature"]: c["coef"] for c in coefs}
    assert by[FEAT_A] > 0 > by[FEAT_B]
    assert abs(by[FEAT_A]) > abs(by[FEAT_B]) > 5 * abs(by[FEAT_NOISE])
    # close to the generating values (noise 0.005 on a 0..0.4 signal)
    assert by[FEAT_A] == pytest.approx(TRUE_A, rel=0.1)
    assert by[FEAT_B] == pytest.approx(TRUE_B, rel=0.2)
    # sorted largest first
    assert [c["coef"] for c in coefs] == sorted((c["coef"] for c in coefs), reverse=True)
    assert coefs[0]["feature"] == FEAT_A and coefs[-1]["feature"] == FEAT_B
    assert all(c["terms"] == [c["feature"]] for c in coefs)

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
    by = {c["feature"]: c for c in coefs}
    assert by[f"{FEAT_A}^2"]["terms"] == [FEAT_A, FEAT_A]
    assert by[f"{FEAT_A}^2"]["coef"] == pytest.approx(8e-7, rel=0.2)
    assert f"{FEAT_A} * {FEAT_B}" in by


def test_log_linear_recovers_log_coefficients(tmp_path):
    csv = write_table(synthetic_table(kind="log"), tmp_path / "runs.csv")
    res = fitmod.fit(csv, tmp_path / "fit", log_linear=True, features=[FEAT_A, FEAT_B])
    by = {c["feature"]: c["coef"] for c in res.coefficients}
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
    assert metrics["n_rows"] == 80 and coefs[0]["feature"] == FEAT_A
    assert fitmod.load_model(out)["features"] == metrics["features"]
    with pytest.raises(FitError, match="already exists"):
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
