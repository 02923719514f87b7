"""results/<dataset>/<table>.csv with HISTORY.jsonl: versions, row diffs, no-op updates."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmeval import cli, collect, results
from rmeval.errors import ResultsError, UsageError
from rmeval.table import render_csv
from tests.collect_fixtures import make_metrics


def _store(root, runs: dict[str, dict]) -> str:
    for name, m in runs.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(m))
    return str(root)


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_versions_diffs_and_noop(tmp_path):
    store = tmp_path / "store"
    res = tmp_path / "results"
    _store(store, {f"run{i}": make_metrics(seed=i) for i in range(3)})

    rec1 = results.update(
        collect.collect(str(store)), res, "helpsteer2", "counts-runs", command="cmd 1"
    )
    ds = res / "helpsteer2"
    csv_bytes = (ds / "counts-runs.csv").read_bytes()
    assert rec1["version"] == 1 and rec1["table"] == "counts-runs.csv"
    assert rec1["rows"] == {"total": 3, "added": 3, "changed": 0, "removed": 0}
    assert rec1["sha256"] == hashlib.sha256(csv_bytes).hexdigest()
    assert rec1["source"] == str(store) and rec1["command"] == "cmd 1"
    assert rec1["rmeval_version"] and "time" in rec1
    assert sorted(p.name for p in ds.iterdir()) == [
        "HISTORY.jsonl",
        "counts-runs.columns.json",
        "counts-runs.csv",
        "counts-runs.issues.json",
    ]

    # an identical second collect writes nothing at all
    before = _snapshot(ds)
    assert results.update(collect.collect(str(store)), res, "helpsteer2", "counts-runs") is None
    assert _snapshot(ds) == before

    # one run re-evaluated, one removed, two added
    _store(store, {"run1": make_metrics(seed=41), "run7": make_metrics(seed=7)})
    _store(store, {"run8": make_metrics(seed=8)})
    (store / "run2" / "metrics.json").unlink()
    rec2 = results.update(collect.collect(str(store)), res, "helpsteer2", "counts-runs")
    assert rec2["version"] == 2
    assert rec2["rows"] == {"total": 4, "added": 2, "changed": 1, "removed": 1}
    assert rec2["runs"] == {"added": ["run7", "run8"], "changed": ["run1"], "removed": ["run2"]}
    history = results.read_history(ds)
    assert [r["version"] for r in history] == [1, 2]
    assert history[0] == rec1 and history[1] == rec2


def test_history_cli_and_git_sha(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    store = _store(tmp_path / "store", {"a": make_metrics(seed=1), "b": make_metrics(seed=2)})
    res = repo / "results"
    args = ["collect", "--source", store, "--results-dir", str(res), "--results-dataset", "hs2"]
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", *args, "--table", "runs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "version 1" in proc.stdout
    assert cli.main([*args, "--table", "runs"]) == 0
    assert "unchanged; nothing written" in capsys.readouterr().out
    (rec,) = results.read_history(res / "hs2")
    assert rec["git_sha"] == head
    assert rec["command"].startswith("rmeval collect --source ")
    assert f"--results-dir {res}" in rec["command"]

    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "history", str(res / "hs2")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == "1"
    assert rec["sha256"][:12] in lines[1] and store in lines[1]


def test_bad_inputs(tmp_path, capsys):
    t = collect.build_table([])
    with pytest.raises(UsageError):
        results.update(t, tmp_path, "../escape", "x")
    with pytest.raises(UsageError):
        results.update(t, "gs://bucket/results", "d", "x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "HISTORY.jsonl").write_text('{"version": 1}\nnot json\n')
    with pytest.raises(ResultsError, match=r"HISTORY.jsonl:2"):
        results.read_history(tmp_path / "d")
    assert cli.main(["history", str(tmp_path / "missing")]) == 1
    assert "no such results directory" in capsys.readouterr().err
    assert cli.main(["collect", "--source", "x", "--results-dir", str(tmp_path)]) == 2


REPO = Path(__file__).resolve().parents[1]
RACE = [sys.executable, "-m", "tests.collect_procs", "race"]
KILL_AT = [sys.executable, "-m", "tests.collect_procs", "kill-at"]


def _csv_of(store: Path) -> str:
    return render_csv(collect.collect(str(store)))


def test_concurrent_collects_serialize(tmp_path):
    """10 rounds of two real collect processes racing on one results dataset: versions
    strictly increase, and every record describes the table it replaced."""
    pool = {f"run{i}": make_metrics(seed=i) for i in range(8)}
    combos = list(itertools.combinations(sorted(pool), 4))
    random.Random(0).shuffle(combos)
    stores = []
    for k, combo in enumerate(combos[:20]):  # 20 distinct tables: every update changes it
        stores.append(_store(tmp_path / f"store{k}", {name: pool[name] for name in combo}))
    csv_by_sha = {hashlib.sha256(_csv_of(Path(s)).encode()).hexdigest(): s for s in stores}
    assert len(csv_by_sha) == 20
    res = tmp_path / "results"
    start = time.time() + 4  # both have imported rmeval by then
    procs = [
        subprocess.Popen(
            [*RACE, str(start), "0.4", str(res), "hs2", "runs", *stores[side::2]],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    history = results.read_history(res / "hs2")
    assert [r["version"] for r in history] == list(range(1, 21))
    previous = ""
    for rec in history:
        text = _csv_of(Path(csv_by_sha[rec["sha256"]]))
        d = results.diff_rows(previous, text)
        assert rec["rows"] == {
            "total": d.total,
            "added": d.added,
            "changed": d.changed,
            "removed": d.removed,
        }, rec["version"]
        assert rec["previous_sha256"] == (
            hashlib.sha256(previous.encode()).hexdigest() if previous else None
        )
        previous = text
    assert (res / "hs2" / "runs.csv").read_text() == previous
    assert sorted(p.name for p in (res / "hs2").iterdir()) == [
        "HISTORY.jsonl",
        "runs.columns.json",
        "runs.csv",
        "runs.issues.json",
    ]


@pytest.mark.parametrize(
    ("event", "target"),
    [
        ("rename", "HISTORY.jsonl"),  # the table replaced, its record not yet appended
        ("rename", "runs.csv"),  # the sidecars replaced, the table not
        ("remove", ".HISTORY.pending.json"),  # everything written but the cleanup
    ],
)
def test_kill9_during_update_is_repaired_on_rerun(tmp_path, event, target):
    res = tmp_path / "results"
    ds = res / "hs2"
    first = _store(tmp_path / "s1", {f"r{i}": make_metrics(seed=i) for i in range(3)})
    second = _store(tmp_path / "s2", {f"r{i}": make_metrics(seed=10 + i) for i in range(4)})
    args = ["collect", "--results-dir", str(res), "--results-dataset", "hs2", "--table", "runs"]
    assert cli.main([*args, "--source", first]) == 0
    proc = subprocess.run(
        [*KILL_AT, event, str(ds / target), "--", *args, "--source", second],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    assert cli.main([*args, "--source", second]) == 0  # the rerun repairs, then updates
    history = results.read_history(ds)
    assert [r["version"] for r in history] == [1, 2]
    csv_text = (ds / "runs.csv").read_text()
    assert history[-1]["sha256"] == hashlib.sha256(csv_text.encode()).hexdigest()
    assert history[-1]["previous_sha256"] == history[0]["sha256"]
    assert history[-1]["rows"] == {"total": 4, "added": 1, "changed": 3, "removed": 0}
    assert csv_text == _csv_of(Path(second))
    assert sorted(p.name for p in ds.iterdir()) == [
        "HISTORY.jsonl",
        "runs.columns.json",
        "runs.csv",
        "runs.issues.json",
    ]
    assert cli.main([*args, "--source", second]) == 0  # and then it is settled
    assert len(results.read_history(ds)) == 2


def test_old_history_records_still_read(tmp_path):
    """Records written before scoring / weights / previous_sha256 existed."""
    store = _store(tmp_path / "store", {"a": make_metrics(seed=1)})
    ds = tmp_path / "results" / "d"
    ds.mkdir(parents=True)
    old = {"version": 4, "time": "2026-11-28T12:00:00+00:00", "table": "t.csv", "sha256": "ab"}
    (ds / "HISTORY.jsonl").write_text(json.dumps(old) + "\n")
    rec = results.update(collect.collect(store), tmp_path / "results", "d", "t")
    assert rec["version"] == 5
    assert results.read_history(ds)[0] == old
    assert "   4  " in results.format_history(results.read_history(ds))


def test_unchanged_update_touches_nothing(tmp_path):
    """No lock file comes and goes either: an up-to-date read-only checkout stays fine."""
    store = _store(tmp_path / "store", {"a": make_metrics(seed=1), "b": make_metrics(seed=2)})
    res = tmp_path / "results"
    assert results.update(collect.collect(store), res, "d", "t") is not None
    ds = res / "d"
    before = ds.stat().st_mtime_ns
    time.sleep(0.01)
    assert results.update(collect.collect(store), res, "d", "t") is None
    assert ds.stat().st_mtime_ns == before
