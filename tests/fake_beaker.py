"""A fake Beaker service on loopback for tests and benchmarks, driven by the real beaker-py.

beaker-py 2.8.1 talks to two endpoints:

* gRPC (always TLS) at ``Config.rpc_address``: served here with ``grpc.server`` and
  ``beaker_pb2_grpc.add_BeakerServicer_to_server`` behind a self-signed certificate (SAN
  ``DNS:localhost`` and ``IP:127.0.0.1``, CA=true) that the client trusts through
  ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``. gRPC reads that variable once per process, before the
  first secure channel, so one certificate is made per process and the variable is set when
  the service first starts (and kept).
* HTTP at ``Config.agent_address`` + ``/api/v3``: a ``ThreadingHTTPServer``.

Implemented calls (checked against beaker-py's source):

=========================  ===================================================================
client call                what reaches the service
=========================  ===================================================================
workspace.get              ResolveWorkspaceName, GetWorkspace
experiment.create          ResolveWorkspaceName, HTTP POST /api/v3/workspaces/{id}/experiments
                           ?name=… (JSON spec; 409 on a name conflict), GetWorkload
workload.get               GetWorkload
workload.list              ResolveOrganizationName, ResolveWorkspaceName, ListWorkloads (paged)
workload.get_results       ResolveOrganizationName, ListJobs, GetDataset
job.list / job.get         ListJobs / GetJob
dataset.get                GetDataset
dataset.stream_file        ListDatasetFiles, HTTP GET /api/v3/datasets/{id}/files/<path>
                           (the listed sha256 digest is checked by the client)
=========================  ===================================================================

Anything else is UNIMPLEMENTED (beaker-py raises ``NotImplementedError``). Every call checks
the bearer token and is counted in :attr:`FakeBeaker.calls`; :attr:`FakeBeaker.latency` adds a
per-call delay (seconds) for benchmarks.

The ``fake_beaker`` fixture is available to every test (``tests/conftest.py`` loads this
module as a plugin: ``pytest_plugins``)::

    def test_x(fake_beaker):
        ws = fake_beaker.add_workspace("ai2/evals")
        fake_beaker.add_experiment(ws, "rm-eval-a", files={"metrics.json": b"{...}"})
        with fake_beaker.client() as beaker:   # or Beaker.from_env(check_for_upgrades=False)
            ...

The fixture sets ``BEAKER_TOKEN``, ``BEAKER_ADDR`` and ``BEAKER_CONFIG`` (a YAML file with
``rpc_address`` and ``default_org``) for the test, so code under test that calls
``Beaker.from_env(check_for_upgrades=False)`` reaches the fake. The client retries
UNAVAILABLE forever: tests that might hit a dead service need their own timeouts.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import os
import signal
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from beaker import beaker_pb2 as pb2
from beaker import beaker_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

TOKEN = "fake-beaker-token"
DEFAULT_ORG = "ai2"
STATES = ("finalized", "running", "failed", "queued", "canceled")
_ORG_ID = "01ORGFAKEAI2"

# --------------------------------------------------------------------------- TLS


def _make_certificate(directory: Path) -> tuple[bytes, bytes, Path]:
    """Self-signed CA certificate for localhost / 127.0.0.1; returns (cert, key, cert path)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / "fake-beaker-ca.pem"
    path.write_bytes(cert_pem)
    return cert_pem, key_pem, path


# --------------------------------------------------------------------------- state


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


@dataclass
class _Experiment:
    workload: pb2.Workload
    jobs: list[pb2.Job]
    state: str
    created: float


@dataclass
class _Dataset:
    dataset: pb2.Dataset
    files: dict[str, bytes]
    bad_digest: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)  # path -> HTTP status of a GET


@dataclass
class CreatedExperiment:
    """What ``experiment.create`` sent: the name, workspace and the JSON spec."""

    id: str
    name: str | None
    workspace_id: str
    workspace: str
    spec: dict


class FakeBeaker:
    """The service's state plus helpers for tests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.latency = 0.0
        self.calls: Counter[str] = Counter()
        self.http_port = 0
        self.grpc_port = 0
        self.config_path: Path | None = None
        self.reset()

    # ---- setup helpers

    def reset(self) -> None:
        with self._lock:
            self.latency = 0.0
            self.calls = Counter()
            self.in_flight = 0
            self.peak_in_flight = 0
            self.workspaces: dict[str, pb2.Workspace] = {}  # id -> workspace
            self.workspace_names: dict[str, str] = {}  # "org/name" -> id
            self.experiments: dict[str, _Experiment] = {}  # experiment id -> record
            self.datasets: dict[str, _Dataset] = {}
            self.created: list[CreatedExperiment] = []
            self.page_size_cap = 50
            self._cursors: dict[str, tuple[list, int]] = {}

    def _new_id(self, kind: str) -> str:
        return f"01{kind.upper()}{next(self._ids):08d}"

    def add_workspace(self, full_name: str) -> str:
        """Add ``org/name``; returns its id (adding it twice returns the same id)."""
        if "/" not in full_name:
            raise ValueError("workspace name must be 'org/name'")
        with self._lock:
            if full_name in self.workspace_names:
                return self.workspace_names[full_name]
            wid = self._new_id("ws")
            org, _ = full_name.split("/", 1)
            ws = pb2.Workspace(id=wid, name=full_name, created=_ts(time.time()))
            ws.owner_org.id = _ORG_ID if org == DEFAULT_ORG else f"ORG-{org}"
            ws.owner_org.name = org
            self.workspaces[wid] = ws
            self.workspace_names[full_name] = wid
            return wid

    def add_experiment(
        self,
        workspace: str,
        name: str,
        *,
        state: str = "finalized",
        files: dict[str, bytes | str] | None = None,
        bad_digest: tuple[str, ...] = (),
        file_errors: dict[str, int] | None = None,
        created: float | None = None,
        description: str = "",
    ) -> str:
        """Add an experiment (one task, one job) to a workspace (name or id).

        ``state``: finalized (succeeded, exit 0), failed (finalized, exit 1), canceled
        (finalized), running or queued (not finalized). ``files`` become the job's result
        dataset (finalized and failed jobs only). ``bad_digest`` lists files whose listed
        sha256 is wrong; ``file_errors`` maps files to the HTTP status (e.g. 403) that every
        download of them gets. Returns the experiment (= workload) id."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        with self._lock:
            wid = self.workspace_names.get(workspace, workspace)
            if wid not in self.workspaces:
                raise KeyError(f"unknown workspace {workspace!r}")
            now = time.time() if created is None else created
            exp_id = self._new_id("ex")
            task_id = self._new_id("tk")
            job_id = self._new_id("jb")
            status = {
                "finalized": pb2.STATUS_SUCCEEDED,
                "failed": pb2.STATUS_FAILED,
                "canceled": pb2.STATUS_CANCELED,
                "running": pb2.STATUS_RUNNING,
                "queued": pb2.STATUS_QUEUED,
            }[state]
            job = pb2.Job(id=job_id, task_id=task_id, workspace_id=wid, workload_id=exp_id)
            job.name = name
            job.status.status = status
            job.status.created.CopyFrom(_ts(now))
            if state != "queued":
                job.status.started.CopyFrom(_ts(now + 1))
            if state in ("finalized", "failed", "canceled"):
                job.status.exited.CopyFrom(_ts(now + 2))
                job.status.finalized.CopyFrom(_ts(now + 3))
                job.status.exit_code = {"finalized": 0, "failed": 1, "canceled": 137}[state]
                if state == "canceled":
                    job.status.canceled.CopyFrom(_ts(now + 2))
            if files is not None or state in ("finalized", "failed"):
                ds_id = self._new_id("ds")
                ds = pb2.Dataset(
                    id=ds_id,
                    name=f"{name}-result",
                    workspace_id=wid,
                    created=_ts(now),
                    source_execution=job_id,
                )
                if state in ("finalized", "failed", "canceled"):
                    ds.committed.CopyFrom(_ts(now + 3))
                raw = {
                    k: (v.encode() if isinstance(v, str) else bytes(v))
                    for k, v in (files or {}).items()
                }
                self.datasets[ds_id] = _Dataset(ds, raw, set(bad_digest), dict(file_errors or {}))
                job.assignment_details.result_dataset_id = ds_id
            task = pb2.Task(id=task_id, experiment_id=exp_id, name="main", status=status)
            task.created.CopyFrom(_ts(now))
            wl = pb2.Workload(status=status)
            wl.experiment.id = exp_id
            wl.experiment.name = name
            wl.experiment.workspace_id = wid
            wl.experiment.description = description
            wl.experiment.created.CopyFrom(_ts(now))
            wl.experiment.tasks.append(task)
            self.experiments[exp_id] = _Experiment(wl, [job], state, now)
            return exp_id

    # ---- inspection helpers

    def created_experiments(self) -> list[CreatedExperiment]:
        with self._lock:
            return list(self.created)

    def experiment_names(self, workspace: str | None = None) -> list[str]:
        with self._lock:
            wid = self.workspace_names.get(workspace, workspace) if workspace else None
            return [
                e.workload.experiment.name
                for e in self.experiments.values()
                if wid is None or e.workload.experiment.workspace_id == wid
            ]

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """Environment for a client (also a subprocess) to reach this service."""
        return {
            "BEAKER_TOKEN": TOKEN,
            "BEAKER_ADDR": self.http_address,
            "BEAKER_CONFIG": str(self.config_path),
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"],
        }

    def client(self):
        """A real ``beaker.Beaker`` pointed at this service (no upgrade check)."""
        from beaker import Beaker
        from beaker.config import Config

        config = Config(
            user_token=TOKEN,
            agent_address=self.http_address,
            rpc_address=self.rpc_address,
            default_org=DEFAULT_ORG,
        )
        return Beaker(config, check_for_upgrades=False)

    # ---- internals used by the servers

    @contextlib.contextmanager
    def _call(self, name: str) -> Iterator[None]:
        """Count the call, track concurrent calls (:attr:`peak_in_flight`), add latency."""
        with self._lock:
            self.calls[name] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            latency = self.latency
        try:
            if latency:
                time.sleep(latency)
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def _create_from_http(
        self, workspace_id: str, name: str | None, spec: dict
    ) -> tuple[int, dict]:
        with self._lock:
            if workspace_id not in self.workspaces:
                return 404, {"message": f"workspace {workspace_id!r} not found"}
            if name is not None and any(
                e.workload.experiment.name == name
                and e.workload.experiment.workspace_id == workspace_id
                for e in self.experiments.values()
            ):
                return 409, {"message": f"experiment name {name!r} already in use"}
            if not isinstance(spec, dict) or not spec.get("tasks"):
                return 400, {"message": "spec must have at least one task"}
            now = time.time()
            exp_id = self._new_id("ex")
            wl = pb2.Workload(status=pb2.STATUS_SUBMITTED)
            wl.experiment.id = exp_id
            wl.experiment.name = name or ""
            wl.experiment.workspace_id = workspace_id
            wl.experiment.description = str(spec.get("description") or "")
            wl.experiment.created.CopyFrom(_ts(now))
            for i, t in enumerate(spec["tasks"]):
                task = pb2.Task(
                    id=self._new_id("tk"),
                    experiment_id=exp_id,
                    name=str(t.get("name") or f"task{i}"),
                    status=pb2.STATUS_SUBMITTED,
                )
                task.created.CopyFrom(_ts(now))
                wl.experiment.tasks.append(task)
            self.experiments[exp_id] = _Experiment(wl, [], "queued", now)
            self.created.append(
                CreatedExperiment(
                    exp_id, name, workspace_id, self.workspaces[workspace_id].name, spec
                )
            )
            return 200, {"id": exp_id}


# --------------------------------------------------------------------------- gRPC


def _authorized(context: grpc.ServicerContext) -> bool:
    md = dict(context.invocation_metadata())
    return md.get("authorization") == f"bearer {TOKEN}"


def _rpc(fn):
    name = fn.__name__

    def wrapper(self, request, context):
        with self.state._call(name):
            if not _authorized(context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            return fn(self, request, context)

    wrapper.__name__ = name
    return wrapper


def _page(state: FakeBeaker, request, context, items: list, size: int, cap: int):
    """One page. ``next_page_token`` and ``options`` are a oneof in the request (as in the
    real service): a follow-up request carries only the token, so the token names the rest
    of the result list, kept here. Returns (page, next token)."""
    if request.WhichOneof("opts") == "next_page_token":
        with state._lock:
            cursor = state._cursors.pop(request.next_page_token, None)
        if cursor is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown or expired page token")
        items, size = cursor
    size = min(size or cap, cap)
    page, rest = items[:size], items[size:]
    token = ""
    if rest:
        with state._lock:
            token = f"page-{next(state._ids)}"
            state._cursors[token] = (rest, size)
    return page, token


def _continued(request) -> bool:
    return request.WhichOneof("opts") == "next_page_token"


class _Servicer(beaker_pb2_grpc.BeakerServicer):
    def __init__(self, state: FakeBeaker) -> None:
        self.state = state

    @_rpc
    def ResolveOrganizationName(self, request, context):
        if request.organization_name != DEFAULT_ORG:
            context.abort(grpc.StatusCode.NOT_FOUND, f"organization {request.organization_name}")
        return pb2.ResolveOrganizationNameResponse(organization_id=_ORG_ID)

    @_rpc
    def ResolveWorkspaceName(self, request, context):
        full = f"{request.owner_name}/{request.workspace_name}"
        with self.state._lock:
            wid = self.state.workspace_names.get(full)
        if wid is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workspace {full} not found")
        return pb2.ResolveWorkspaceNameResponse(workspace_id=wid)

    @_rpc
    def GetWorkspace(self, request, context):
        with self.state._lock:
            ws = self.state.workspaces.get(request.workspace_id)
        if ws is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workspace {request.workspace_id} not found")
        return pb2.GetWorkspaceResponse(workspace=ws)

    @_rpc
    def GetWorkload(self, request, context):
        with self.state._lock:
            exp = self.state.experiments.get(request.workload_id)
        if exp is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workload {request.workload_id} not found")
        return pb2.GetWorkloadResponse(workload=exp.workload)

    @_rpc
    def ListWorkloads(self, request, context):
        o = request.options
        cap = self.state.page_size_cap
        if _continued(request):
            page, nxt = _page(self.state, request, context, [], 0, cap)
            return pb2.ListWorkloadsResponse(workloads=page, next_page_token=nxt)
        if o.organization_id and o.organization_id != _ORG_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, f"organization {o.organization_id}")
        with self.state._lock:
            records = list(self.state.experiments.values())
        out = []
        for e in records:
            wl = e.workload
            if o.workspace_id and wl.experiment.workspace_id != o.workspace_id:
                continue
            sub = o.name_or_description_substring
            if sub and sub not in wl.experiment.name and sub not in wl.experiment.description:
                continue
            if o.HasField("job_finalized"):
                finalized = bool(e.jobs) and e.jobs[-1].status.HasField("finalized")
                if finalized != o.job_finalized:
                    continue
            if o.statuses and wl.status not in o.statuses:
                continue
            if o.workload_type == pb2.WORKLOAD_TYPE_ENVIRONMENT:
                continue
            out.append(e)
        out.sort(
            key=lambda e: (e.created, e.workload.experiment.id),
            reverse=o.sort_clause.sort_order == pb2.SORT_ORDER_DESCENDING,
        )
        workloads = [pb2.Workload.FromString(e.workload.SerializeToString()) for e in out]
        page, nxt = _page(self.state, request, context, workloads, o.page_size, cap)
        return pb2.ListWorkloadsResponse(workloads=page, next_page_token=nxt)

    @_rpc
    def ListJobs(self, request, context):
        o = request.options
        cap = self.state.page_size_cap
        if _continued(request):
            page, nxt = _page(self.state, request, context, [], 0, cap)
            return pb2.ListJobsResponse(jobs=page, next_page_token=nxt)
        if o.organization_id and o.organization_id != _ORG_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, f"organization {o.organization_id}")
        with self.state._lock:
            jobs = [j for e in self.state.experiments.values() for j in e.jobs]
        if o.task_id:
            jobs = [j for j in jobs if j.task_id == o.task_id]
        if o.environment_id:
            jobs = [j for j in jobs if j.environment_id == o.environment_id]
        if o.HasField("finalized"):
            jobs = [j for j in jobs if j.status.HasField("finalized") == o.finalized]
        jobs.sort(
            key=lambda j: (j.status.created.ToNanoseconds(), j.id),
            reverse=o.sort_clause.sort_order != pb2.SORT_ORDER_ASCENDING,
        )
        page, nxt = _page(self.state, request, context, jobs, o.page_size, cap)
        return pb2.ListJobsResponse(jobs=page, next_page_token=nxt)

    @_rpc
    def GetJob(self, request, context):
        with self.state._lock:
            for e in self.state.experiments.values():
                for j in e.jobs:
                    if j.id == request.job_id:
                        return pb2.GetJobResponse(job=j)
        context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")

    @_rpc
    def GetDataset(self, request, context):
        with self.state._lock:
            ds = self.state.datasets.get(request.dataset_id)
        if ds is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"dataset {request.dataset_id} not found")
        return pb2.GetDatasetResponse(dataset=ds.dataset)

    @_rpc
    def ListDatasetFiles(self, request, context):
        o = request.options
        cap = max(self.state.page_size_cap, 1000)
        if _continued(request):
            page, nxt = _page(self.state, request, context, [], 0, cap)
            return pb2.ListDatasetFilesResponse(dataset_files=page, next_page_token=nxt)
        with self.state._lock:
            ds = self.state.datasets.get(o.dataset_id)
        if ds is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"dataset {o.dataset_id} not found")
        files = []
        for path in sorted(ds.files):
            if o.prefix and not path.startswith(o.prefix):
                continue
            data = ds.files[path]
            digest = hashlib.sha256(data).digest()
            if path in ds.bad_digest:
                digest = hashlib.sha256(data + b"tampered").digest()
            f = pb2.DatasetFile(path=path, size=len(data), updated=ds.dataset.created)
            f.digest.algorithm = pb2.DatasetFile.ALGORITHM_TYPE_SHA256
            f.digest.value = digest
            files.append(f)
        page, nxt = _page(self.state, request, context, files, 0, cap)
        return pb2.ListDatasetFilesResponse(
            dataset_files=page,
            next_page_token=nxt,
            file_count=len(files),
            total_size=sum(f.size for f in files),
        )


