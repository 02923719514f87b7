"""End to end on the embedded default: `rmeval demo` (3 runs) and `rmeval pipeline`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rmeval import results
from rmeval.rewardbench import scoring_v2
from rmeval.store import METRICS_V2_FILE
from tests.cli_runner import run_rmeval

_rmeval = run_rmeval  # the shared runner (tests/cli_runner.py); tests take the rmeval_cli fixture


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_demo_end_to_end_and_idempotent(rmeval_cli, tmp_path):
    proc = rmeval_cli(
        "demo", "--workdir", "work", "--results-dir", "results", "--runs", "3", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "runs:    3 converted and scored now" in out

    ds = tmp_path / "results" / "demo"
    table = ds / "counts-runs.csv"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    # every run joined its feature counts: uuid, budget and the opaque feature columns are filled
    feats = json.loads((ds / "counts-runs.columns.json").read_text())["features"]
    assert any("|" in c and "=" in c and ":" in c for c in feats)
    counts_dir = tmp_path / "work" / "bucket" / "feats"
    for row in rows:
        assert 0.0 <= float(row["Overall"]) <= 1.0
        (counts,) = counts_dir.glob(
            f"regressor_feats_ID__{row['uuid']}__SWAPS_{row['budget']}.json"
        )
        expected = json.loads(counts.read_text())
        assert {c: float(row[c]) for c in feats} == {c: float(v) for c, v in expected.items()}
    # the published metrics are what the table was built from
    store = tmp_path / "work" / "store"
    for row in rows:
        metrics = json.loads((store / row["name"] / "metrics.json").read_text())
        assert metrics["model_type"] == "Seq. Classifier"
        assert float(row["hep-go"]) == pytest.approx(metrics["hep-go"], abs=1e-6)
        # and RewardBench 2, from the same conversion, beside it
        v2 = json.loads((store / row["name"] / METRICS_V2_FILE).read_text())
        assert v2["model"] == row["name"] and v2["chat_template"] == metrics["chat_template"]
        assert float(row["rb2_Ties"]) == pytest.approx(v2["Ties"], abs=1e-6)
        six = [v2[s] for s in scoring_v2.SUBSETS]
        assert float(row["rb2_Overall"]) == pytest.approx(sum(six) / 6, abs=1e-6)
    history = (ds / "HISTORY.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["rows"]["added"] == 3
    assert (ds / "counts-runs.report.ipynb").exists()
    assert list((ds / "counts-runs.report_figures").glob("*.png"))
    # ... where the one table layout says they are, as the pipeline reports them
    paths = results.table_paths(tmp_path / "results", "demo", "counts-runs")
    assert (paths.csv, paths.figures) == (table, ds / "counts-runs.report_figures")
    assert f"report:  {paths.report}" in out and f"history: {paths.history}" in out

    before = _snapshot(tmp_path / "results")
    store_before = _snapshot(store)
    again = rmeval_cli(
        "demo", "--workdir", "work", "--results-dir", "results", "--runs", "3", cwd=tmp_path
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "runs:    0 converted and scored now" in again.stdout
    assert "(unchanged)" in again.stdout
    assert _snapshot(tmp_path / "results") == before, "a re-run must rewrite nothing"
    assert _snapshot(store) == store_before


_BASE = "source: a\nstore: b\nresults_dir: r\nresults_dataset: d\n"


@pytest.mark.parametrize(
    "text,message",
    [
        (_BASE + "bogus: 1\n", "unknown key 'bogus'; known keys: source, store"),
        ("source: a\nstore: b\n", "missing required key(s): results_dataset, results_dir"),
        ("- a\n- b\n", "expected a YAML mapping"),
        (_BASE + "max_parallel: two\n", "max_parallel must be an integer, got 'two'"),
        (_BASE + "backend: slurm\n", "backend must be one of local, beaker, got 'slurm'"),
        (_BASE + "backend: beaker\n", "needs a workspace"),
        (_BASE + "scoring: tulu\n", "scoring must be one of trained, run_rm, got 'tulu'"),
        (_BASE + "fit: {model: forest}\n", "fit: model must be one of linear, quadratic"),
        (_BASE + "fit: {modle: linear}\n", "fit: unknown key 'modle'; known keys: model"),
        (_BASE + "fit: {seed: x}\n", "fit: seed must be an integer, got 'x'"),
        (_BASE + "dtype: fp8\n", "dtype must be one of auto, bf16, fp16, fp32, got 'fp8'"),
        (_BASE + "num_heads: 0\n", "num_heads must be positive, got 0"),
        (_BASE + "dataset: e\n", "results_dataset is given twice"),
    ],
)
def test_bad_pipeline_config_is_one_line(rmeval_cli, tmp_path, text, message):
    """Each key checked strictly (fit's sub-keys included), naming the key: in process, and
    once through the CLI (one line, exit 1)."""
    from rmeval.errors import ConfigError
    from rmeval.pipeline import load_config

    cfg = tmp_path / "p.yml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert message in str(exc.value) and str(cfg) in str(exc.value)
    if "bogus" in text:
        proc = rmeval_cli("pipeline", str(cfg), cwd=tmp_path)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and str(cfg) in lines[0], proc.stderr


def test_old_pipeline_keys_are_accepted_with_a_note_naming_the_new_key(tmp_path, caplog):
    from rmeval.pipeline import load_config

    cfg = tmp_path / "p.yml"
    cfg.write_text(
        "source: a\nstore: b\nresults_dir: r\ndataset: d\ndataset_file: rb.jsonl\n"
        "features_dir: feats\nmodel-size: 13b\nfit: {log-linear: true}\n"
    )
    with caplog.at_level("WARNING", logger="rmeval"):
        loaded = load_config(cfg)
    assert loaded["results_dataset"] == "d"
    assert loaded["eval_data"] == str(tmp_path / "rb.jsonl")  # a path: relative to the config
    assert loaded["feature_counts_dir"] == str(tmp_path / "feats")
    assert loaded["model_size"] == "13b" and loaded["fit"] == {"log_linear": True}
    notes = " | ".join(r.getMessage() for r in caplog.records)
    for old, new in (
        ("dataset", "results_dataset"),
        ("dataset_file", "eval_data"),
        ("features_dir", "feature_counts_dir"),
        ("model-size", "model_size"),
        ("log-linear", "log_linear"),
    ):
        assert f"key {old!r} is deprecated; use {new!r}" in notes


def test_missing_pipeline_config(rmeval_cli, tmp_path):
    proc = rmeval_cli("pipeline", str(tmp_path / "nope.yml"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "no such pipeline config" in proc.stderr


def test_pipeline_collects_only_its_own_runs(rmeval_cli, tmp_path):
    """A store shared by several datasets, with nested prefixes: the table holds exactly
    the runs of this pipeline's checkpoints."""
    import random

    from rmeval.rewardbench.scoring import SUBSETS

    for exp in ("exp_a", "exp_b"):  # already evaluated: plan skips them, nothing converts
        (tmp_path / "ckpts" / f"{exp}--h1").mkdir(parents=True)
        (tmp_path / "ckpts" / f"{exp}--h1" / "streaming_params_10").write_bytes(b"")
    rng = random.Random(1)
    for run in ("hs2-exp_a", "hs2-exp_b", "hs2-exp_c", "hs2-counts-exp_a", "mp-exp_a"):
        metrics = {"model": run, "model_type": "Seq. Classifier", "chat_template": "tulu"}
        metrics.update({s: rng.random() for s in SUBSETS})
        (tmp_path / "store" / run).mkdir(parents=True)
        (tmp_path / "store" / run / "metrics.json").write_text(json.dumps(metrics))
    cfg = tmp_path / "p.yml"
    cfg.write_text(
        "source: ckpts\nstore: store\nprefix: hs2\nresults_dir: results\ndataset: hs2\n"
        "table: runs\nfit: false\nreport: false\n"
    )
    proc = rmeval_cli("pipeline", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 converted and scored now, 2 skipped" in proc.stdout
    with (tmp_path / "results" / "hs2" / "runs.csv").open(newline="") as f:
        names = sorted(r["name"] for r in csv.DictReader(f))
    assert names == ["hs2-exp_a", "hs2-exp_b"]


def test_fit_is_redone_only_when_the_table_or_its_settings_change(rmeval_cli, tmp_path):
    import random

    from rmeval import naming
    from rmeval.rewardbench.scoring import SUBSETS

    rng = random.Random(2)
    (tmp_path / "feats").mkdir()
    for i in range(10):
        uid, budget = f"{i:032x}", 100 * (i + 1)
        exp = f"rm_ID__{uid}__SWAPS_{budget}"
        (tmp_path / "ckpts" / f"{exp}--h").mkdir(parents=True)
        (tmp_path / "ckpts" / f"{exp}--h" / "streaming_params").write_bytes(b"")
        metrics = {"model": exp, "model_type": "Seq. Classifier", "chat_template": "tulu"}
        metrics.update({s: rng.random() for s in SUBSETS})
        (tmp_path / "store" / f"p-{exp}").mkdir(parents=True)
        (tmp_path / "store" / f"p-{exp}" / "metrics.json").write_text(json.dumps(metrics))
        counts = {"f::a=1": rng.randrange(50), "f::b=2": rng.randrange(50)}
        (tmp_path / "feats" / naming.feature_counts_filename(uid, budget)).write_text(
            json.dumps(counts)
        )
    base = (
        "source: ckpts\nstore: store\nprefix: p\nresults_dir: results\nresults_dataset: d\n"
        "table: runs\nfeature_counts_dir: feats\nreport: false\n"
    )
    cfg = tmp_path / "p.yml"
    cfg.write_text(base + "fit: {model: linear}\n")
    assert rmeval_cli("pipeline", str(cfg), cwd=tmp_path).returncode == 0
    fit_metrics = tmp_path / "results" / "d" / "runs.linear.fit" / "metrics.json"
    first = fit_metrics.stat().st_mtime_ns
    assert json.loads(fit_metrics.read_text())["model"] == "linear"

    assert rmeval_cli("pipeline", str(cfg), cwd=tmp_path).returncode == 0
    assert fit_metrics.stat().st_mtime_ns == first  # nothing changed: nothing redone

    cfg.write_text(base + "fit: {model: quadratic}\n")
    proc = rmeval_cli("pipeline", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    quadratic = fit_metrics.parents[1] / "runs.quadratic.fit" / "metrics.json"
    assert json.loads(quadratic.read_text())["model"] == "quadratic"  # its own directory
