"""The tooling around the package: the version derived from git (checkout, `git archive`
tarball, copy without git, installed wheel), py.typed in the wheel, one ruff version for
make, CI and pre-commit, a pre-commit config that validates, and `make help` listing every
target. Wheels are built by pip with the real build backend (setuptools + setuptools-scm)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import rmeval
from tests.checkout_copy import ROOT, commit_all, copy_checkout, git

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent


def _version_of(tree: Path) -> str:
    """``rmeval --version`` of the code in ``tree``, run from another directory."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-m", "rmeval", "--version"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.startswith("rmeval "), out
    return out.split()[1]


def _wheel(tree: Path, out: Path) -> Path:
    """The wheel pip builds from ``tree`` (no build isolation: this environment's
    setuptools and setuptools-scm, no network)."""
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*cmd, "-w", str(out), str(tree)],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("rmeval-*.whl")
    return wheel


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, str]:
    """This working tree as a git repository of its own (no tag), and its HEAD."""
    tree = copy_checkout(tmp_path_factory.mktemp("repo"))
    return tree, commit_all(tree, "one commit")


@pytest.fixture
def released(tmp_path) -> tuple[Path, str]:
    """A repository with a release tag and one commit after it, and its HEAD."""
    tree = copy_checkout(tmp_path / "released")
    commit_all(tree, "release")
    git(tree, "tag", "v1.2.3")
    (tree / "CHANGES").write_text("after the release\n")
    return tree, commit_all(tree, "after the release")


def test_a_checkout_reports_the_commit_it_runs(repo):
    tree, head = repo
    assert re.fullmatch(rf"0\.0\.1\.dev\d+\+g{head[:7]}\w*", _version_of(tree))
    readme = (tree / "README.md").read_text()
    (tree / "README.md").write_text(readme + "an uncommitted edit\n")  # dirty: a date suffix
    assert re.fullmatch(rf"0\.0\.1\.dev\d+\+g{head[:7]}\w*\.d\d{{8}}", _version_of(tree))
    (tree / "README.md").write_text(readme)


def test_a_tagged_checkout_counts_from_its_release(released):
    tree, head = released
    assert re.fullmatch(rf"1\.2\.4\.dev1\+g{head[:7]}\w*", _version_of(tree))
    git(tree, "checkout", "-q", "v1.2.3")
    assert _version_of(tree) == "1.2.3"
    git(tree, "checkout", "-q", "main")


@pytest.mark.slow  # three wheel builds
def test_git_archive_tarball_copy_without_git_and_installed_wheel(released, tmp_path):
    tree, head = released
    # a `git archive` tarball: `git describe` is in .git_archival.txt (git writes it only
    # where a tag exists; before the first tag a tarball says 0.0)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=tree, capture_output=True, check=True
    ).stdout
    unpacked = tmp_path / "tarball"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(unpacked, filter="data")
    assert not (unpacked / ".git").exists()
    from_tarball = _wheel(unpacked, tmp_path / "w1")
    release_dev = rf"1\.2\.4\.dev1\+g{head[:7]}\w*"
    assert re.fullmatch(release_dev, _wheel_version(from_tarball))
    assert re.fullmatch(release_dev, _version_of(unpacked))
    with zipfile.ZipFile(from_tarball) as whl:
        assert "rmeval/py.typed" in whl.namelist()  # type information ships with the package

    # a plain copy without git (a Docker build context): the fallback
    bare = copy_checkout(tmp_path / "bare")
    assert _wheel_version(_wheel(bare, tmp_path / "w2")) == rmeval.UNKNOWN_VERSION
    assert _version_of(bare) == rmeval.UNKNOWN_VERSION

    # installed (not a source tree): the distribution's own version
    wheel = _wheel(tree, tmp_path / "w3")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert _version_of(target) == _wheel_version(wheel)
    assert re.fullmatch(release_dev, _wheel_version(wheel))


def test_the_fallback_version_is_declared_alike():
    assert PYPROJECT["tool"]["setuptools_scm"]["fallback_version"] == rmeval.UNKNOWN_VERSION
    assert "version" in PYPROJECT["project"]["dynamic"]


# ------------------------------------------------------------------------------ linters


def _pins(requirements: list[str], name: str) -> set[str]:
    return {r.split("==", 1)[1] for r in requirements if re.match(rf"^{name}==", r)}


def test_one_ruff_version_for_make_ci_and_pre_commit():
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    (pinned,) = _pins(test_extra, "ruff")
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    ci_pins = {
        pin
        for job in ci["jobs"].values()
        for step in job["steps"]
        for pin in re.findall(r"ruff==([\w.]+)", step.get("run", ""))
    }
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hook_pins = {
        pin
        for r in hooks["repos"]
        for h in r["hooks"]
        for pin in _pins(h.get("additional_dependencies", []), "ruff")
    }
    assert ci_pins == hook_pins == {pinned}
    installed = subprocess.run(
        [str(BIN / "ruff"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert installed.split() == ["ruff", pinned]  # what make lint runs


def test_pre_commit_config_is_valid():
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ make


def test_make_help_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY:(.*)$", makefile, re.M)
    rules = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    assert rules == set(phony.split()), "every named rule is a phony target and vice versa"
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True
    ).stdout
    listed = [line.split()[1] for line in out.splitlines()]
    assert sorted(listed) == sorted(rules)
    assert all(len(line.split(maxsplit=2)) == 3 for line in out.splitlines())  # each says what


def _recipe(makefile: str, target: str) -> list[str]:
    """The command lines of ``target``'s rule."""
    m = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert m, f"no rule {target}"
    return [line.strip() for line in m.group(1).splitlines()]


def test_mypy_is_part_of_make_lint_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/mypy rmeval" in _recipe(makefile, "lint")
    assert "$(BIN)/mypy rmeval" in _recipe(makefile, "typecheck")
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    runs = [step.get("run", "") for step in ci["jobs"]["lint"]["steps"]]
    assert "make typecheck" in runs
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (mypy,) = [h for r in hooks["repos"] for h in r["hooks"] if h["id"] == "mypy"]
    assert "stages" not in mypy  # runs on every commit, not only by hand


def test_make_takes_torch_alone_from_the_torch_index(tmp_path):
    """CI sets TORCH_INDEX (the repository variable TORCH_CPU_INDEX, no host in the repo):
    torch, and only torch, comes from it; unset, pip's own configuration decides."""

    def plan(*extra: str) -> list[str]:
        cmd = ["make", "-n", "-C", str(ROOT), "env", f"ENV_ROOT={tmp_path}", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return [ln for ln in out.splitlines() if "pip install" in ln]

    index = "file:///nowhere/cpu-wheels"
    lines = plan(f"TORCH_INDEX={index}")
    torch = [ln for ln in lines if '"torch==' in ln]
    assert torch and all(f'--index-url "{index}"' in ln for ln in torch)
    others = [ln for ln in lines if '"torch==' not in ln]
    assert others and not any("--index-url" in ln for ln in others)
    assert not any("--index-url" in ln for ln in plan())
