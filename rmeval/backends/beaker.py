"""The Beaker backend (beaker-py): one experiment per run, and every Beaker call rmeval makes.

A plan's spec has one task per run, named by the run. Launching turns every task into its
own experiment (the spec's version, description, budget and retry, plus that one task),
named :func:`rmeval.naming.eval_experiment_name` of the task name, in the workspace given.
A name that already exists means the run was launched before: it is reported as
``exists``, not as an error. The converted model stays the task's result (``/output``);
nothing is re-uploaded as a dataset. ``dry_run`` only prints what would be created and
does not contact Beaker.

Collect reads the results back (:func:`result_files`): the workspace's experiments, and for
each finalized, successful one a file of its result dataset, fetched concurrently. An
experiment that cannot give it (not finished, failed, no such file, a checksum mismatch,
an error answer such as permission denied) is one :class:`~rmeval.table.Issue`; only an
unreachable service (the deadline below) or an unknown workspace stops the whole fetch.

Retries: beaker-py's own (each Get/List/Resolve call and each file download is retried on
server errors with exponential backoff, up to ``Beaker.MAX_RETRIES``), bounded by the
deadline; rmeval adds no retry loop of its own.

The client comes from ``Beaker.from_env(check_for_upgrades=False)``: ``BEAKER_TOKEN`` and
``BEAKER_CONFIG`` / ``BEAKER_ADDR`` as beaker-py reads them. The token is never logged.

Deadline: beaker-py retries an unreachable service forever (gRPC UNAVAILABLE, e.g. a DNS
error, every 2 s). Every Beaker call made through :func:`client` (collect, plan, launch)
therefore gets :data:`DEFAULT_TIMEOUT` seconds to be answered, its retries included
(``--beaker-timeout`` or ``$RMEVAL_BEAKER_TIMEOUT``; ``-v`` logs the value). Then one
:class:`~rmeval.errors.BackendError` line names the address and the last cause. Any answer,
an error status included, counts as an answer; each thread keeps its own clock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rmeval import naming
from rmeval.backends.local import LaunchSummary, Outcome
from rmeval.errors import BackendError, RmevalError, UsageError
from rmeval.procutil import bounded_map
from rmeval.table import Issue

log = logging.getLogger(__name__)

_SPEC_LEVEL = ("version", "description", "budget", "groups", "retry")

SCHEME = "beaker://"  # a source or result: beaker://ORG/WORKSPACE[/<experiment id>/<file>]
DEFAULT_TIMEOUT = 180.0
TIMEOUT_ENV = "RMEVAL_BEAKER_TIMEOUT"
TIMEOUT_OPTION = "--beaker-timeout"


def resolve_timeout(timeout: float | None = None) -> float:
    """The deadline in seconds: ``timeout`` if given, else ``$RMEVAL_BEAKER_TIMEOUT``, else
    :data:`DEFAULT_TIMEOUT`; a usage error unless it is a positive number."""
    where = TIMEOUT_OPTION
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT
        where = TIMEOUT_ENV
        try:
            timeout = float(raw)
        except ValueError:
            raise UsageError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"{where}: expected a positive number of seconds, got {timeout}")
    return float(timeout)


class _Deadline:
    """Per thread: since when the current call has gone unanswered, where and why."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._local = threading.local()

    def remaining(self) -> float:
        since = getattr(self._local, "since", None)
        return self.seconds if since is None else self.seconds - (time.monotonic() - since)

    def begin(self) -> tuple[float, float]:
        """Before an attempt: ``(now, seconds left)``; raises once none are left."""
        self.raise_if_expired()
        return time.monotonic(), self.remaining()

    def failed(self, started: float, address: str, cause: str) -> None:
        """An attempt begun at ``started`` got no answer; raises if that used up the time."""
        if getattr(self._local, "since", None) is None:
            self._local.since = started
        self._local.address, self._local.cause = address, cause
        self.raise_if_expired()

    def answered(self) -> None:
        self._local.since = None

    def raise_if_expired(self) -> None:
        if self.remaining() > 0:
            return
        self._local.since = None  # the next call (e.g. in another command) starts afresh
        raise BackendError(
            f"Beaker at {self._local.address}: no answer within {self.seconds:g} s "
            f"({self._local.cause}); check the address and the network, or give it longer "
            f"with {TIMEOUT_OPTION} or {TIMEOUT_ENV}"
        )


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _http_cause(exc: BaseException) -> str:
    """The useful part of a requests error: ``[Errno 111] Connection refused`` rather than
    the whole urllib3 retry story, when it says so."""
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return m.group(0) if m else f"{type(exc).__name__}: {_one_line(exc)}"


@functools.lru_cache(maxsize=1)
def _client_class() -> Any:
    """beaker-py's ``Beaker`` with the deadline on its gRPC channel and HTTP sessions."""
    beaker = _import_beaker()
    base: Any = beaker.Beaker
    import grpc
    import requests
    from beaker import beaker_pb2_grpc
    from requests.adapters import HTTPAdapter

    no_answer = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    class TimedCall:
        """A unary-unary method of the stub: each attempt bounded by the time left. Other
        attributes are the real method's (beaker-py reads its name from them)."""

        def __init__(self, inner: Any, deadline: _Deadline, address: str) -> None:
            self._inner, self._deadline, self._address = inner, deadline, address

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            started, left = self._deadline.begin()
            timeout = left if timeout is None else min(timeout, left)
            try:
                response = self._inner(request, timeout=timeout, **kwargs)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code in no_answer:
                    cause = f"{code.name}: {_one_line(exc.details())}"
                    self._deadline.failed(started, self._address, cause)
                else:
                    self._deadline.answered()
                raise
            self._deadline.answered()
            return response

    class TimedChannel:
        """The channel beaker-py's stub is built on, handing out :class:`TimedCall`s."""

        def __init__(self, channel: Any, deadline: _Deadline, address: str) -> None:
            self._channel, self._deadline, self._address = channel, deadline, address

        def __getattr__(self, name: str) -> Any:
            return getattr(self._channel, name)

        def unary_unary(self, *args: Any, **kwargs: Any) -> TimedCall:
            inner = self._channel.unary_unary(*args, **kwargs)
            return TimedCall(inner, self._deadline, self._address)

    class DeadlineAdapter(HTTPAdapter):
        def __init__(self, deadline: _Deadline, **kwargs: Any) -> None:
            self.deadline = deadline
            super().__init__(**kwargs)

        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            started, left = self.deadline.begin()
            if isinstance(timeout, tuple):
                timeout = tuple(left if t is None else min(t, left) for t in timeout)
            else:
                timeout = left if timeout is None else min(timeout, left)
            try:
                response = super().send(
                    request,
                    stream=stream,
                    timeout=timeout,
                    verify=verify,
                    cert=cert,
                    proxies=proxies,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                address = re.sub(r"^(\w+://[^/]+).*$", r"\1", request.url or "")
                self.deadline.failed(started, address, _http_cause(exc))
                raise
            self.deadline.answered()
            return response

    class DeadlineBeaker(base):
        deadline: _Deadline

        @property
        def service(self):
            if self._service is None:
                super().service  # noqa: B018 - beaker-py opens its channel; wrap it below
                timed = TimedChannel(self._channel, self.deadline, self.config.rpc_address)
                self._service = beaker_pb2_grpc.BeakerStub(timed)
            return self._service

        @property
        def BACKOFF_MAX(self) -> float:  # a retry never sleeps past the deadline
            return max(0.0, min(beaker.Beaker.BACKOFF_MAX, self.deadline.remaining()))

        def _init_http_session(self):
            session = super()._init_http_session()
            https = session.get_adapter("https://")
            session.mount(
                "https://",
                DeadlineAdapter(
                    self.deadline, max_retries=https.max_retries, pool_maxsize=self.POOL_MAXSIZE
                ),
            )
            session.mount("http://", DeadlineAdapter(self.deadline))
            return session

    return DeadlineBeaker


def _import_beaker():
    try:
        import beaker
    except ImportError as exc:  # pragma: no cover - beaker-py is an optional extra
        raise BackendError(
            "beaker-py is not installed: install rmeval[beaker] to use --backend beaker"
        ) from exc
    return beaker


@contextlib.contextmanager
def client(workspace: str | None = None, timeout: float | None = None) -> Iterator[Any]:
    """A beaker-py client from the environment (never checks for upgrades) whose calls
    have ``timeout`` seconds each to be answered (see :func:`resolve_timeout`). Transport
    errors that escape beaker-py become one BackendError line naming the address."""
    seconds = resolve_timeout(timeout)
    _import_beaker()
    import grpc
    import requests
    from beaker.exceptions import BeakerConfigurationError

    overrides = {"default_workspace": workspace} if workspace else {}
    try:
        b = _client_class().from_env(check_for_upgrades=False, **overrides)
    except BeakerConfigurationError as exc:
        raise BackendError(
            f"Beaker is not configured ({exc}); set BEAKER_TOKEN (and BEAKER_CONFIG if needed)"
        ) from exc
    except (TypeError, ValueError, OSError) as exc:  # e.g. a config file without user_token
        where = os.environ.get("BEAKER_CONFIG") or "the Beaker config file"
        raise BackendError(f"{where}: unusable Beaker configuration: {_one_line(exc)}") from exc
    b.deadline = _Deadline(seconds)
    log.debug(
        "Beaker: %s (gRPC %s); each call gets %g s to be answered, retries included (%s, %s)",
        b.config.agent_address,
        b.config.rpc_address,
        seconds,
        TIMEOUT_OPTION,
        TIMEOUT_ENV,
    )
    try:
        yield b
    except requests.RequestException as exc:
        url = exc.request.url if exc.request is not None else b.config.agent_address
        address = re.sub(r"^(\w+://[^/]+).*$", r"\1", str(url or ""))
        raise BackendError(f"Beaker at {address}: {_http_cause(exc)}") from exc
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        cause = f"{code.name}: {_one_line(exc.details())}" if code else _one_line(exc)
        raise BackendError(f"Beaker at {b.config.rpc_address}: {cause}") from exc
    finally:
        with contextlib.suppress(Exception):
            b.close()


def get_workspace(
    b: Any,
    workspace: str,
    *,
    error: type[RmevalError] = BackendError,
    expected: str = "ORG/NAME; check --workspace",
):
    """The workspace, or one ``error`` line naming it (``expected``: the form to use)."""
    from beaker.exceptions import BeakerError, BeakerWorkspaceNotFound

    try:
        return b.workspace.get(workspace)
    except BeakerWorkspaceNotFound as exc:
        raise error(f"Beaker workspace {workspace!r} not found (expected {expected})") from exc
    except BeakerError as exc:
        raise error(f"Beaker workspace {workspace!r}: {type(exc).__name__}: {exc}") from exc


def existing_experiments(
    workspace: str, prefix: str | None = None, *, timeout: float | None = None
) -> set[str]:
    """Names of the experiments in ``workspace`` (those containing ``prefix`` if given; the
    caller still compares names exactly). ``timeout``: see :func:`client`."""
    from beaker.exceptions import BeakerError

    with client(workspace, timeout=timeout) as b:
        ws = get_workspace(b, workspace)
        try:
            return {
                w.experiment.name
                for w in b.workload.list(workspace=ws, name_or_description=prefix or None)
                if w.experiment.name
            }
        except BeakerError as exc:
            raise BackendError(f"cannot list experiments in {workspace!r}: {exc}") from exc


def experiment_states(
    workspace: str, prefix: str | None = None, *, timeout: float | None = None
) -> dict[str, str]:
    """``{experiment name: workload status}`` (e.g. ``running``, ``succeeded``) of the
    experiments in ``workspace`` whose names contain ``prefix``: one listing."""
    from beaker.exceptions import BeakerError

    with client(workspace, timeout=timeout) as b:
        ws = get_workspace(b, workspace)
        try:
            out = {}
            for w in b.workload.list(workspace=ws, name_or_description=prefix or None):
                if w.experiment.name:
                    out[w.experiment.name] = _status_name(w)
            return out
        except BeakerError as exc:
            raise BackendError(f"cannot list experiments in {workspace!r}: {exc}") from None


def _status_name(workload: Any) -> str:
    field = type(workload).DESCRIPTOR.fields_by_name["status"]
    value = field.enum_type.values_by_number.get(workload.status)
    name = value.name if value is not None else str(workload.status)
    return name.lower().removeprefix("status_").replace("_", " ")


def experiment_specs(
    spec: Mapping[str, Any], experiment_prefix: str = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(run, experiment name, one-task spec)`` for every task of a validated spec."""
    head = {k: spec[k] for k in _SPEC_LEVEL if spec.get(k) is not None}
    out = []
    names: set[str] = set()
    for i, task in enumerate(spec.get("tasks") or []):
        run = task.get("name")
        if not run:
            raise BackendError(f"tasks[{i}]: a task needs a name (the run) to name its experiment")
        name = naming.eval_experiment_name(run, experiment_prefix)
        if name in names:
            raise BackendError(f"tasks[{i}]: experiment name {name!r} would be used twice")
        names.add(name)
        out.append((run, name, {**head, "tasks": [dict(task)]}))
    return out


def launch_beaker(
    spec: Mapping[str, Any],
    *,
    workspace: str | None,
    experiment_prefix: str = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    dry_run: bool = False,
    timeout: float | None = None,
) -> LaunchSummary:
    """Create one experiment per task of ``spec`` in ``workspace`` (``timeout``: see
    :func:`client`)."""
    from rmeval import specs

    items = experiment_specs(spec, experiment_prefix)
    if dry_run:
        where = workspace or "(workspace not given)"
        return LaunchSummary(
            "beaker",
            [
                Outcome(run, "planned", f"would create experiment {name} in {where}")
                for run, name, _ in items
            ],
        )
    if not workspace:
        raise BackendError("--workspace ORG/NAME is required with --backend beaker")
    _import_beaker()
    from beaker.exceptions import BeakerError, BeakerExperimentConflict

    outcomes: list[Outcome] = []
    with client(workspace, timeout=timeout) as b:
        ws = get_workspace(b, workspace)
        for run, name, one in items:
            beaker_spec = specs.beaker_load(one, where=f"experiment {name}")
            try:
                workload = b.experiment.create(name=name, spec=beaker_spec, workspace=ws)
            except BeakerExperimentConflict:
                outcomes.append(Outcome(run, "exists", f"experiment {name} already exists"))
                continue
            except BeakerError as exc:
                outcomes.append(Outcome(run, "failed", f"{name}: {type(exc).__name__}: {exc}"))
                continue
            exp_id = workload.experiment.id
            outcomes.append(Outcome(run, "created", f"experiment {name} ({exp_id})"))
            log.info("created %s (%s)", name, exp_id)
    return LaunchSummary("beaker", outcomes)


# --------------------------------------------------------------------------- results


def source_uri(workspace: str) -> str:
    """``beaker://ORG/WORKSPACE``: the workspace as a collect source."""
    return f"{SCHEME}{workspace}"


@dataclass(frozen=True)
class ResultFile:
    """One file of a finalized, successful experiment's result dataset."""

    name: str  # the experiment's name (its id when it has none)
    uri: str  # beaker://ORG/WORKSPACE/<experiment id>/<file>
    created: float  # when the experiment was created, seconds since the epoch
    data: bytes


def result_files(
    workspace: str,
    filename: str,
    *,
    experiment_prefix: str | None = naming.DEFAULT_EVAL_EXPERIMENT_PREFIX,
    names: Collection[str] | None = None,
    max_concurrency: int,
    timeout: float | None = None,
    error: type[RmevalError] = BackendError,
) -> list[ResultFile | Issue]:
    """``filename`` from the result dataset of every finalized, successful experiment of
    ``workspace`` whose name contains ``experiment_prefix`` (and is one of ``names`` when
    given), ``max_concurrency`` experiments at a time (fed while the listing pages arrive);
    an :class:`~rmeval.table.Issue` for each other experiment, and for each one whose file
    Beaker cannot give. An unknown workspace or a failed listing is one ``error`` line.
    ``timeout``: see :func:`client`."""
    _import_beaker()
    import requests
    from beaker import beaker_pb2 as pb2
    from beaker.exceptions import BeakerChecksumFailedError, BeakerError, BeakerNotFoundError

    unfinished = {
        pb2.STATUS_SUBMITTED,
        pb2.STATUS_QUEUED,
        pb2.STATUS_INITIALIZING,
        pb2.STATUS_RUNNING,
        pb2.STATUS_STOPPING,
        pb2.STATUS_UPLOADING_RESULTS,
        pb2.STATUS_READY_TO_START,
    }
    # An error answer for one experiment (after beaker-py's retries) is that experiment's
    # issue; no answer at all (the deadline's BackendError) ends the whole fetch.
    answered_with_error = (BeakerError, requests.HTTPError, requests.exceptions.RetryError)

    with client(timeout=timeout) as b:
        ws = get_workspace(b, workspace, error=error, expected="beaker://ORG/WORKSPACE")
        # Resolve the organization once, not once per job listing.
        org = pb2.Organization(id=b.job.resolve_org_id())
        b.service  # noqa: B018 - open the gRPC channel before the threads share it
        base = source_uri(workspace)

        def listing() -> Iterator[Any]:
            try:
                for wl in b.workload.list(workspace=ws, name_or_description=experiment_prefix):
                    if not wl.HasField("experiment"):
                        continue
                    name = wl.experiment.name
                    if experiment_prefix and experiment_prefix not in (name or ""):
                        continue  # matched on the description only
                    if names is not None and name not in names:
                        continue
                    yield wl
            except BeakerError as exc:
                raise error(
                    f"cannot list experiments in {workspace!r}: {type(exc).__name__}: {exc}"
                ) from exc

        def status(wl: Any) -> str:
            return pb2.WorkloadStatus.Name(wl.status).removeprefix("STATUS_").lower()

        def fetch(wl: Any) -> ResultFile | Issue:
            name = wl.experiment.name or wl.experiment.id
            uri = f"{base}/{wl.experiment.id}"
            if wl.status in unfinished:
                return Issue("skipped_unfinished", name, f"status {status(wl)}", file=uri)
            if wl.status in (pb2.STATUS_FAILED, pb2.STATUS_CANCELED):
                return Issue("skipped_failed", name, f"status {status(wl)}", file=uri)
            if not wl.experiment.tasks:
                return Issue("missing_metrics", name, "experiment has no tasks", file=uri)
            try:
                jobs = list(
                    b.job.list(org=org, task=wl.experiment.tasks[0], sort_field="created", limit=1)
                )
                if not jobs:
                    return Issue("skipped_unfinished", name, "no job yet", file=uri)
                job = jobs[0]
                if not job.status.HasField("finalized"):
                    return Issue("skipped_unfinished", name, "latest job not finalized", file=uri)
                if job.status.exit_code != 0 or job.status.HasField("canceled"):
                    return Issue(
                        "skipped_failed",
                        name,
                        f"latest job exit code {job.status.exit_code}",
                        file=uri,
                    )
                ds_id = job.assignment_details.result_dataset_id
                if not ds_id:
                    return Issue("missing_metrics", name, "job has no result dataset", file=uri)
                # stream_file needs only the dataset's id: no GetDataset round trip.
                data = b"".join(b.dataset.stream_file(pb2.Dataset(id=ds_id), filename))
            except FileNotFoundError:
                return Issue(
                    "missing_metrics", name, f"no {filename} in the result dataset", file=uri
                )
            except BeakerChecksumFailedError as exc:
                return Issue("malformed_metrics", name, str(exc), file=uri)
            except BeakerNotFoundError:
                return Issue("missing_metrics", name, "result dataset not found", file=uri)
            except answered_with_error as exc:
                return Issue(
                    "fetch_failed",
                    name,
                    f"cannot read its results: {type(exc).__name__}: {_one_line(exc)}",
                    file=uri,
                )
            created = wl.experiment.created.ToNanoseconds() / 1e9
            return ResultFile(name, f"{uri}/{filename}", created, data)

        # Each worker thread keeps one HTTP session (beaker-py's sessions are per thread and
        # otherwise opened and closed around every request).
        return list(
            bounded_map(fetch, listing(), max_concurrency, desc="beaker", initializer=b.__enter__)
        )
