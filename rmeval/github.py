"""The GitHub REST calls the workflows make: open or update one pull request per results
dataset, and keep one diff comment per pull request.

Every call goes through :meth:`Client.request` (``$GITHUB_API_URL``, the job's token as a
bearer token, JSON in and out), which turns HTTP and network failures into one
:class:`GitHubError` line naming the call and what to do. Endpoints used:

    GET   /repos/{repo}/pulls?head={owner}:{branch}&base={base}&state=open
    POST  /repos/{repo}/pulls                       {title, head, base, body}
    PATCH /repos/{repo}/pulls/{number}              {title, body}
    GET   /repos/{repo}/issues/{number}/comments
    POST  /repos/{repo}/issues/{number}/comments    {body}
    PATCH /repos/{repo}/issues/comments/{id}        {body}
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from rmeval.errors import RmevalError

API_VERSION = "2022-11-28"
TIMEOUT = 30.0
COMMENT_MARKER = "<!-- rmeval results diff -->"


class GitHubError(RmevalError):
    """A GitHub REST call failed (network, permissions, a rejected request)."""


@dataclass(frozen=True)
class Client:
    api_url: str
    token: str
    repo: str  # owner/name

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Client:
        """From ``GITHUB_API_URL``, ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY``."""
        env = dict(os.environ if env is None else env)
        missing = [
            k for k in ("GITHUB_API_URL", "GITHUB_TOKEN", "GITHUB_REPOSITORY") if not env.get(k)
        ]
        if missing:
            raise GitHubError(
                f"{', '.join(missing)} not set; the step needs the job's token "
                "(env GITHUB_TOKEN: ${{ github.token }}) and runs inside a workflow"
            )
        return cls(env["GITHUB_API_URL"].rstrip("/"), env["GITHUB_TOKEN"], env["GITHUB_REPOSITORY"])

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.api_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("X-GitHub-Api-Version", API_VERSION)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        where = f"{method} {path.split('?')[0]}"
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                text = resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read().decode("utf-8", "replace")).get("message", "")
            except (ValueError, AttributeError):
                detail = ""
            hint = (
                " (the job's token lacks the permission: give the job `pull-requests: write`)"
                if exc.code in (401, 403)
                else ""
            )
            raise GitHubError(
                f"{where}: HTTP {exc.code}{f' {detail}' if detail else ''}{hint}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GitHubError(f"{where}: cannot reach {self.api_url} ({reason})") from None
        return json.loads(text) if text.strip() else None

    # ---------------------------------------------------------------- pull requests

    def open_pull(self, head: str, base: str) -> dict[str, Any] | None:
        """The open pull request from branch ``head`` into ``base``, if any."""
        q = urllib.parse.urlencode({"head": f"{self.owner}:{head}", "base": base, "state": "open"})
        pulls = self.request("GET", f"/repos/{self.repo}/pulls?{q}") or []
        return pulls[0] if pulls else None

    def upsert_pull(
        self, head: str, base: str, title: str, body: str
    ) -> tuple[str, dict[str, Any]]:
        """Open the pull request ``head`` → ``base``, or update the one open already:
        ``("created" | "updated", pull)``."""
        existing = self.open_pull(head, base)
        if existing is None:
            pull = self.request(
                "POST",
                f"/repos/{self.repo}/pulls",
                {"title": title, "head": head, "base": base, "body": body},
            )
            return "created", pull
        pull = self.request(
            "PATCH",
            f"/repos/{self.repo}/pulls/{existing['number']}",
            {"title": title, "body": body},
        )
        return "updated", pull

    # ---------------------------------------------------------------- comments

    def upsert_comment(self, number: int, body: str, marker: str = COMMENT_MARKER) -> str:
        """Post ``body`` (with ``marker``) on pull request ``number``, or edit the comment
        that carries the marker already: ``"created"`` or ``"updated"``."""
        text = f"{marker}\n{body}"
        comments = self.request("GET", f"/repos/{self.repo}/issues/{number}/comments") or []
        mine = next((c for c in comments if marker in (c.get("body") or "")), None)
        if mine is None:
            self.request("POST", f"/repos/{self.repo}/issues/{number}/comments", {"body": text})
            return "created"
        self.request("PATCH", f"/repos/{self.repo}/issues/comments/{mine['id']}", {"body": text})
        return "updated"
