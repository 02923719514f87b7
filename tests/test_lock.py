"""requirements.lock: generated from pyproject.toml, not stale, hashed, no index named, torch
recorded in its two variants; the image, setup-rmeval and CI install or check it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from rmeval import provenance

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / provenance.LOCK_FILE


def _lock_module():
    spec = importlib.util.spec_from_file_location("rmeval_lock_script", ROOT / "scripts/lock.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


lock = pytest.importorskip("tomllib") and _lock_module()


def test_the_lock_is_not_stale():
    reason = lock.stale_reason(LOCK.read_text(), lock.inputs())
    assert reason is None, f"requirements.lock is stale: {reason}; run `make lock`"


def test_a_changed_pyproject_makes_it_stale(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"tqdm>=4.66",', '"tqdm>=4.66",\n  "rich>=13",', 1))
    reqs = lock.inputs(pyproject)
    assert "rich>=13" in reqs
    assert "dependencies changed" in lock.stale_reason(LOCK.read_text(), reqs)
    assert "no inputs-sha256" in lock.stale_reason("numpy==2.0\n", reqs)


def test_every_input_is_pinned_within_its_specifier_with_hashes():
    text = LOCK.read_text()
    pins = provenance.parse_lock(text)
    for req in map(Requirement, lock.inputs()):
        versions = pins.get(provenance.normalize(req.name))
        assert versions, f"{req.name} is not in requirements.lock"
        assert all(req.specifier.contains(v, prereleases=True) for v in versions), req
    # every pinned line carries hashes
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line[:1].isalnum():
            assert "==" in line and line.endswith("\\"), line
            assert lines[i + 1].strip().startswith("--hash=sha256:"), line


def test_torch_is_recorded_not_locked_and_matches_the_makefile_and_image():
    pins = provenance.parse_lock(LOCK.read_text())
    assert "torch" not in pins
    text = LOCK.read_text()
    makefile = (ROOT / "Makefile").read_text()
    cpu_pin = re.search(r"^TORCH_PIN\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert f"#   cpu: {cpu_pin} " in text
    base = re.search(r"^FROM (\S+?)@", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert base in text


def test_the_lock_names_no_index_host():
    text = LOCK.read_text()
    assert not re.search(r"https?://|index-url|find-links|extra-index", text)


def test_uv_pin_is_one_version_in_make_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^UV_PIN\s*:=\s*(\S+)", makefile, re.M).group(1)
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    steps = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    check = [s for s in steps if "scripts/lock.py" in s and "--check" in s]
    assert check, "ci.yml runs no lock staleness check"
    assert any(f'"{pin}"' in s for s in steps), "ci.yml installs another uv than the Makefile"


def test_image_and_setup_action_install_from_the_lock():
    import dockerfile_parse  # test dependency: dockerfile-parse

    parsed = dockerfile_parse.DockerfileParser(path=str(ROOT / "Dockerfile")).structure
    by = lambda kind: [i["value"] for i in parsed if i["instruction"] == kind]  # noqa: E731
    assert any(provenance.LOCK_FILE in v.split() for v in by("COPY"))
    assert any("--require-hashes --no-deps -r requirements.lock" in v for v in by("RUN"))
    assert any(v.startswith(f"{provenance.LOCK_ENV}=") for v in by("ENV"))
    action = (ROOT / "actions/setup-rmeval/action.yml").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in action
    assert "requirements.lock" in (ROOT / "docs/github-actions.md").read_text()