# --------------------------------------------------------------------------- HTTP


def _http_handler(state: FakeBeaker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # silence the default stderr log
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj).encode())

        def _auth(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._json(401, {"message": "missing or wrong bearer token"})
                return False
            return True

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_POST(self):
            with state._call("HTTP POST experiments"):
                self._post()

        def do_GET(self):
            with state._call("HTTP GET dataset file"):
                self._get()

        def _post(self):
            body = self._body()
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.split("/")
            if not self._auth():
                return
            # /api/v3/workspaces/{id}/experiments
            if (
                len(parts) == 6
                and parts[1:4] == ["api", "v3", "workspaces"]
                and parts[5] == "experiments"
            ):
                ws_id = urllib.parse.unquote(parts[4])
                query = urllib.parse.parse_qs(url.query)
                name = query.get("name", [None])[0]
                try:
                    spec = json.loads(body or b"null")
                except json.JSONDecodeError:
                    self._json(400, {"message": "spec is not JSON"})
                    return
                code, obj = state._create_from_http(ws_id, name, spec)
                self._json(code, obj)
                return
            self._json(404, {"message": f"no route POST {url.path}"})

        def _get(self):
            url = urllib.parse.urlsplit(self.path)
            prefix = "/api/v3/datasets/"
            if not self._auth():
                return
            if url.path.startswith(prefix) and "/files/" in url.path:
                ds_id, _, quoted = url.path[len(prefix) :].partition("/files/")
                path = urllib.parse.unquote(quoted)
                with state._lock:
                    ds = state.datasets.get(urllib.parse.unquote(ds_id))
                if ds is None or path not in ds.files:
                    self._json(404, {"message": f"file {path!r} not found"})
                    return
                if path in ds.errors:
                    self._json(ds.errors[path], {"message": f"file {path!r}: refused"})
                    return
                data = ds.files[path]
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    data = data[int(a) : (int(b) + 1 if b else None)]
                    self._send(206, data, "application/octet-stream")
                    return
                self._send(200, data, "application/octet-stream")
                return
            self._json(404, {"message": f"no route GET {url.path}"})

    return Handler


# --------------------------------------------------------------------------- servers


class FakeBeakerServer:
    """Starts the gRPC and HTTP servers for one :class:`FakeBeaker` state."""

    def __init__(self, state: FakeBeaker | None = None, max_workers: int = 128) -> None:
        self.state = state or FakeBeaker()
        self.max_workers = max_workers
        self._dir = Path(tempfile.mkdtemp(prefix="fake-beaker-"))
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None

    def start(self) -> FakeBeaker:
        cert, key = _process_certificate(self._dir)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers),
            options=[("grpc.so_reuseport", 0)],
        )
        beaker_pb2_grpc.add_BeakerServicer_to_server(_Servicer(self.state), self._grpc)
        creds = grpc.ssl_server_credentials([(key, cert)])
        self.state.grpc_port = self._grpc.add_secure_port("127.0.0.1:0", creds)
        self._grpc.start()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self.state))
        self._http.daemon_threads = True
        self._http.request_queue_size = 256
        self.state.http_port = self._http.server_address[1]
        threading.Thread(
            target=self._http.serve_forever, name="fake-beaker-http", daemon=True
        ).start()
        cfg = self._dir / "beaker-config.yml"
        cfg.write_text(
            f"user_token: {TOKEN}\n"
            f"agent_address: {self.state.http_address}\n"
            f"rpc_address: {self.state.rpc_address}\n"
            f"default_org: {DEFAULT_ORG}\n"
        )
        self.state.config_path = cfg
        return self.state

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


