"""collect from ``beaker://ORG/WORKSPACE`` through the real beaker-py against the fake
Beaker service: finalized runs fetched, the rest reported, concurrency bounded."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rmeval import cli, collect
from rmeval.errors import CollectError
from tests.collect_fixtures import (
    HOSTILE_KEYS,
    counts_run_name,
    expected_scores,
    make_counts,
    make_metrics,
    new_uuid,
)

PREFIX = "rm-eval-helpsteer2-counts-"


def _metrics_file(seed: int) -> dict[str, bytes]:
    return {"metrics.json": json.dumps(make_metrics(seed)).encode()}


def test_beaker_source_states_duplicates_and_checksums(fake_beaker):
    ws = fake_beaker.add_workspace("ai2/hp-evals")
    fake_beaker.page_size_cap = 4  # several listing pages
    good = {}
    for i in range(6):
        name = f"{PREFIX}run{i}"
        good[name] = make_metrics(seed=i)
        fake_beaker.add_experiment(
            ws, name, files={"metrics.json": json.dumps(good[name])}, created=1000.0 + i
        )
    # a relaunch under the same name: the newer one is kept, the older reported
    newer = make_metrics(seed=50)
    fake_beaker.add_experiment(
        ws, f"{PREFIX}run0", files={"metrics.json": json.dumps(newer)}, created=2000.0
    )
    good[f"{PREFIX}run0"] = newer
    fake_beaker.add_experiment(ws, f"{PREFIX}running", state="running")
    fake_beaker.add_experiment(ws, f"{PREFIX}queued", state="queued")
    fake_beaker.add_experiment(ws, f"{PREFIX}failed", state="failed", files=_metrics_file(60))
    fake_beaker.add_experiment(ws, f"{PREFIX}canceled", state="canceled")
    fake_beaker.add_experiment(ws, f"{PREFIX}no-metrics", files={"other.txt": b"x"})
    fake_beaker.add_experiment(
        ws, f"{PREFIX}tampered", files=_metrics_file(61), bad_digest=("metrics.json",)
    )
    fake_beaker.add_experiment(ws, f"{PREFIX}corrupt", files={"metrics.json": b"{nope"})
    fake_beaker.add_experiment(ws, "other-experiment", files=_metrics_file(62))
    fake_beaker.add_experiment(
        ws, "described-only", files=_metrics_file(63), description=f"about {PREFIX}x"
    )
    other_ws = fake_beaker.add_workspace("ai2/elsewhere")
    fake_beaker.add_experiment(other_ws, f"{PREFIX}elsewhere", files=_metrics_file(64))

    fake_beaker.latency = 0.02  # calls overlap when fetched concurrently
    table = collect.collect("beaker://ai2/hp-evals", experiment_prefix=PREFIX, max_concurrency=4)

    assert sorted(r["name"] for r in table.rows) == sorted(good)
    for row in table.rows:
        assert row["Overall"] == pytest.approx(expected_scores(good[row["name"]])["Overall"])
    kinds = {i.name.removeprefix(PREFIX): i.kind for i in table.issues}
    assert kinds == {
        "run0": "duplicate_run",
        "running": "skipped_unfinished",
        "queued": "skipped_unfinished",
        "failed": "skipped_failed",
        "canceled": "skipped_failed",
        "no-metrics": "missing_metrics",
        "tampered": "malformed_metrics",
        "corrupt": "malformed_metrics",
    }
    assert table.runs_seen == 7 and table.source == "beaker://ai2/hp-evals"
    assert all(i.file and i.file.startswith("beaker://ai2/hp-evals/") for i in table.issues)
    assert 1 < fake_beaker.peak_in_flight <= 4 + 1  # workers + the listing thread


def test_beaker_counts_cli_and_default_prefix(fake_beaker, tmp_path, capsys):
    ws = fake_beaker.add_workspace("ai2/hp-evals")
    rng = random.Random(3)
    feats = tmp_path / "feats"
    feats.mkdir()
    expected = {}
    for i in range(4):
        uid, budget = new_uuid(rng), rng.randint(10, 7000)
        name = counts_run_name(uid, budget, prefix="rm-eval-hs2-")
        counts = make_counts(rng)
        (feats / f"regressor_feats_ID__{uid}__SWAPS_{budget}.json").write_text(json.dumps(counts))
        fake_beaker.add_experiment(ws, name, files=_metrics_file(70 + i))
        expected[name] = (uid, budget, counts)
    fake_beaker.add_experiment(ws, "not-an-eval", files=_metrics_file(80))
    out = tmp_path / "hs2.csv"
    rc = cli.main(
        [
            "collect",
            "--source",
            "beaker://ai2/hp-evals",
            "--feature-counts-dir",
            str(feats),
            "--output",
            str(out),
            "--max-concurrency",
            "3",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    df = pd.read_csv(out)
    assert sorted(df["name"]) == sorted(expected)  # default prefix rm-eval- excludes the other
    assert list(df.columns[-len(HOSTILE_KEYS) :]) == sorted(HOSTILE_KEYS)
    for _, r in df.iterrows():
        uid, budget, counts = expected[r["name"]]
        assert r["uuid"] == uid and r["budget"] == budget
        assert all(r[k] == v for k, v in counts.items())


def test_missing_workspace_is_one_clear_error(fake_beaker):
    with pytest.raises(CollectError, match="workspace 'ai2/nope' not found"):
        collect.collect("beaker://ai2/nope")


def test_seed_script_flags_verbatim(fake_beaker, tmp_path):
    ws = fake_beaker.add_workspace("ai2/hp-evals")
    rng = random.Random(11)
    feats = tmp_path / "feats"
    feats.mkdir()
    names = []
    for i in range(3):
        uid, budget = new_uuid(rng), rng.randint(10, 7000)
        names.append(counts_run_name(uid, budget, prefix="rm-eval-helpsteer2-count-"))
        fake_beaker.add_experiment(ws, names[-1], files=_metrics_file(90 + i))
        (feats / f"regressor_feats_ID__{uid}__SWAPS_{budget}.json").write_text(
            json.dumps(make_counts(rng))
        )
    fake_beaker.add_experiment(ws, "rm-eval-other-dataset", files=_metrics_file(99))
    out = tmp_path / "helpsteer2-counts-runs.csv"
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "scripts" / "fetch_evals_rewardbench.py"),
            "--output_path",
            str(out),
            "--beaker_workspace",
            "ai2/hp-evals",
            "--experiment_prefix",
            "rm-eval-helpsteer2-count",
            "--feature_counts_dir",
            str(feats),
            "--gpt4_threshold_score",
            "0.6",
            "--dataset_total_size",
            "7000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert sorted(df["name"]) == sorted(names)
    assert set(df["label"]) <= {0, 1}
    assert list(df["label"]) == [int(o > 0.6) for o in df["Overall"]]


def test_beaker_source_exact_names(fake_beaker):
    """Nested prefixes: only the named experiments are read, whatever else matches."""
    ws = fake_beaker.add_workspace("ai2/nested")
    for i, name in enumerate(
        [f"{PREFIX}exp_a", f"{PREFIX}exp_b", f"{PREFIX}v2-exp_a", "rm-eval-multipref-exp_a"]
    ):
        fake_beaker.add_experiment(ws, name, files=_metrics_file(i))
    table = collect.collect(
        "beaker://ai2/nested",
        experiment_prefix=PREFIX,
        names={f"{PREFIX}exp_a", f"{PREFIX}exp_b"},
    )
    assert sorted(r["name"] for r in table.rows) == [f"{PREFIX}exp_a", f"{PREFIX}exp_b"]


def test_one_failing_experiment_is_one_issue_not_an_abort(fake_beaker, tmp_path):
    """Beaker refuses one experiment's result file (403 on every download of it): that
    experiment is one fetch_failed issue, and every other experiment is still collected."""
    ws = fake_beaker.add_workspace("ai2/hp-evals")
    good = {}
    for i in range(4):
        name = f"{PREFIX}run{i}"
        good[name] = make_metrics(seed=20 + i)
        fake_beaker.add_experiment(ws, name, files={"metrics.json": json.dumps(good[name])})
    fake_beaker.add_experiment(
        ws, f"{PREFIX}refused", files=_metrics_file(30), file_errors={"metrics.json": 403}
    )
    out = tmp_path / "t.csv"
    args = ["collect", "--source", "beaker://ai2/hp-evals", "--experiment-prefix", PREFIX]
    assert cli.main([*args, "--output", str(out), "--max-concurrency", "2"]) == 0

    assert sorted(pd.read_csv(out)["name"]) == sorted(good)
    doc = json.loads((tmp_path / "t.issues.json").read_text())
    assert doc["counts"] == {"fetch_failed": 1}
    (issue,) = doc["issues"]
    assert issue["name"] == f"{PREFIX}refused"
    assert "BeakerPermissionsError" in issue["detail"] and "refused" in issue["detail"]
    assert issue["file"].startswith("beaker://ai2/hp-evals/")
    table = collect.collect("beaker://ai2/hp-evals", experiment_prefix=PREFIX)
    assert [(i.kind, i.name) for i in table.issues] == [("fetch_failed", f"{PREFIX}refused")]
    assert len(table.rows) == len(good)
