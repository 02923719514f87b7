"""Credentials taken from the environment at run time — the one place that handles them.

Beaker tasks get the Google service-account key as the *content* of the secret
``GOOGLE_SERVICE_ACCOUNT``; Google's libraries want a key *file*
(``GOOGLE_APPLICATION_CREDENTIALS``). :func:`google_from_env` bridges the two for the
lifetime of one command: when the variable is set and no Application Default Credentials
are configured, it writes the key to a private (0600) temporary file, points
``GOOGLE_APPLICATION_CREDENTIALS`` at it, and removes both when the block ends — normally,
on an exception, on SIGTERM (Beaker preemption), or at interpreter exit as a last resort.

An ADC that is already configured (``GOOGLE_APPLICATION_CREDENTIALS`` set, or gcloud's
``application_default_credentials.json``) is left untouched. ``BEAKER_TOKEN`` and
``HF_TOKEN`` are read from the environment only (never from files we manage, never from
arguments). No secret value is ever logged or put into an error message.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from rmeval.errors import CredentialsError
from rmeval.procutil import sigterm_as_exit

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_VAR = "GOOGLE_SERVICE_ACCOUNT"
ADC_VAR = "GOOGLE_APPLICATION_CREDENTIALS"
BEAKER_TOKEN_VAR = "BEAKER_TOKEN"
HF_TOKEN_VAR = "HF_TOKEN"

# Fields every Google service-account key file carries and google-auth needs to load it.
_REQUIRED_KEY_FIELDS = ("client_email", "private_key", "token_uri")

_HINT = (
    "set it to the full JSON content of a Google service-account key file "
    "(or unset it and configure Application Default Credentials)"
)


def gcloud_adc_file(environ: MutableMapping[str, str] | None = None) -> Path:
    """Where ``gcloud auth application-default login`` writes its credentials."""
    env = os.environ if environ is None else environ
    config_dir = env.get("CLOUDSDK_CONFIG")
    if config_dir:
        return Path(config_dir) / "application_default_credentials.json"
    if os.name == "nt":  # pragma: no cover - Linux/macOS only in practice
        return Path(env.get("APPDATA", "")) / "gcloud" / "application_default_credentials.json"
    return Path.home() / ".config" / "gcloud" / "application_default_credentials.json"


def adc_configured(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when Application Default Credentials are configured explicitly: the
    ``GOOGLE_APPLICATION_CREDENTIALS`` variable is set, or gcloud's ADC file exists."""
    env = os.environ if environ is None else environ
    return bool(env.get(ADC_VAR)) or gcloud_adc_file(env).is_file()


def parse_service_account(text: str, var: str = SERVICE_ACCOUNT_VAR) -> dict:
    """The parsed key, or :class:`CredentialsError` naming ``var`` (never the content)."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(
            f"{var} is not valid JSON (line {exc.lineno}, column {exc.colno}); {_HINT}"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise CredentialsError(
            f'{var} is not a service-account key (it needs "type": "service_account"); {_HINT}'
        )
    missing = [k for k in _REQUIRED_KEY_FIELDS if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise CredentialsError(
            f"{var} is a service-account key without {', '.join(missing)}; {_HINT}"
        )
    return info


class _KeyFile:
    """One temporary key file and the environment change that points at it."""

    def __init__(self, path: Path, environ: MutableMapping[str, str]) -> None:
        self.path = path
        self.environ = environ
        self._lock = threading.Lock()
        self._done = False

    def cleanup(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            if self.environ.get(ADC_VAR) == str(self.path):
                del self.environ[ADC_VAR]
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            log.debug("removed the temporary Google key file")


def _write_key_file(text: str) -> Path:
    # mkstemp creates the file with mode 0600, readable by this user only, before any
    # byte of the key is written.
    fd, name = tempfile.mkstemp(prefix="rmeval-gsa-", suffix=".json")
    path = Path(name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return path


@contextlib.contextmanager
def google_from_env(environ: MutableMapping[str, str] | None = None) -> Iterator[Path | None]:
    """Make ``GOOGLE_SERVICE_ACCOUNT`` usable as Application Default Credentials for the
    duration of the block.

    Yields the temporary key file's path when one was written, else ``None`` (variable
    unset or empty, or ADC already configured — which is then left exactly as it was).
    Raises :class:`CredentialsError` when the variable holds something that is not a
    service-account key; nothing is written in that case.
    """
    env = os.environ if environ is None else environ
    text = env.get(SERVICE_ACCOUNT_VAR, "")
    if not text.strip():
        yield None
        return
    if adc_configured(env):
        log.debug(
            "%s is set but Application Default Credentials are already configured; using those",
            SERVICE_ACCOUNT_VAR,
        )
        yield None
        return
    parse_service_account(text)  # validate first: nothing is written for a bad value
    key = _KeyFile(_write_key_file(text), env)
    try:
        atexit.register(key.cleanup)
        env[ADC_VAR] = str(key.path)
        log.debug("using the service-account key from %s for Google access", SERVICE_ACCOUNT_VAR)
        with sigterm_as_exit():
            yield key.path
    finally:
        key.cleanup()
        atexit.unregister(key.cleanup)


def redact(text: str, environ: MutableMapping[str, str] | None = None) -> str:
    """``text`` with the value of every secret variable replaced by ``***``, for messages
    that may echo a subprocess's output or a server's reply."""
    env = os.environ if environ is None else environ
    for var in (SERVICE_ACCOUNT_VAR, BEAKER_TOKEN_VAR, HF_TOKEN_VAR):
        value = env.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


__all__ = [
    "ADC_VAR",
    "BEAKER_TOKEN_VAR",
    "HF_TOKEN_VAR",
    "SERVICE_ACCOUNT_VAR",
    "adc_configured",
    "gcloud_adc_file",
    "google_from_env",
    "parse_service_account",
    "redact",
]
