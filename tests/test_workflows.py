"""The GitHub Actions workflows and composite actions: linters and security rules.

actionlint and zizmor (default persona, --offline) must report nothing; our own checks
enforce the rules of the project on top (least privilege per job, no expressions inside
`run:`, third-party actions pinned to full SHAs, no pull_request_target, credentials kept
only where something is pushed). Every rule is also shown to fire on a broken copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONS = ROOT / "actions"
BIN = Path(sys.executable).parent

SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
EXPR = re.compile(r"\$\{\{")
# Inline zizmor suppressions we accept, each justified next to it in the file.
ALLOWED_IGNORES = {
    (".github/workflows/fetch-results.yml", "dangerous-triggers"),
    ("actions/setup-rmeval/action.yml", "github-env"),
}
# Jobs that push results (the only ones allowed contents: write and kept credentials).
PUSHING_JOBS = {("fetch-results.yml", "collect"), ("fetch-results.yml", "collect-pr")}
# Jobs that write pull requests or their comments (the only ones allowed pull-requests: write).
PR_JOBS = {("fetch-results.yml", "collect-pr"), ("ci.yml", "results-diff")}


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install the test extra (pip install -e .[test])")
    return path


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # PyYAML reads the bare key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def action_files() -> list[Path]:
    return sorted(ACTIONS.glob("*/action.yml"))


# ------------------------------------------------------------------------------ rule checks


def _steps(doc: dict):
    """(job name or None, step) for every step of a workflow or composite action."""
    if "jobs" in doc:
        for name, job in doc["jobs"].items():
            for step in job.get("steps", []):
                yield name, step
    else:
        for step in doc.get("runs", {}).get("steps", []):
            yield None, step


def violations(path: Path, doc: dict) -> list[str]:
    """Every breach of the project's workflow security rules in one file."""
    found = []
    is_workflow = "jobs" in doc
    for job, step in _steps(doc):
        where = f"{path.name}:{job or 'action'}:{step.get('name') or step.get('uses') or 'run'}"
        if "run" in step and EXPR.search(str(step["run"])):
            found.append(f"{where}: expression inside run: (pass it through env:)")
        uses = step.get("uses")
        if uses and not uses.startswith("./") and not SHA_PIN.match(uses):
            found.append(f"{where}: {uses} is not pinned to a full commit SHA")
        if uses and uses.startswith("actions/checkout@"):
            keep = (step.get("with") or {}).get("persist-credentials", True)
            pushes = (path.name, job) in PUSHING_JOBS
            if keep is not False and not pushes:
                found.append(f"{where}: checkout keeps credentials in a job that pushes nothing")
    if is_workflow:
        triggers = doc["on"] if isinstance(doc["on"], dict) else {t: None for t in doc["on"]}
        if "pull_request_target" in triggers:
            found.append(f"{path.name}: pull_request_target trigger")
        if doc.get("permissions") != {}:
            found.append(f"{path.name}: top-level permissions must be {{}} (set them per job)")
        for name, job in doc["jobs"].items():
            perms = job.get("permissions")
            if not isinstance(perms, dict):
                found.append(f"{path.name}:{name}: no job-level permissions")
                continue
            writes = {k for k, v in perms.items() if v == "write"}
            allowed = {"contents"} if (path.name, name) in PUSHING_JOBS else set()
            allowed |= {"pull-requests"} if (path.name, name) in PR_JOBS else set()
            if writes - allowed:
                found.append(f"{path.name}:{name}: write permission {sorted(writes)}")
            text = yaml.safe_dump(job)
            if "secrets." in text and name in {"lint", "workflows", "test", "spec-preview"}:
                found.append(f"{path.name}:{name}: secrets in a job that needs none")
    return found


def test_workflows_and_actions_exist():
    names = {p.name for p in workflow_files()}
    assert {"ci.yml", "convert-and-eval.yml", "fetch-results.yml"} <= names
    assert {p.parent.name for p in action_files()} >= {"setup-rmeval", "commit-results"}


