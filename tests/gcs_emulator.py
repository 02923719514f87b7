"""A gcp-storage-emulator on 127.0.0.1 for the tests, plus a loopback fault proxy.

The emulator does not honour ``ifGenerationMatch``: a second upload with
``if_generation_match=0`` would silently overwrite. :func:`enforce_generation_match`
teaches *this test server* the precondition (412 Precondition Failed, as GCS answers), so
the no-clobber writes of ``rmeval.storage`` are really tested. The client under test,
google-cloud-storage, is never patched.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator import storage as emu_storage
from gcp_storage_emulator.exceptions import Conflict, NotFound
from gcp_storage_emulator.handlers import objects as emu_objects


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# --------------------------------------------------------------------------- preconditions


class PreconditionConflict(Conflict):
    """An upload whose ifGenerationMatch does not hold."""


_local = threading.local()
_resumable_preconditions: dict[str, str] = {}
_patched = False


def enforce_generation_match() -> None:
    """Patch the emulator (idempotently) so uploads honour ``ifGenerationMatch``."""
    global _patched
    if _patched:
        return
    _patched = True

    orig_handle = emu_server.Router.handle
    orig_create_file = emu_storage.Storage.create_file
    orig_create_resumable = emu_storage.Storage.create_resumable_upload
    orig_handle_conflict = emu_objects._handle_conflict

    def handle(self, method):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self._request_handler.path).query)
        _local.precondition = (query.get("ifGenerationMatch") or [None])[0]
        try:
            return orig_handle(self, method)
        finally:
            _local.precondition = None

    def create_resumable_upload(self, bucket_name, file_name, file_obj):
        upload_id = orig_create_resumable(self, bucket_name, file_name, file_obj)
        pre = getattr(_local, "precondition", None)
        if pre is not None:
            _resumable_preconditions[upload_id] = pre
        return upload_id

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
        pre = getattr(_local, "precondition", None)
        if pre is None and file_id is not None:
            pre = _resumable_preconditions.pop(file_id, None)
        if pre is not None:
            try:
                current = str(self.get_file_obj(bucket_name, file_name).get("generation"))
            except NotFound:
                current = "0"
            if current != str(pre):
                raise PreconditionConflict(
                    f"precondition ifGenerationMatch={pre} failed for {bucket_name}/{file_name}"
                )
        return orig_create_file(self, bucket_name, file_name, content, file_obj, file_id)

    def handle_conflict(response, err):
        if isinstance(err, PreconditionConflict):
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json(
                {
                    "error": {
                        "code": 412,
                        "message": str(err),
                        "errors": [{"reason": "conditionNotMet", "message": str(err)}],
                    }
                }
            )
            return
        orig_handle_conflict(response, err)

    emu_server.Router.handle = handle
    emu_storage.Storage.create_file = create_file
    emu_storage.Storage.create_resumable_upload = create_resumable_upload
    emu_objects._handle_conflict = handle_conflict


class Emulator:
    """An in-process emulator on a free loopback port."""

    def __init__(self) -> None:
        enforce_generation_match()
        self.port = free_port()
        self.server = emu_server.create_server("127.0.0.1", self.port, in_memory=True)
        self.server.start()
        wait_for_port(self.port)
        self.host = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


# --------------------------------------------------------------------------- fault proxy


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_port`` that fails every
    ``every``-th request, alternating a 503 answer and a dropped connection."""

    def __init__(self, upstream_port: int, every: int = 3) -> None:
        self.upstream_port = upstream_port
        self.every = every
        self.requests = 0
        self.faults = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                    fault = n % proxy.every == 0
                    if fault:
                        proxy.faults += 1
                if fault and (n // proxy.every) % 2 == 1:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    payload = b'{"error": {"code": 503, "message": "injected fault"}}'
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
                    return
                if fault:
                    # Drop the connection without an answer.
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("connection",)
                }
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
