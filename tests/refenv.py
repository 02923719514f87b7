"""The reference environments ``make test`` builds (Makefile target ``ref-envs``) and tells
the tests about: other transformers versions, to load what rmeval writes and to run
RewardBench's own run_rm. Without the variables (plain pytest) the tests that need them
skip, saying so; a variable that points at nothing is a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

TF443 = "RMEVAL_TF443_PYTHON"  # transformers 4.43.1 (the upstream conversion image's)
RUNRM = "RMEVAL_RUNRM_PYTHON"  # rewardbench 0.1.4 + fschat 0.2.36 (transformers 4.51.0)
TESTS = Path(__file__).resolve().parent
# Tables a test wants pasted: printed at the end of the run (tests/conftest.py).
REPORTS = pytest.StashKey[list]()


def python(var: str) -> str:
    """The interpreter of a reference environment."""
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set; `make test` builds the reference environment and sets it")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{var}={path}: no such interpreter; run `make ref-envs`")
    return path


def run(interpreter: str, script: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    """Run ``tests/<script>`` under ``interpreter`` offline; its stdout (fails on rc != 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        HF_HOME=str(cwd / "hf-home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
        PYTHONNOUSERSITE="1",
    )
    proc = subprocess.run(
        [interpreter, str(TESTS / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"{interpreter} {script} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout
