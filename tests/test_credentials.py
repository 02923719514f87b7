"""rmeval.credentials end to end: each case runs a real Python process with a dummy (but
well-formed, loadable by google-auth) service-account key in GOOGLE_SERVICE_ACCOUNT."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rmeval import credentials
from rmeval.errors import CredentialsError

EMAIL = "rmeval-test@example-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def key_json() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "example-project",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": pem,
            "client_email": EMAIL,
            "client_id": "123456789012345678901",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def _secret_fragments(key: str) -> list[str]:
    """Pieces of the key that must never show up in any output."""
    pem = json.loads(key)["private_key"]
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return [body[1], body[-2], "0123456789abcdef0123456789abcdef01234567"]


# The child: enter google_from_env() with DEBUG logging of everything, report what it
# sees, load the key with google-auth (a real consumer), then exit / fail / wait as told.
CHILD = textwrap.dedent(
    """
    import json, logging, os, stat, sys, time
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from rmeval import credentials
    mode = sys.argv[1]
    with credentials.google_from_env() as path:
        adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        info = {"yielded": str(path) if path else None, "adc": adc}
        if adc and os.path.exists(adc):
            info["mode"] = stat.S_IMODE(os.stat(adc).st_mode)
        if path:
            import google.auth
            creds, project = google.auth.default()
            info["email"] = creds.service_account_email
            info["project"] = project
        print(json.dumps(info), flush=True)
        if mode == "fail":
            raise RuntimeError("task failed")
        if mode == "wait":
            time.sleep(30)
    print(json.dumps({"after": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")}), flush=True)
    """
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env.update(
        TMPDIR=str(tmpdir),
        HOME=str(tmp_path / "home"),  # no ~/.config/gcloud of the machine leaks in
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _run_child(tmp_path: Path, mode: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.run(
        [sys.executable, str(script), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tmp").iterdir())


def _assert_no_secret(text: str, key: str) -> None:
    for fragment in _secret_fragments(key):
        assert fragment not in text


def test_key_file_is_private_usable_and_removed_after_exit(tmp_path, key_json):
    proc = _run_child(tmp_path, "ok", _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json))
    assert proc.returncode == 0, proc.stderr
    inside, after = (json.loads(line) for line in proc.stdout.splitlines())
    path = Path(inside["adc"])
    assert inside["yielded"] == str(path)
    assert path.parent == tmp_path / "tmp"
    assert inside["mode"] == 0o600
    assert inside["email"] == EMAIL  # google-auth loaded the file we wrote
    assert inside["project"] == "example-project"
    assert after == {"after": None}  # the variable is restored (unset) too
    assert not path.exists()
    assert _leftovers(tmp_path) == []
    _assert_no_secret(proc.stdout + proc.stderr, key_json)
    assert "GOOGLE_SERVICE_ACCOUNT" in proc.stderr  # it did log (debug), just not the key


def test_key_file_removed_when_the_command_fails(tmp_path, key_json):
    proc = _run_child(tmp_path, "fail", _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json))
    assert proc.returncode == 1
    assert "RuntimeError: task failed" in proc.stderr
    inside = json.loads(proc.stdout.splitlines()[0])
    assert inside["mode"] == 0o600
    assert not Path(inside["adc"]).exists()
    assert _leftovers(tmp_path) == []
    _assert_no_secret(proc.stdout + proc.stderr, key_json)


def test_key_file_removed_on_sigterm(tmp_path, key_json):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json)
    proc = subprocess.Popen(
        [sys.executable, str(script), "wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the file exists
        inside = json.loads(line)
        path = Path(inside["adc"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["client_email"] == EMAIL
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM
    assert not path.exists()
    assert _leftovers(tmp_path) == []
    _assert_no_secret(proc.stdout.read() + proc.stderr.read(), key_json)


def test_existing_adc_variable_left_untouched(tmp_path, key_json):
    existing = tmp_path / "mine.json"
    existing.write_text('{"type": "authorized_user"}')
    before = existing.read_bytes()
    env = _env(
        tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json, GOOGLE_APPLICATION_CREDENTIALS=str(existing)
    )
    proc = _run_child(tmp_path, "plain", env)
    assert proc.returncode == 0, proc.stderr
    inside, after = (json.loads(line) for line in proc.stdout.splitlines())
    assert inside["yielded"] is None
    assert inside["adc"] == str(existing)
    assert after == {"after": str(existing)}
    assert existing.read_bytes() == before
    assert _leftovers(tmp_path) == []  # nothing written


def test_gcloud_adc_file_left_untouched(tmp_path, key_json):
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    adc = gcloud / "application_default_credentials.json"
    adc.write_text('{"type": "authorized_user"}')
    proc = _run_child(tmp_path, "plain", _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json))
    assert proc.returncode == 0, proc.stderr
    inside, after = (json.loads(line) for line in proc.stdout.splitlines())
    assert inside == {"yielded": None, "adc": None}
    assert after == {"after": None}
    assert _leftovers(tmp_path) == []


def test_unset_variable_does_nothing(tmp_path):
    proc = _run_child(tmp_path, "plain", _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    inside, _ = (json.loads(line) for line in proc.stdout.splitlines())
    assert inside == {"yielded": None, "adc": None}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "value, expect",
    [
        ('{"type": "service_account", "private_key": "SECRETVALUE-1234"', "not valid JSON"),
        ("SECRETVALUE-1234", "not valid JSON"),
        (
            '{"type": "authorized_user", "refresh_token": "SECRETVALUE-1234"}',
            "not a service-account key",
        ),
        ('["SECRETVALUE-1234"]', "not a service-account key"),
        ('{"type": "service_account", "private_key": "SECRETVALUE-1234"}', "without client_email"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable_not_the_content(tmp_path, value, expect):
    with (
        pytest.raises(CredentialsError) as info,
        credentials.google_from_env(
            {"GOOGLE_SERVICE_ACCOUNT": value, "CLOUDSDK_CONFIG": str(tmp_path)}
        ),
    ):
        pytest.fail("the block must not run")
    message = str(info.value)
    assert "GOOGLE_SERVICE_ACCOUNT" in message and expect in message
    assert "SECRETVALUE" not in message and "\n" not in message


# Runs rmeval.cli.main() for real, with one of the credential commands' parsers replaced by
# a probe whose handler reports what it sees (the stage handlers belong to other modules).
CLI_CHILD = textwrap.dedent(
    """
    import argparse, json, os, stat, sys
    from rmeval import cli
    from rmeval.errors import CollectError

    name, mode = sys.argv[1], sys.argv[2]

    def probe(args):
        adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        print(json.dumps({"adc": adc, "mode": stat.S_IMODE(os.stat(adc).st_mode) if adc else None}))
        if mode == "fail":
            raise CollectError("the stage failed")
        return 0

    build = cli.build_parser

    def build_parser():
        parser = build()
        probe_parser = argparse.ArgumentParser(prog=name)
        probe_parser.set_defaults(handler=probe)
        parser._subparsers._group_actions[0].choices[name] = probe_parser
        return parser

    cli.build_parser = build_parser
    rc = cli.main([name])
    print(json.dumps({"after": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")}))
    sys.exit(rc)
    """
)


def _run_cli(tmp_path: Path, name: str, mode: str, env: dict[str, str]):
    script = tmp_path / "cli_child.py"
    script.write_text(CLI_CHILD)
    return subprocess.run(
        [sys.executable, str(script), name, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_wraps_the_credential_commands(tmp_path, key_json):
    from rmeval import cli

    assert {"run-one", "launch", "collect"} <= cli.CREDENTIAL_COMMANDS
    env = _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json)
    proc = _run_cli(tmp_path, "collect", "fail", env)
    assert proc.returncode == 1
    inside, after = (json.loads(line) for line in proc.stdout.splitlines())
    assert inside["mode"] == 0o600 and Path(inside["adc"]).parent == tmp_path / "tmp"
    assert after == {"after": None}
    assert proc.stderr.strip() == "rmeval: error: the stage failed"
    assert _leftovers(tmp_path) == []
    # `plan` lists gs:// sources: the workflow's plan job has only GOOGLE_SERVICE_ACCOUNT
    for name in ("plan", "pipeline"):
        proc = _run_cli(tmp_path, name, "ok", env)
        assert proc.returncode == 0, proc.stderr
        inside = json.loads(proc.stdout.splitlines()[0])
        assert inside["mode"] == 0o600, name
        assert _leftovers(tmp_path) == []
    # a command outside the list never sees the key
    proc = _run_cli(tmp_path, "ls", "ok", env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0]) == {"adc": None, "mode": None}


def test_cli_bad_value_exits_1_with_one_line(tmp_path):
    env = _env(
        tmp_path,
        GOOGLE_SERVICE_ACCOUNT='{"type": "service_account", "private_key": "SECRETVALUE-99"',
    )
    proc = _run_cli(tmp_path, "run-one", "ok", env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rmeval: error: GOOGLE_SERVICE_ACCOUNT is not valid JSON")
    assert "SECRETVALUE" not in proc.stdout + proc.stderr
    assert "adc" not in proc.stdout  # the handler never ran
    assert _leftovers(tmp_path) == []


def test_redact_masks_secret_values(monkeypatch):
    monkeypatch.setenv("BEAKER_TOKEN", "bk-secret-token")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    assert credentials.redact("auth bk-secret-token and hf_abcdef") == "auth *** and ***"
