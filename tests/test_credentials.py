"""rmeval.credentials end to end: the service-account key in GOOGLE_SERVICE_ACCOUNT (a dummy
key, well-formed and loadable by google-auth) is used in memory by the real storage client
and never written to a file, not even by a process killed with SIGKILL mid-request."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rmeval import credentials
from rmeval.errors import CredentialsError

EMAIL = "rmeval-test@example-project.iam.gserviceaccount.com"
OTHER_EMAIL = "someone-else@other-project.iam.gserviceaccount.com"


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def _key(email: str = EMAIL, token_uri: str = "https://oauth2.googleapis.com/token") -> dict:
    return {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": _pem(),
        "client_email": email,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


@pytest.fixture(scope="module")
def key_json() -> str:
    return json.dumps(_key())


def _secret_fragments(key: str) -> list[str]:
    """Pieces of the key that must never show up in any output or file."""
    pem = json.loads(key)["private_key"]
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return [body[1], body[-2]]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env.pop("STORAGE_EMULATOR_HOST", None)
    for name in ("tmp", "home", "run"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(
        TMPDIR=str(tmp_path / "tmp"),
        HOME=str(tmp_path / "home"),  # no ~/.config/gcloud of the machine leaks in
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        NO_GCE_CHECK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _files_holding(tmp_path: Path, key: str) -> list[str]:
    """Every file under the child's TMPDIR, HOME and XDG_RUNTIME_DIR that holds the key."""
    found = []
    for area in ("tmp", "home", "run"):
        for p in (tmp_path / area).rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                if any(f.encode() in data for f in _secret_fragments(key)):
                    found.append(str(p))
    return found


def _assert_no_secret(text: str, key: str) -> None:
    for fragment in _secret_fragments(key):
        assert fragment not in text


# The child asks the real storage layer for its client and reports which credential it got.
CHILD = textwrap.dedent(
    """
    import json, logging, os, sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from rmeval import storage
    client = storage.gcs_client("gs://bucket/x")
    creds = client._credentials
    print(json.dumps({
        "type": type(creds).__module__ + "." + type(creds).__name__,
        "email": getattr(creds, "service_account_email", None),
        "project": client.project,
        "adc": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),
    }), flush=True)
    """
)


def _run_child(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )


def test_key_is_used_in_memory_and_never_written(tmp_path, key_json):
    proc = _run_child(tmp_path, _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["type"] == "google.oauth2.service_account.Credentials"
    assert seen["email"] == EMAIL and seen["project"] == "example-project"
    assert seen["adc"] is None  # no Application Default Credentials file was set up
    assert _files_holding(tmp_path, key_json) == []
    assert sorted(os.listdir(tmp_path / "tmp")) == []
    _assert_no_secret(proc.stdout + proc.stderr, key_json)
    assert "GOOGLE_SERVICE_ACCOUNT" in proc.stderr  # it did log (debug), just not the key


class _TokenSink:
    """A loopback 'token endpoint' that reads a request and never answers: the client is
    then stuck mid-request, the moment to kill it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.got = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(10)
            data = b""
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    head, sep, body = data.partition(b"\r\n\r\n")
                    if sep and len(body) >= _content_length(head):
                        break
            except OSError:
                pass
            self.requests.append(data)
            self.got.set()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _jwt_claims(request: bytes) -> dict:
    from urllib.parse import parse_qs

    body = request.partition(b"\r\n\r\n")[2].decode()
    assertion = parse_qs(body)["assertion"][0]
    payload = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_kill_9_mid_request_leaves_no_key_anywhere(tmp_path):
    sink = _TokenSink()
    key = json.dumps(_key(token_uri=f"http://127.0.0.1:{sink.port}/token"))
    env = _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key)
    cmd = [sys.executable, "-m", "rmeval", "plan", "--source", "gs://bucket/rm_checkpoints"]
    proc = subprocess.Popen(
        [*cmd, "--store", str(tmp_path / "store")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert sink.got.wait(120), "the command never asked for a token"
        # it signs the token request with the key from the variable: the credential works
        assert _jwt_claims(sink.requests[0])["iss"] == EMAIL
        time.sleep(0.2)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sink.close()
    assert proc.returncode == -signal.SIGKILL
    assert _files_holding(tmp_path, key) == []
    assert sorted(os.listdir(tmp_path / "tmp")) == []
    _assert_no_secret((proc.stdout.read() + proc.stderr.read()).decode(), key)


def test_explicit_adc_wins_and_is_left_untouched(tmp_path, key_json):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(_key(OTHER_EMAIL)))
    before = mine.read_bytes()
    env = _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json, GOOGLE_APPLICATION_CREDENTIALS=str(mine))
    proc = _run_child(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["email"] == OTHER_EMAIL and seen["adc"] == str(mine)
    assert mine.read_bytes() == before
    assert _files_holding(tmp_path, key_json) == []


def test_gcloud_adc_file_wins(tmp_path, key_json):
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    (gcloud / "application_default_credentials.json").write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "r",
            }
        )
    )
    proc = _run_child(tmp_path, _env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key_json))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["type"] == "google.oauth2.credentials.Credentials" and seen["adc"] is None


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
    with pytest.raises(CredentialsError) as info:
        credentials.check_google_env(
            {"GOOGLE_SERVICE_ACCOUNT": value, "CLOUDSDK_CONFIG": str(tmp_path)}
        )
    message = str(info.value)
    assert "GOOGLE_SERVICE_ACCOUNT" in message and expect in message
    assert "SECRETVALUE" not in message and "\n" not in message


def _damaged_key() -> str:
    key = _key()
    lines = key["private_key"].splitlines()
    lines[3] = lines[3][:10] + "!!" + lines[3][12:]  # not base64 any more
    key["private_key"] = "\n".join(lines) + "\n"
    return json.dumps(key)


def _ls_gcs(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    """``rmeval ls gs://bucket/x``: it fails (exit 1) with one line, which is returned."""
    cmd = [sys.executable, "-m", "rmeval", "ls", "gs://bucket/x"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    line = proc.stderr.strip()
    assert proc.returncode == 1 and "\n" not in line and "Traceback" not in line, proc.stderr
    return proc, line


def test_key_google_auth_cannot_use_is_reported_as_unusable_with_the_reason(tmp_path):
    key = _damaged_key()
    proc, line = _ls_gcs(_env(tmp_path, GOOGLE_SERVICE_ACCOUNT=key))
    assert line.startswith(
        "rmeval: error: GOOGLE_SERVICE_ACCOUNT holds a service-account key that google-auth "
        "cannot use (Unable to load PEM file"
    ), line
    assert "no Google credentials found" not in line
    _assert_no_secret(proc.stdout + proc.stderr, key)


def test_unusable_adc_file_is_reported_as_unusable_with_the_reason(tmp_path):
    broken = tmp_path / "key.json"
    broken.write_text('{"type": "service_account", "client_email": ')
    _, line = _ls_gcs(_env(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(broken)))
    assert line.startswith(
        "rmeval: error: gs://bucket/x: the configured Google credentials are unusable ("
    ), line
    assert str(broken) in line


def test_cli_bad_value_exits_1_with_one_line_before_any_work(tmp_path):
    """The key is checked by the first GCS client a command asks for (whatever the
    command), before any request; a command that never touches gs:// never reads it."""
    env = _env(
        tmp_path,
        GOOGLE_SERVICE_ACCOUNT='{"type": "service_account", "private_key": "SECRETVALUE-99"',
    )
    (tmp_path / "local").mkdir()
    plan = ["plan", "--source", str(tmp_path / "local"), "--store", str(tmp_path / "store")]
    local = subprocess.run(  # plan reaches gs:// when its source or store is there; not here
        [sys.executable, "-m", "rmeval", *plan, "--allow-empty"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == 0 and "nothing to do" in local.stderr, local.stderr
    ckpt = "gs://bucket/run_a--1/streaming_params_3"
    args = [ckpt, "--store", "gs://bucket/store", "--tokenizer", "gs://bucket/tokenizer"]
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "run-one", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rmeval: error: GOOGLE_SERVICE_ACCOUNT is not valid JSON")
    assert "SECRETVALUE" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path / "tmp")) == []


def test_redact_masks_secret_values(monkeypatch):
    monkeypatch.setenv("BEAKER_TOKEN", "bk-secret-token")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    assert credentials.redact("auth bk-secret-token and hf_abcdef") == "auth *** and ***"