_CERT: tuple[bytes, bytes] | None = None
_CERT_LOCK = threading.Lock()


def _process_certificate(directory: Path) -> tuple[bytes, bytes]:
    """One certificate per process; GRPC_DEFAULT_SSL_ROOTS_FILE_PATH set to it once."""
    global _CERT
    with _CERT_LOCK:
        if _CERT is None:
            cert, key, path = _make_certificate(directory)
            os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(path)
            _CERT = (cert, key)
        return _CERT


_SERVER: FakeBeakerServer | None = None


def shared_server() -> FakeBeakerServer:
    """The process-wide server (started on first use, stopped at exit)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = FakeBeakerServer()
        _SERVER.start()
        atexit.register(_SERVER.stop)
    return _SERVER


TEST_TIMEOUT_S = 120


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail the running test with TimeoutError after ``seconds`` (beaker-py retries an
    unreachable service forever). SIGALRM on the main thread; a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _expired(signum, frame):
        raise TimeoutError(f"fake Beaker test exceeded {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fake_beaker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBeaker]:
    """A clean fake Beaker for this test; the environment points beaker-py at it
    (BEAKER_TOKEN, BEAKER_ADDR, BEAKER_CONFIG). The test fails after TEST_TIMEOUT_S."""
    server = shared_server()
    state = server.state
    state.reset()
    for k, v in state.env().items():
        monkeypatch.setenv(k, v)
    with deadline(TEST_TIMEOUT_S):
        yield state
    state.reset()
