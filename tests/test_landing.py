"""Landing results: fetch-results' job summary (results-summary), landing by pull request
(land-pull-request) and ci.yml's diff comment, against a real bare origin and the fake GitHub
REST API (tests/fake_github.py) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from rmeval import collect, results
from tests.collect_fixtures import make_metrics
from tests.fake_github import FakeGitHub

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghs_fake-job-token"
REPO = "acme/rm-results"


def _script(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "actions" / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


land_pr = _script("land_pull_request", "land-pull-request/land_pull_request.py")
summary = _script("results_summary", "results-summary/results_summary.py")


def git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def name(i: int) -> str:
    return f"rm-eval-hs2-counts-tiny_ID__{i:032x}__SWAPS_{1000 + i}"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A bare origin with main, a clone (the cwd), a store, the fake API and the variables a
    job has."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    (clone / "README").write_text("x\n")
    git(clone, "add", "README")
    git(clone, "commit", "-qm", "init")
    git(clone, "push", "-q", "origin", "HEAD:main")
    monkeypatch.chdir(clone)
    step_summary = tmp_path / "summary.md"
    out = tmp_path / "output"
    fake = FakeGitHub(TOKEN).start()
    for k, v in {
        "GITHUB_API_URL": fake.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_SERVER_URL": "https://github.example",
        "GITHUB_STEP_SUMMARY": str(step_summary),
        "GITHUB_OUTPUT": str(out),
    }.items():
        monkeypatch.setenv(k, v)

    class Env:
        pass

    e = Env()
    e.origin, e.clone, e.fake, e.summary, e.output = origin, clone, fake, step_summary, out
    e.store = tmp_path / "store"

    def collect_runs(runs: range, into: Path = clone):
        for i in runs:
            (e.store / name(i)).mkdir(parents=True, exist_ok=True)
            (e.store / name(i) / "metrics.json").write_text(json.dumps(make_metrics(i)))
        results.update(collect.collect(str(e.store)), into / "results", "hs2", "runs", command="c")

    e.collect = collect_runs
    yield e
    fake.stop()


def _outputs(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


def test_pull_request_is_opened_then_updated_not_duplicated(env, tmp_path):
    env.collect(range(2))
    assert land_pr.main(["--path", "results/hs2", "--base", "main"]) == 0
    out = _outputs(env.output)
    assert out["committed"] == "true" and out["branch"] == "rmeval/results-hs2"
    # the branch holds the results; main does not
    assert git(env.origin, "rev-parse", "rmeval/results-hs2") == out["sha"]
    assert "results/hs2" not in git(env.origin, "ls-tree", "-r", "--name-only", "main")
    get, post = env.fake.calls
    assert all(c["authorized"] for c in env.fake.calls)
    assert (get["method"], get["path"]) == ("GET", f"/repos/{REPO}/pulls")
    assert get["query"] == {"head": "acme:rmeval/results-hs2", "base": "main", "state": "open"}
    assert (post["method"], post["path"]) == ("POST", f"/repos/{REPO}/pulls")
    body = post["body"]
    assert (body["head"], body["base"]) == ("rmeval/results-hs2", "main")
    assert body["title"].startswith("results(hs2): runs +2 rows")
    assert "0 → 2 runs: 2 added, 0 removed, 0 changed." in body["body"]
    assert f"https://github.example/{REPO}/tree/rmeval/results-hs2/results/hs2" in body["body"]

    # the next run (a fresh checkout of main, one run more): the same pull request, updated
    env.output.write_text("")
    clone2 = tmp_path / "clone2"
    subprocess.run(["git", "clone", "-q", str(env.origin), str(clone2)], check=True)
    env.collect(range(3), into=clone2)
    os.chdir(clone2)
    assert land_pr.main(["--path", "results/hs2", "--base", "main"]) == 0
    get2, patch = env.fake.calls[2:]
    assert get2["method"] == "GET"
    assert (patch["method"], patch["path"]) == ("PATCH", f"/repos/{REPO}/pulls/1")
    assert patch["body"]["title"].startswith("results(hs2): runs +3 rows")
    assert len(env.fake.pulls) == 1  # one pull request per dataset
    assert "0 → 3 runs: 3 added" in env.fake.pulls[1]["body"]
    assert git(env.origin, "rev-parse", "rmeval/results-hs2") == _outputs(env.output)["sha"]
    assert "Pull request #1 updated." in env.summary.read_text()

    # nothing new: no commit, no call
    calls = len(env.fake.calls)
    git(clone2, "reset", "-q", "--hard", "origin/rmeval/results-hs2")
    assert land_pr.main(["--path", "results/hs2", "--base", "main"]) == 0
    assert len(env.fake.calls) == calls and _outputs(env.output)["committed"] == "false"


def test_pull_request_landing_fails_in_one_line(env, monkeypatch, capsys):
    env.collect(range(2))
    monkeypatch.delenv("GITHUB_TOKEN")
    assert land_pr.main(["--path", "results/hs2", "--base", "main"]) == 1
    errors = [ln for ln in capsys.readouterr().out.splitlines() if "::error" in ln]
    assert len(errors) == 1 and "GITHUB_TOKEN not set" in errors[0]
    assert "rmeval/results-hs2" not in git(env.origin, "branch", "--list")  # nothing pushed
    monkeypatch.setenv("GITHUB_TOKEN", "wrong")
    assert land_pr.main(["--path", "results/hs2", "--base", "main"]) == 1
    errors = [ln for ln in capsys.readouterr().out.splitlines() if "::error" in ln]
    assert len(errors) == 1 and "GET /repos/acme/rm-results/pulls: HTTP 401" in errors[0]


def test_job_summary_has_the_diff_and_the_link(env):
    env.collect(range(2))
    git(env.clone, "add", "-A")
    git(env.clone, "commit", "-qm", "v1")
    env.collect(range(3))
    git(env.clone, "add", "-A")
    git(env.clone, "commit", "-qm", "v2")
    sha = git(env.clone, "rev-parse", "HEAD")
    assert summary.main(["summary", "--path", "results/hs2", "--ref", sha, "--subject", "s"]) == 0
    text = env.summary.read_text()
    assert text.startswith("### s\n")
    assert f"(https://github.example/{REPO}/tree/{sha}/results/hs2)" in text
    assert "`results/hs2@v1` → `results/hs2@v2`" in text
    assert "2 → 3 runs: 1 added, 0 removed, 0 changed." in text
    assert summary.main(["summary", "--path", "results/hs2"]) == 0
    assert "results/hs2: unchanged, nothing committed" in env.summary.read_text()


def test_diff_comment_is_posted_once_and_edited(env, capsys):
    env.collect(range(2))
    git(env.clone, "add", "-A")
    git(env.clone, "commit", "-qm", "v1")
    base = git(env.clone, "rev-parse", "HEAD")
    env.collect(range(3))
    git(env.clone, "add", "-A")
    git(env.clone, "commit", "-qm", "v2")
    assert summary.main(["comment", "--base", base, "--pr", "7"]) == 0
    (c,) = env.fake.comments.values()
    assert c["issue"] == 7 and c["body"].startswith("<!-- rmeval results diff -->")
    assert "### results/hs2" in c["body"] and "2 → 3 runs: 1 added" in c["body"]
    env.collect(range(4))
    git(env.clone, "add", "-A")
    git(env.clone, "commit", "-qm", "v3")
    assert summary.main(["comment", "--base", base, "--pr", "7"]) == 0
    (c,) = env.fake.comments.values()  # edited, not a second comment
    assert "2 → 4 runs: 2 added" in c["body"]
    assert [x["method"] for x in env.fake.calls] == ["GET", "POST", "GET", "PATCH"]
    # a token that may not comment (a fork's): a warning, the diff in the summary, exit 0
    env.fake.forbid = {r"POST .*", r"PATCH .*"}
    env.fake.comments.clear()
    assert summary.main(["comment", "--base", base, "--pr", "8"]) == 0
    out = capsys.readouterr().out
    assert "::warning title=results diff::not commented: POST /repos/acme/rm-results" in out
    assert "HTTP 403" in out and "pull-requests: write" in out
    assert "2 → 4 runs" in env.summary.read_text()
    # a dataset new in the pull request diffs from the empty table
    assert "0 → 4 runs: 4 added" in summary.comment_text(
        git(env.clone, "rev-list", "--max-parents=0", "HEAD")
    )