@pytest.mark.parametrize("path", workflow_files() + action_files(), ids=lambda p: p.name)
def test_security_rules(path):
    assert violations(path, load(path)) == []


def test_only_justified_zizmor_ignores():
    found = set()
    for path in workflow_files() + action_files():
        for rule in re.findall(r"zizmor: ignore\[([\w-]+)\]", path.read_text(encoding="utf-8")):
            found.add((str(path.relative_to(ROOT)), rule))
    assert found == ALLOWED_IGNORES


def test_rule_checks_fire_on_a_broken_workflow(tmp_path):
    doc = load(WORKFLOWS / "convert-and-eval.yml")
    doc["on"]["pull_request_target"] = None
    doc["permissions"] = "write-all"
    plan = doc["jobs"]["plan"]
    plan["permissions"] = {"contents": "write"}
    plan["steps"][0] = {"uses": "actions/checkout@v4"}
    plan["steps"].append({"run": 'echo "${{ inputs.source }}"'})
    del doc["jobs"]["run"]["permissions"]
    found = "\n".join(violations(tmp_path / "bad.yml", doc))
    for needle in (
        "pull_request_target",
        "top-level permissions",
        "write permission",
        "not pinned",
        "keeps credentials",
        "expression inside run",
        "run: no job-level permissions",
    ):
        assert needle in found
    # pull-requests: write only in the jobs that write pull requests (not the push landing)
    fetch = load(WORKFLOWS / "fetch-results.yml")
    assert violations(WORKFLOWS / "fetch-results.yml", fetch) == []
    fetch["jobs"]["collect"]["permissions"]["pull-requests"] = "write"
    found = violations(WORKFLOWS / "fetch-results.yml", fetch)
    assert found == ["fetch-results.yml:collect: write permission ['contents', 'pull-requests']"]


# ------------------------------------------------------------------------------ linters


def _lint_copy(tmp_path: Path) -> Path:
    """The repo's workflows, actions and linter configs copied into a scratch repo."""
    dst = tmp_path / "repo"
    shutil.copytree(ROOT / ".github", dst / ".github")
    shutil.copytree(ACTIONS, dst / "actions", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(dst)], check=True)  # actionlint finds it by git
    return dst


