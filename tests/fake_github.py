"""A small fake of the GitHub REST endpoints rmeval uses (rmeval/github.py), on 127.0.0.1.

It keeps pull requests and issue comments in memory, answers like GitHub (JSON, 201 on
create, 401 without the token, 422 for a second open pull request of one head), and records
every call (method, path, query, JSON body, whether the token matched) for the tests to
assert. It runs in a thread of the test process (``with FakeGitHub(token) as gh:``); act's
steps reach it at ``gh.url`` (``GITHUB_API_URL``).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PULLS = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/pulls$")
PULL = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/pulls/(?P<n>\d+)$")
COMMENTS = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<n>\d+)/comments$")
COMMENT = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)$")


class FakeGitHub:
    def __init__(self, token: str, forbid: frozenset[str] = frozenset()):
        self.token = token
        self.calls: list[dict[str, Any]] = []
        self.pulls: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, dict[str, Any]] = {}
        self.forbid = set(forbid)  # "METHOD path-regex" answered 403 (a read-only token)
        self._next = 1
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                fake._serve(self)

            do_GET = do_POST = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ serving

    def _number(self) -> int:
        n = self._next
        self._next += 1
        return n

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        authed = h.headers.get("Authorization") == f"Bearer {self.token}"
        call = {
            "method": h.command,
            "path": parsed.path,
            "query": query,
            "body": body,
            "authorized": authed,
        }
        with self._lock:
            self.calls.append(call)
            status, doc = self._route(h.command, parsed.path, query, body, authed)
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method, path, query, body, authed) -> tuple[int, Any]:
        if not authed:
            return 401, {"message": "Bad credentials"}
        if any(re.fullmatch(f, f"{method} {path}") for f in self.forbid):
            return 403, {"message": "Resource not accessible by integration"}
        if (m := PULLS.match(path)) and method == "GET":
            owner_head = query.get("head", "")
            out = [
                p
                for p in self.pulls.values()
                if p["state"] == query.get("state", "open")
                and f"{m['repo'].split('/')[0]}:{p['head']['ref']}" == owner_head
                and (not query.get("base") or p["base"]["ref"] == query["base"])
            ]
            return 200, out
        if (m := PULLS.match(path)) and method == "POST":
            if not all(body.get(k) for k in ("title", "head", "base")):
                return 422, {"message": "Validation Failed"}
            if any(
                p["head"]["ref"] == body["head"] and p["state"] == "open"
                for p in self.pulls.values()
            ):
                return 422, {"message": f"A pull request already exists for {body['head']}."}
            n = self._number()
            self.pulls[n] = {
                "number": n,
                "state": "open",
                "title": body["title"],
                "body": body.get("body", ""),
                "head": {"ref": body["head"]},
                "base": {"ref": body["base"]},
                "html_url": f"https://github.example/{m['repo']}/pull/{n}",
            }
            return 201, self.pulls[n]
        if (m := PULL.match(path)) and method == "PATCH":
            pull = self.pulls.get(int(m["n"]))
            if pull is None:
                return 404, {"message": "Not Found"}
            pull.update({k: body[k] for k in ("title", "body") if k in body})
            return 200, pull
        if (m := COMMENTS.match(path)) and method == "GET":
            n = int(m["n"])
            return 200, [c for c in self.comments.values() if c["issue"] == n]
        if (m := COMMENTS.match(path)) and method == "POST":
            cid = self._number()
            self.comments[cid] = {"id": cid, "issue": int(m["n"]), "body": body["body"]}
            return 201, self.comments[cid]
        if (m := COMMENT.match(path)) and method == "PATCH":
            c = self.comments.get(int(m["id"]))
            if c is None:
                return 404, {"message": "Not Found"}
            c["body"] = body["body"]
            return 200, c
        return 404, {"message": "Not Found"}

    # ------------------------------------------------------------------ lifetime

    def start(self) -> FakeGitHub:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
