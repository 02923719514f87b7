"""Shared fixtures: a GCS emulator on 127.0.0.1 (with ifGenerationMatch enforced) and a
``store_root`` that runs a test once against a local directory and once against gs://."""

from __future__ import annotations

import os
import uuid

import pytest

# fixtures for every test module: the fake Beaker service (`fake_beaker`) and the one CLI
# runner (`rmeval_cli`)
pytest_plugins = ["tests.fake_beaker", "tests.cli_runner"]

# Never let google-auth probe a metadata server, and never reach a model hub.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def _rmeval_logger_restored():
    """Code run in-process that sets up logging for itself (actions/plan-runs' ``main``
    sends rmeval's records to its own handler, ``propagate = False``) leaves the "rmeval"
    logger as it found it for the tests after it."""
    import logging

    logger = logging.getLogger("rmeval")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Tables tests left to paste (e.g. the run_rm parity comparison), after the results."""
    from tests import refenv

    for table in config.stash.get(refenv.REPORTS, []):
        terminalreporter.section("reference comparison")
        terminalreporter.write_line(table)


@pytest.fixture(scope="session")
def gcs_emulator():
    from tests.gcs_emulator import Emulator

    emu = Emulator()
    yield emu
    emu.stop()


def _point_client_at(monkeypatch, host: str) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "rmeval-test")
    monkeypatch.setenv("RMEVAL_GCS_RETRY_INITIAL", "0.01")
    monkeypatch.setenv("RMEVAL_GCS_RETRY_MAXIMUM", "0.1")
    monkeypatch.setenv("RMEVAL_GCS_RETRY_TIMEOUT", "60")


def make_bucket(name: str | None = None) -> str:
    from rmeval import storage

    name = name or f"b-{uuid.uuid4().hex[:12]}"
    storage.gcs_client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch) -> str:
    """``gs://<fresh bucket>`` on the emulator; the real client is pointed at it."""
    _point_client_at(monkeypatch, gcs_emulator.host)
    return make_bucket()


@pytest.fixture(params=["local", "gcs"])
def store_root(request, tmp_path) -> str:
    """A root URI: a local directory, then a gs:// prefix on the emulator."""
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        return str(root)
    return request.getfixturevalue("gcs_bucket") + "/store"


def _own_code_for_children() -> None:
    """Every process the tests start (``python -m rmeval`` in another directory, workers,
    report kernels) imports this checkout's rmeval, however pytest itself was started."""
    from rmeval.procutil import child_env

    path = child_env().get("PYTHONPATH")
    if path:
        os.environ["PYTHONPATH"] = path


_own_code_for_children()