def run_actionlint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # actionlint runs shellcheck over every run: script when it is given one.
    cmd = [tool("actionlint"), "-no-color", f"-shellcheck={tool('shellcheck')}"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def run_zizmor(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", ".github/workflows", "actions"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_reports_nothing():
    proc = run_actionlint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_zizmor_reports_nothing():
    proc = run_zizmor(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", action_files(), ids=lambda p: p.parent.name)
def test_composite_action_scripts_pass_shellcheck(path):
    """actionlint reads workflows only; the composite actions' scripts get shellcheck here."""
    for step in load(path)["runs"]["steps"]:
        if step.get("shell") == "bash" and "run" in step:
            proc = subprocess.run(
                [tool("shellcheck"), "-s", "bash", "-"],
                input=step["run"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stdout


def test_linters_catch_an_injection_and_an_unpinned_action(tmp_path):
    repo = _lint_copy(tmp_path)
    path = repo / ".github" / "workflows" / "convert-and-eval.yml"
    text = path.read_text(encoding="utf-8")
    text = text.replace(
        "      - uses: ./actions/setup-rmeval\n",
        '      - uses: ./actions/setup-rmeval\n      - run: echo "${{ github.event.inputs.source }}"\n',
        1,
    )
    text = text.replace(
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683", "actions/checkout@v4", 1
    )
    path.write_text(text, encoding="utf-8")
    zizmor = run_zizmor(repo)
    assert zizmor.returncode != 0
    out = zizmor.stdout + zizmor.stderr
    assert "template-injection" in out
    assert "unpinned-uses" in out
    broken = text.replace(
        "runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    nonsense-key: 1", 1
    )
    path.write_text(broken, encoding="utf-8")
    actionlint = run_actionlint(repo)
    assert actionlint.returncode != 0
    assert "nonsense-key" in actionlint.stdout
    # ... and shellcheck through it: an unquoted variable in a workflow script.
    path.write_text(text.replace('rmeval run-one "${args[@]}"', "rmeval run-one $CHECKPOINT", 1))
    assert "SC2086" in run_actionlint(repo).stdout


# ------------------------------------------------------------------------------ action scripts


def _script(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ACTIONS / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_runs = _script("plan_runs", "plan-runs/plan_runs.py")
commit_results = _script("commit_results", "commit-results/commit_results.py")


@pytest.fixture
def gh_files(tmp_path, monkeypatch):
    """GITHUB_OUTPUT and GITHUB_STEP_SUMMARY as files; returns a reader for both."""
    out, summary = tmp_path / "gh-output", tmp_path / "gh-summary"
    out.write_text("")
    summary.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    def read():
        pairs = dict(ln.split("=", 1) for ln in out.read_text().splitlines() if ln)
        return pairs, summary.read_text()

    return read


def _listing(root: Path, names: list[str]) -> Path:
    """A checkpoint source directory: empty streaming_params files under real-shaped dirs."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


RUN_DIRS = [
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026"
    "--a6bf226b9e8e43f387810e0da3096526/streaming_params_437",
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__1111d08aa33a4fa6a5294c7bc41ae1f9__SWAPS_12"
    "--b6bf226b9e8e43f387810e0da3096526/streaming_params_437",
]


def test_plan_runs_builds_a_matrix_from_rmeval_plan(tmp_path, gh_files, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RMEVAL_TOKENIZER", str(tmp_path / "tokenizer.model"))  # a repo variable
    source = _listing(tmp_path / "bucket", RUN_DIRS)
    store = tmp_path / "store"
    rc = plan_runs.main(
        [
            "runs",
            "--source",
            str(source),
            "--store",
            str(store),
            "--prefix",
            "hs2",
            "--max-runs",
            "1",
        ]
    )
    assert rc == 0
    outputs, summary = gh_files()
    runs = json.loads(outputs["runs"])
    # One run of two (max-runs 1); named by rmeval plan, with the prefix run-one must reuse.
    expected = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rmeval",
                "plan",
                "--source",
                str(source),
                "--store",
                str(store),
                "--prefix",
                "hs2",
                "--tokenizer",
                str(tmp_path / "tokenizer.model"),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    )["runs"]
    assert outputs["count"] == "1" and len(runs) == 1
    assert runs[0]["name"] == expected[0]["run"]
    assert runs[0]["checkpoint"] == expected[0]["checkpoint"]
    assert runs[0]["prefix"] == "hs2" and runs[0]["store"] == str(store)
    assert "1 run(s) over --max-runs deferred" in summary
    assert outputs["beaker-count"] == "0"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "no-such-preset", "--source", "gs://bucket/x"], "unknown preset"),
        (["--source", "gs://", "--preset", "helpsteer2-counts"], "gs://"),
    ],
)
def test_plan_runs_bad_dispatch_fails_with_one_line(
    tmp_path, gh_files, capsys, monkeypatch, args, needle
):
    monkeypatch.chdir(ROOT)
    rc = plan_runs.main(["runs", *args, "--store", str(tmp_path / "store")])
    assert rc == 1
    outputs, summary = gh_files()
    assert "runs" not in outputs
    errors = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1 and needle in errors[0] and "rmeval: error:" in errors[0]
    message = errors[0].split("::", 2)[2]
    assert message in summary


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            "entries:\n  - {dataset: a, source: /x, store: /y, colour: red}\n",
            "unknown key 'colour'",
        ),
        ("entries:\n  - {results_dataset: a, source: /x}\n", "missing required key(s): store"),
        (
            "entries:\n  - {results_dataset: a, source: /x, store: /y, backend: slurm}\n",
            "backend must be one of runners, beaker, got 'slurm'",
        ),
        (
            "entries:\n  - {dataset: a, source: /x, store: /y}\n  - {dataset: a, source: /z, store: /y}\n",
            "listed twice",
        ),
        ("entries: [\n", "not valid YAML"),
        (
            "entries:\n  - {results_dataset: a, source: /x, store: /y, land: pr}\n",
            "land must be one of push, pull-request, got 'pr'",
        ),
    ],
)
def test_schedule_config_errors(tmp_path, gh_files, capsys, config, needle):
    path = tmp_path / "schedule.yml"
    path.write_text(config)
    assert plan_runs.main(["targets", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert needle in out and str(path) in out


def test_targets_are_split_by_landing(tmp_path, gh_files):
    path = tmp_path / "schedule.yml"
    path.write_text(
        "entries:\n"
        "  - {results_dataset: a, source: /x, store: /y}\n"
        "  - {results_dataset: b, source: /x, store: /y, land: pull-request}\n"
        "  - {results_dataset: c, source: /x, store: /y, land: push}\n"
    )
    assert plan_runs.main(["targets", "--config", str(path)]) == 0
    outputs, summary = gh_files()
    assert [t["results_dataset"] for t in json.loads(outputs["targets"])] == ["a", "c"]
    assert [t["results_dataset"] for t in json.loads(outputs["pr-targets"])] == ["b"]
    assert (outputs["count"], outputs["pr-count"]) == ("2", "1")
    assert "a (push), b (pull-request), c (push)" in summary


def test_repo_schedule_config_is_valid(gh_files):
    assert plan_runs.main(["targets", "--config", str(ROOT / ".github" / "eval-schedule.yml")]) == 0
    outputs, _ = gh_files()
    targets = json.loads(outputs["targets"])
    assert targets and all(t["store"] and t["source"] for t in targets)


# ---- commit-results against a real bare repository


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def origin(tmp_path):
    """A bare origin with one commit on main, and a factory of fresh clones."""
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True, capture_output=True)
    (seed / "README").write_text("x\n")
    git(seed, "add", "README")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")

    def clone(name: str) -> Path:
        dst = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(bare), str(dst)], check=True, capture_output=True)
        return dst

    return bare, clone


def _write_results(clone: Path, dataset: str, rows: list[tuple[str, float]], version: int = 1):
    d = clone / "results" / dataset
    d.mkdir(parents=True, exist_ok=True)
    lines = ["name,Overall"] + [f"{n},{v:.4f}" for n, v in rows]
    (d / "runs.csv").write_text("\n".join(lines) + "\n")
    record = {
        "version": version,
        "table": "runs.csv",
        "source": "/store",
        "rows": {"total": len(rows), "added": len(rows), "changed": 0, "removed": 0},
    }
    with (d / "HISTORY.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _commit(clone: Path, dataset: str, refresh: str = "", attempts: int = 3):
    cwd = os.getcwd()
    os.chdir(clone)
    try:
        return commit_results.commit_and_push(
            Path("results") / dataset, "main", "origin", attempts, refresh
        )
    finally:
        os.chdir(cwd)


def test_commit_results_nothing_changed_commits_nothing(origin):
    bare, clone = origin
    a = clone("a")
    before = git(bare, "rev-parse", "main")
    assert _commit(a, "hs2") == (False, "results/hs2: nothing changed")
    assert git(bare, "rev-parse", "main") == before


def test_commit_results_message_and_race_on_two_datasets(origin):
    bare, clone = origin
    a, b = clone("a"), clone("b")
    _write_results(a, "hs2", [("m1", 0.61), ("m2", 0.72)])
    _write_results(b, "mp", [("m3", 0.55)])
    committed, subject = _commit(a, "hs2")
    assert committed
    assert (
        subject
        == "results(hs2): runs +2 rows, 0 changed, 0 removed, 2 total; best Overall 0.7200 (m2)"
    )
    # b started from the old main: its push is rejected, it rebases and pushes.
    assert _commit(b, "mp")[0]
    log = git(bare, "log", "--format=%s", "main").splitlines()
    assert log[0].startswith("results(mp)") and log[1].startswith("results(hs2)")
    assert git(bare, "rev-list", "--merges", "main") == ""
    assert git(bare, "show", "main:results/hs2/runs.csv").startswith("name,Overall")


def test_commit_results_conflict_resets_and_refreshes(origin, tmp_path):
    bare, clone = origin
    a, b = clone("a"), clone("b")
    _write_results(a, "hs2", [("m1", 0.61)])
    _write_results(b, "hs2", [("m1", 0.61), ("m2", 0.50)])
    assert _commit(a, "hs2")[0]
    # The refresh stands in for `rmeval collect`: it regenerates on top of what a pushed.
    refresh = (
        f'{sys.executable} -c "import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); '
    )
    refresh += "import test_workflows as t, pathlib; t._write_results(pathlib.Path('.'), 'hs2', "
    refresh += "[('m1', 0.61), ('m2', 0.50)], version=2)\""
    committed, subject = _commit(b, "hs2", refresh=refresh)
    assert committed and "best Overall 0.6100 (m1)" in subject
    history = git(bare, "show", "main:results/hs2/HISTORY.jsonl").splitlines()
    assert [json.loads(h)["version"] for h in history] == [1, 2]
    assert "m2" in git(bare, "show", "main:results/hs2/runs.csv")


def test_commit_results_conflict_without_refresh_fails_clearly(origin, gh_files, capsys):
    _, clone = origin
    a, b = clone("a"), clone("b")
    _write_results(a, "hs2", [("m1", 0.61)])
    _write_results(b, "hs2", [("m9", 0.10)])
    assert _commit(a, "hs2")[0]
    cwd = os.getcwd()
    os.chdir(b)
    try:
        rc = commit_results.main(["--path", "results/hs2", "--branch", "main", "--attempts", "2"])
    finally:
        os.chdir(cwd)
    assert rc == 1
    out = capsys.readouterr().out
    assert "::error title=commit-results::" in out and "no --refresh command" in out


def test_commit_results_dataset_hidden_by_gitignore_names_the_rule(origin, gh_files, capsys):
    bare, clone = origin
    a = clone("a")
    (a / ".gitignore").write_text("# scratch outputs\nresults/tmp-*\n")
    _write_results(a, "tmp-hs2", [("m1", 0.61)])
    before = git(bare, "rev-parse", "main")
    cwd = os.getcwd()
    os.chdir(a)
    try:
        rc = commit_results.main(["--path", "results/tmp-hs2", "--branch", "main"])
    finally:
        os.chdir(cwd)
    assert rc == 1
    errors = [ln for ln in capsys.readouterr().out.splitlines() if "::error" in ln]
    assert len(errors) == 1, errors
    assert "is ignored by .gitignore:2 ('results/tmp-*')" in errors[0], errors
    assert "hint" not in errors[0]
    assert git(bare, "rev-parse", "main") == before


preview = _script("preview", "spec-preview/preview.py")


def test_spec_preview_renders_every_preset(gh_files, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert preview.main([]) == 0
    _, summary = gh_files()
    presets = sorted(p.stem for p in (ROOT / "rmeval" / "templates" / "presets").glob("*.yml"))
    assert presets
    for name in presets:
        assert f"<summary>{name}: found 3 checkpoint(s)" in summary
    specs = re.findall(r"```yaml\n(.*?)```", summary, flags=re.S)
    assert len(specs) == len(presets)
    for text in specs:
        spec = yaml.safe_load(text)
        assert spec["version"] == "v2" and len(spec["tasks"]) == 2


def test_spec_preview_reports_a_broken_preset(tmp_path, gh_files, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    presets = tmp_path / "presets"
    shutil.copytree(ROOT / "rmeval" / "templates" / "presets", presets)
    (presets / "broken-counts.yml").write_text("- not\n- a mapping\n")
    assert preview.main(["--presets", str(presets)]) == 1
    errors = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1 and "broken-counts" in errors[0] and "rmeval: error:" in errors[0]
    _, summary = gh_files()
    assert "**broken-counts: failed**" in summary and summary.count("```yaml") == 4
