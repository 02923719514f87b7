"""rmeval diff: two versions of a results table, from CSV paths, HISTORY versions and git
revisions of a committed results directory; markdown and JSON; incomparable tables refused."""

from __future__ import annotations

import json
import subprocess

import pytest

from rmeval import cli, collect, diff, results
from rmeval.errors import ResultsError
from tests.collect_fixtures import expected_scores, make_metrics

UID = ["0" * 31 + str(i) for i in range(6)]


def run_name(i: int) -> str:
    return f"rm-eval-x-counts-tiny_ID__{UID[i]}__SWAPS_{1000 + i}"


def _metrics(seed: int, template: str = "easylm-trained") -> dict:
    m = make_metrics(seed)
    m["chat_template"] = template
    return m


def _store(root, runs: dict[str, dict]) -> str:
    for name, m in runs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "metrics.json").write_text(json.dumps(m))
    return str(root)


def _git(repo, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A git repository whose results/ds holds two committed versions of one table:
    v1 runs 0,1,2; v2 with run 1 re-scored, run 2 removed, runs 3 and 4 added."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    store = tmp_path / "store"
    _store(store, {run_name(i): _metrics(i) for i in range(3)})
    results.update(collect.collect(str(store)), repo / "results", "ds", "runs", command="c")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    _store(store, {run_name(1): _metrics(41), run_name(3): _metrics(3), run_name(4): _metrics(4)})
    (store / run_name(2) / "metrics.json").unlink()
    results.update(collect.collect(str(store)), repo / "results", "ds", "runs", command="c")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v2")
    return repo


def test_history_records_the_names_of_runs_added_changed_removed(repo):
    v1, v2 = results.read_history(repo / "results" / "ds")
    assert v1["runs"] == {"added": [run_name(i) for i in range(3)], "changed": [], "removed": []}
    assert v2["runs"] == {
        "added": [run_name(3), run_name(4)],
        "changed": [run_name(1)],
        "removed": [run_name(2)],
    }
    assert v2["rows"] == {"total": 4, "added": 2, "changed": 1, "removed": 1}


def test_versions_revisions_and_paths_name_the_same_tables(repo, tmp_path):
    ds = repo / "results" / "ds"
    by_version = diff.diff("v1", "v2", dataset_dir=str(ds))
    assert diff.diff(f"{ds}@v1", f"{ds}@HEAD", force=False) == {
        **by_version,
        "old": {**by_version["old"], "label": f"{ds}@v1"},
        "new": {**by_version["new"], "label": f"{ds}@HEAD"},
    }
    old_csv = tmp_path / "old.csv"
    old_csv.write_text(_git(repo, "show", "HEAD~1:results/ds/runs.csv"))
    by_path = diff.diff(str(old_csv), str(ds))
    for key in ("added", "removed", "changed", "best"):
        assert by_path[key] == by_version[key]
    # a version no longer in the work tree is found in git by its sha256
    (ds / "runs.csv").write_text(old_csv.read_text())
    assert diff.diff("v1", "HEAD", dataset_dir=str(ds))["changed"] == by_version["changed"]


def test_rows_deltas_and_best(repo):
    d = diff.diff("v1", "v2", dataset_dir=str(repo / "results" / "ds"))
    assert [r["name"] for r in d["added"]] == [run_name(3), run_name(4)]
    assert [r["name"] for r in d["removed"]] == [run_name(2)]
    (ch,) = d["changed"]
    assert ch["name"] == run_name(1) and ch["label"] == f"ID {UID[1][:8]} · SWAPS 1001"
    before, after = expected_scores(_metrics(1)), expected_scores(_metrics(41))
    for col in ("Overall", "Chat", "Chat Hard", "Safety", "Reasoning"):
        assert ch["deltas"][col]["delta"] == pytest.approx(after[col] - before[col], abs=2e-6)
    scores_v1 = {i: expected_scores(_metrics(i))["Overall"] for i in range(3)}
    scores_v2 = {0: scores_v1[0], 1: after["Overall"]}
    scores_v2.update({i: expected_scores(_metrics(i))["Overall"] for i in (3, 4)})
    best_v1, best_v2 = max(scores_v1, key=scores_v1.get), max(scores_v2, key=scores_v2.get)
    assert d["best"]["before"]["name"] == run_name(best_v1)
    assert d["best"]["after"]["name"] == run_name(best_v2)
    assert d["best"]["after"]["Overall"] == pytest.approx(scores_v2[best_v2], abs=2e-6)


def test_markdown_and_json_cli(repo, capsys):
    ds = str(repo / "results" / "ds")
    assert cli.main(["diff", f"{ds}@HEAD~1", ds]) == 0
    md = capsys.readouterr().out
    assert "3 → 4 runs: 2 added, 1 removed, 1 changed." in md
    assert "**Added**" in md and "**Removed**" in md and "**Changed**" in md
    assert f"`ID {UID[3][:8]} · SWAPS 1003`" in md  # the distinguishing part of the name
    row = next(ln for ln in md.splitlines() if "SWAPS 1001" in ln and ln.startswith("| "))
    d = diff.diff("v1", "v2", dataset_dir=ds)
    delta = d["changed"][0]["deltas"]["Overall"]
    assert f"{delta['new']:.4f} ({delta['delta']:+.4f})".replace("-", "−") in row
    assert cli.main(["diff", "v1", "v2", "--dataset-dir", ds, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(diff.as_json(d))


def test_bad_input(repo, tmp_path, capsys):
    ds = repo / "results" / "ds"
    # another scoring format: refused with one line unless --force
    store = _store(tmp_path / "s2", {run_name(i): _metrics(i, "tulu") for i in range(3)})
    results.update(collect.collect(store), tmp_path / "r2", "ds", "runs", command="c")
    other = str(tmp_path / "r2" / "ds" / "runs.csv")
    assert cli.main(["diff", str(ds), other]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "scoring trained" in err and "run_rm" in err and "--force" in err
    assert cli.main(["diff", str(ds), other, "--force"]) == 0
    capsys.readouterr()
    # different weights, the same way
    text = (ds / "runs.csv").read_text()
    weights = text.splitlines()[1].split(",")[4]
    (tmp_path / "w.csv").write_text(text.replace(weights, "custom-0123"))
    with pytest.raises(ResultsError, match=r"weights .* not comparable"):
        diff.diff(str(ds), str(tmp_path / "w.csv"))
    # unknown version, unknown revision, nothing there
    with pytest.raises(ResultsError, match=r"no version 9 of runs.csv; known: v1, v2"):
        diff.diff("v9", "v2", dataset_dir=str(ds))
    with pytest.raises(ResultsError, match=r"at nosuchrev"):
        diff.diff("nosuchrev", "v2", dataset_dir=str(ds))
    assert cli.main(["diff", str(tmp_path / "missing.csv"), str(ds)]) == 1
    assert "no such table" in capsys.readouterr().err
    assert cli.main(["diff", "--dataset-dir", str(tmp_path / "nodir"), "--last"]) == 1
    assert "nodir: no such results directory" in capsys.readouterr().err


def test_last_compares_the_newest_version_with_the_one_before(repo, capsys):
    ds = str(repo / "results" / "ds")
    assert diff.last_versions(ds) == ("v1", "v2")
    assert cli.main(["diff", "--dataset-dir", ds, "--last", "--json"]) == 0
    last = json.loads(capsys.readouterr().out)
    assert last == diff.diff("v1", "v2", dataset_dir=ds)
    assert last["old"]["label"] == f"{ds}@v1"
    # v0: the empty table before the first version (what a first fetch-results shows)
    first = diff.diff("v0", "v1", dataset_dir=ds)
    assert [r["name"] for r in first["added"]] == [run_name(i) for i in range(3)]
    assert first["removed"] == first["changed"] == [] and first["best"]["before"] is None
    assert "0 → 3 runs: 3 added, 0 removed, 0 changed." in diff.markdown(first)
    assert cli.main(["diff", "--last"]) == 2
    assert "--last takes --dataset-dir" in capsys.readouterr().err


def test_rewardbench2_overall_is_diffed_apart_from_rewardbench(tmp_path):
    """A run whose RewardBench 2 scores changed (and nothing else) is a changed run with its
    rb2_Overall delta, marked as a RewardBench 2 change; RewardBench's columns stay as they
    were, and the tables show rb2_Overall beside Overall."""
    from rmeval.rewardbench import scoring_v2
    from rmeval.store import METRICS_V2_FILE
    from rmeval.table import V2_OVERALL, render_csv

    def v2(seed: int) -> dict:
        subsets = {s: (seed * 7 + i) % 10 / 10 for i, s in enumerate(scoring_v2.SUBSETS)}
        return {"model": f"m{seed}", "model_type": "Seq. Classifier", **subsets}

    store = tmp_path / "store"
    _store(store, {run_name(i): _metrics(i) for i in range(2)})
    for i in range(2):
        (store / run_name(i) / METRICS_V2_FILE).write_text(json.dumps(v2(i)))
    old = tmp_path / "old.csv"
    old.write_text(render_csv(collect.collect(str(store))))
    (store / run_name(1) / METRICS_V2_FILE).write_text(json.dumps(v2(5)))
    new = tmp_path / "new.csv"
    new.write_text(render_csv(collect.collect(str(store))))

    d = diff.diff(str(old), str(new))
    (ch,) = d["changed"]
    assert ch["name"] == run_name(1) and ch["benchmarks"] == ["rewardbench2"]
    mean = lambda m: sum(m[s] for s in scoring_v2.SUBSETS) / len(scoring_v2.SUBSETS)  # noqa: E731
    assert ch["deltas"][V2_OVERALL]["delta"] == pytest.approx(mean(v2(5)) - mean(v2(1)), abs=2e-6)
    assert "Overall" not in ch["deltas"]  # RewardBench's scores did not move
    md = diff.markdown(d)
    assert f"| run | Overall | Chat | Chat Hard | Safety | Reasoning | {V2_OVERALL} |" in md
    assert "1 changed (1 in RewardBench 2 only)" in md
