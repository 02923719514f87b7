"""Notifications: one Slack-compatible ``{"text": …}`` JSON POST to a webhook per event
(a run given up, a new best Overall). A failing webhook is logged and never fails the
command that sent it."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


def _where(url: str) -> str:
    """The webhook without its path: Slack webhook paths are secrets, never logged."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def post(url: str, text: str, timeout: float = TIMEOUT_S) -> bool:
    """POST ``{"text": text}`` to ``url``; True when it answered 2xx."""
    body = json.dumps({"text": text}).encode("utf-8")
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
        log.warning("notify: %s did not take the message (%s); carrying on", _where(url), reason)
        return False
