"""Credentials taken from the environment at run time — the one place that handles them.

Beaker tasks and CI jobs get the Google service-account key as the *content* of the secret
``GOOGLE_SERVICE_ACCOUNT``. :func:`google_credentials` turns it into an in-memory
credential (``google.oauth2.service_account.Credentials.from_service_account_info``) that
:mod:`rmeval.storage` hands to the storage client: the key is never written to a file, so
nothing is left behind by any exit, ``kill -9`` included. Every process that needs Google
access is an rmeval process (the local backend's workers, the report's notebook kernel)
that inherits the variable and does the same, so no Application Default Credentials file
is needed for a subprocess either.

Application Default Credentials that are configured explicitly (``GOOGLE_APPLICATION_CREDENTIALS``
set, or gcloud's ``application_default_credentials.json``) take precedence and are used as
they are. ``BEAKER_TOKEN`` and ``HF_TOKEN`` are read from the environment only (never from
files we manage, never from arguments). No secret value is ever logged or put into an
error message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path

from rmeval.errors import CredentialsError

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


def service_account_info(environ: MutableMapping[str, str] | None = None) -> dict | None:
    """The checked key of ``GOOGLE_SERVICE_ACCOUNT`` when rmeval is to use it: None when the
    variable is unset or empty, or when ADC is configured explicitly (which wins)."""
    env = os.environ if environ is None else environ
    text = env.get(SERVICE_ACCOUNT_VAR, "")
    if not text.strip():
        return None
    if adc_configured(env):
        log.debug(
            "%s is set but Application Default Credentials are configured; using those",
            SERVICE_ACCOUNT_VAR,
        )
        return None
    return parse_service_account(text)


def google_credentials(
    scopes: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None
):
    """An in-memory service-account credential from ``GOOGLE_SERVICE_ACCOUNT`` (see
    :func:`service_account_info`), or None. A key google-auth cannot use (a damaged
    private key, say) is a :class:`CredentialsError` that says why, without the key."""
    info = service_account_info(environ)
    if info is None:
        return None
    from google.oauth2 import service_account

    try:
        creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)
    except Exception as exc:  # ValueError from cryptography, google-auth's own errors
        raise CredentialsError(
            f"{SERVICE_ACCOUNT_VAR} holds a service-account key that google-auth cannot use "
            f"({_reason(exc)}); {_HINT}"
        ) from None
    log.debug("using the in-memory service-account key from %s", SERVICE_ACCOUNT_VAR)
    return creds


def _reason(exc: BaseException) -> str:
    """The first line of a library error, with any secret value masked."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


def check_google_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Fail now, with one line, if ``GOOGLE_SERVICE_ACCOUNT`` is set to something that is
    not a usable key (before a command does any work)."""
    google_credentials(environ=environ)


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
    "check_google_env",
    "gcloud_adc_file",
    "google_credentials",
    "parse_service_account",
    "redact",
    "service_account_info",
]
