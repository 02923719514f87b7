"""Beaker calls have a deadline: against a closed loopback port, collect, plan and launch
stop with one line naming the address and the cause instead of retrying forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from rmeval import collect
from rmeval.errors import BackendError
from tests.collect_fixtures import make_metrics
from tests.fake_beaker import deadline


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_beaker_is_one_line_within_the_deadline(tmp_path):
    port = _closed_port()
    config = tmp_path / "beaker.yml"
    config.write_text(f"user_token: x\nrpc_address: 127.0.0.1:{port}\ndefault_org: ai2\n")
    env = {
        **os.environ,
        "BEAKER_CONFIG": str(config),
        "BEAKER_TOKEN": "not-a-real-token",
        "BEAKER_ADDR": f"http://127.0.0.1:{port}",
    }
    env.pop("RMEVAL_BEAKER_TIMEOUT", None)
    src = tmp_path / "ckpts" / "run_ID__ab__SWAPS_1--x"
    src.mkdir(parents=True)
    (src / "streaming_params").write_bytes(b"x")
    rm = [sys.executable, "-m", "rmeval"]
    ws, ckpts, out = "ai2/evals", str(src.parent), str(tmp_path / "t.csv")
    commands = {
        "collect": [*rm, "collect", "--source", f"beaker://{ws}", "--output", out, "--beaker-timeout", "2"],
        "plan": [*rm, "-v", "plan", "--source", ckpts, "--store", str(tmp_path / "s"), "--workspace", ws, "--beaker-timeout", "2"],
        "launch": [*rm, "launch", "--backend", "beaker", "--workspace", ws, "--source", ckpts, "--store", str(tmp_path / "s")],
    }  # fmt: skip
    t0 = time.monotonic()
    procs = {
        name: subprocess.Popen(
            cmd,
            env={**env, "RMEVAL_BEAKER_TIMEOUT": "2"} if name == "launch" else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cmd in commands.items()
    }
    errs = {}
    try:
        for name, p in procs.items():
            _, errs[name] = p.communicate(timeout=60)
            assert p.returncode == 1, (name, errs[name])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - t0 < 45
    for name, err in errs.items():
        lines = [x for x in err.splitlines() if x.startswith("rmeval: error: ")]
        assert len(lines) == 1, (name, err)
        line = lines[0]
        assert f"127.0.0.1:{port}" in line and "no answer within 2 s" in line, (name, line)
        assert "Connection refused" in line and "--beaker-timeout" in line, (name, line)
        if name != "plan":  # plan ran with -v: debug lines and the traceback come too
            assert err.count("\n") == 1, (name, err)
    assert "each call gets 2 s to be answered" in errs["plan"]  # -v shows the deadline
    assert not (tmp_path / "t.csv").exists()


def test_unreachable_beaker_http_endpoint(fake_beaker, monkeypatch):
    """gRPC answers, the HTTP file endpoint does not: the retried GET of metrics.json stops
    at the deadline too."""
    ws = fake_beaker.add_workspace("ai2/evals")
    fake_beaker.add_experiment(
        ws, "rm-eval-a", files={"metrics.json": json.dumps(make_metrics(seed=1))}
    )
    port = _closed_port()
    monkeypatch.setenv("BEAKER_ADDR", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with deadline(25), pytest.raises(BackendError) as err:
        collect.collect("beaker://ai2/evals", beaker_timeout=1.5)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert f"http://127.0.0.1:{port}" in text and "no answer within 1.5 s" in text
    assert "Connection refused" in text


def test_deadline_values(monkeypatch):
    from rmeval.backends import beaker
    from rmeval.errors import UsageError

    monkeypatch.delenv(beaker.TIMEOUT_ENV, raising=False)
    assert beaker.resolve_timeout() == beaker.DEFAULT_TIMEOUT
    monkeypatch.setenv(beaker.TIMEOUT_ENV, "7.5")
    assert beaker.resolve_timeout() == 7.5
    assert beaker.resolve_timeout(3) == 3.0  # the option wins
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(beaker.TIMEOUT_ENV, bad)
        with pytest.raises(UsageError, match=beaker.TIMEOUT_ENV):
            beaker.resolve_timeout()


def test_config_file_without_token_is_one_line(tmp_path, monkeypatch):
    from rmeval.backends import beaker

    config = tmp_path / "beaker.yml"
    config.write_text("rpc_address: 127.0.0.1:1\ndefault_org: ai2\n")  # no user_token
    monkeypatch.setenv("BEAKER_CONFIG", str(config))
    monkeypatch.setenv("BEAKER_TOKEN", "t")
    expected = r"beaker\.yml: unusable Beaker configuration"
    with pytest.raises(BackendError, match=expected), beaker.client():
        pass
