"""The task image's Dockerfile and .dockerignore, read with a real Dockerfile parser
(dockerfile-parse) since no Docker engine runs here."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import dockerfile_parse  # test dependency: dockerfile-parse
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGEST_PIN = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
SECRET_LIKE = re.compile(
    r"(credential|service[-_]?account|secret|token|\.pem$|\.p12$|\.key$|-key\.json$|\.env$|gcloud|\.beaker)",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def parser():
    return dockerfile_parse.DockerfileParser(path=str(ROOT / "Dockerfile"))


@pytest.fixture(scope="module")
def instructions(parser):
    return [(i["instruction"], i["value"]) for i in parser.structure]


def test_base_is_a_cuda_pytorch_image_pinned_by_tag_and_digest(parser):
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert froms, "no FROM"
    for image in froms:  # every stage, not only the last
        ref = image.split()[0]
        assert DIGEST_PIN.match(ref), f"{ref} is not pinned by tag and digest"
    base = parser.baseimage
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base


def _copy_sources(value: str) -> list[str]:
    if value.lstrip().startswith("["):
        parts = json.loads(value)
    else:
        parts = [p for p in shlex.split(value) if not p.startswith("--")]
    return parts[:-1]


def test_only_our_package_is_copied_and_no_credential_files(instructions):
    copied = [src for ins, v in instructions if ins in ("COPY", "ADD") for src in _copy_sources(v)]
    assert copied, "nothing copied: the package must come from the build context"
    assert not [ins for ins, _ in instructions if ins == "ADD"], "use COPY, not ADD"
    for src in copied:
        assert not SECRET_LIKE.search(src), f"{src} looks like a credential"
        assert "://" not in src
    assert "rmeval" in copied and "pyproject.toml" in copied
    # nothing fetches code from the network
    runs = " ".join(v for ins, v in instructions if ins == "RUN")
    assert not re.search(r"\b(git clone|curl|wget|gsutil|gcloud)\b", runs)
    # the dependencies (the beaker extra's included) from the lock, then rmeval alone
    assert "pip install --require-hashes --no-deps -r requirements.lock" in runs
    assert re.search(r"pip install --no-deps \.(\s|$)", runs)


def test_no_secret_in_env_or_args(parser):
    names = set(parser.envs) | set(parser.args)
    for name in names:
        assert not re.search(r"TOKEN|SECRET|PASSWORD|SERVICE_ACCOUNT|APPLICATION_CREDENTIALS", name)


def test_final_user_is_not_root(instructions):
    users = [v.strip() for ins, v in instructions if ins == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", "")


def test_hf_caches_under_a_temp_dir(parser):
    envs = parser.envs
    assert envs.get("HF_HOME", "").startswith("/tmp/")
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        if var in envs:
            assert envs[var].startswith("/tmp/")


def test_entrypoint_is_rmeval(instructions):
    entrypoints = [v for ins, v in instructions if ins == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["rmeval"]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for plain patterns: a path is excluded when
    it or one of its parent directories matches (``**`` spans directories)."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        rx = (
            re.escape(pat)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(rx, c) for c in candidates):
            out = not neg
    return out


def test_dockerignore_keeps_results_artefacts_venvs_git_and_keys_out():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for rel in (
        ".git/config",
        "results/runs.csv",
        "tests/test_image.py",
        ".venv/bin/python",
        "venv/bin/python",
        "sub/.venv/x",
        ".pytest_cache/v",
        "rmeval/__pycache__/cli.cpython-311.pyc",
        "rmeval.egg-info/PKG-INFO",
        "demo-work/ckpt/streaming_params_1",
        "key/my-service-account.json",
        "gcp-credentials.json",
        "sa-key.json",
        ".env",
    ):
        assert _ignored(rel, patterns), f"{rel} would be sent to the Docker build"
    for rel in ("pyproject.toml", "README.md", "rmeval/cli.py", "rmeval/rewardbench/scoring.py"):
        assert not _ignored(rel, patterns), f"{rel} is needed by the build"
