"""Run state in the store: who runs a run now (``claim.json``) and how it last failed
(``failed.json``); run-one writes both, plan and status read them.

metrics.json stays the one "done" marker (:mod:`rmeval.store`). The state files:

- **claim.json**: created by run-one before any work with a no-clobber write (gs://:
  ``if_generation_match=0``; local: create under an advisory lock, see
  :func:`rmeval.storage.replace_if`), so of several runners racing for one run exactly one
  wins; the others exit 0 with one line, "claimed by …". It names the host, the backend's
  job (GitHub run/job, Beaker job, or the local pid), the GPUs, the start time and an
  expiry. A heartbeat thread renews it every ``ttl/3`` with a generation precondition, and
  run-one removes it when the attempt ends (success or failure).
- **Expiry and clock skew.** A claim is live while ``now - updated <= ttl + margin``, where
  ``updated`` is the *store's* time of its last write (the GCS object's ``updated``, set by
  Google's clock; a local file's mtime, set by the file system's), never the holder's
  clock; only the reader's clock enters, and :data:`SKEW_MARGIN_S` covers it. The
  ``expires`` field in the file is the holder's own estimate, shown by status, never used
  to decide. A claim made on this host (and pid namespace) whose process is gone is
  expired at once (a ``kill -9``). An expired claim is taken over with the generation
  precondition of the version that was read, so of two takers only one wins.
- **failed.json**: written by run-one when a claimed attempt fails (bad input fails
  run-one's preflight before it claims anything, and is written nowhere): error type and line, the stage
  (``convert``, ``evaluate``, ``publish``), the attempt number (one more than
  the previous failed.json's), the time, the job; SIGTERM / preemption / Ctrl-C are kind
  ``interrupted``. Plan retries a failed run until it has failed ``max_attempts`` times,
  then lists it as *given up* until ``--retry-failed``.

A corrupt claim.json or failed.json is reported (one warning naming it) and treated as
absent, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rmeval import storage
from rmeval import store as store_layout
from rmeval.errors import StoreError
from rmeval.procutil import is_stale, owned_name

log = logging.getLogger(__name__)

TTL_ENV = "RMEVAL_CLAIM_TTL"  # seconds a claim lives without a heartbeat
SKEW_ENV = "RMEVAL_CLAIM_SKEW"  # seconds added for the reader's clock against the store's
DEFAULT_TTL_S = 600.0
SKEW_MARGIN_S = 120.0
ATTEMPT_PREFIX = "run-one-"
STAGES = ("convert", "evaluate", "publish")
ERROR, INTERRUPTED = "error", "interrupted"
DEFAULT_MAX_ATTEMPTS = 3


def ttl_s() -> float:
    return _env_seconds(TTL_ENV, DEFAULT_TTL_S)


def skew_s() -> float:
    return _env_seconds(SKEW_ENV, SKEW_MARGIN_S)


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise StoreError(f"${name}={text!r}: expected a number of seconds >= 0")
    return value


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _epoch(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else time.time()


# --------------------------------------------------------------------------- who runs it


def job_of(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The backend job this process runs in: GitHub Actions (run id, attempt, job), Beaker
    (job, experiment), else the local pid."""
    env = os.environ if env is None else env
    if env.get("GITHUB_RUN_ID"):
        repo, server = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_SERVER_URL")
        url = f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}" if repo and server else None
        return {
            "backend": "github",
            "id": f"run {env['GITHUB_RUN_ID']}/{env.get('GITHUB_RUN_ATTEMPT', '1')} "
            f"job {env.get('GITHUB_JOB', '?')}",
            "url": url,
        }
    if env.get("BEAKER_JOB_ID"):
        return {
            "backend": "beaker",
            "id": f"job {env['BEAKER_JOB_ID']}",
            "experiment": env.get("BEAKER_EXPERIMENT_ID"),
        }
    return {"backend": "local", "id": f"pid {os.getpid()}"}


@dataclass(frozen=True)
class ClaimInfo:
    """A claim.json as read, with the store's time of its last write."""

    uri: str
    attempt: str
    host: str
    job: dict[str, Any]
    started: str
    expires: str
    ttl_s: float
    gpus: str | None
    stage: str | None
    number: int
    updated: float  # the store's timestamp, seconds since the epoch
    version: str = ""

    def live(self, now: float | None = None) -> bool:
        if is_stale(self.attempt, ATTEMPT_PREFIX):  # this host's, and its process is gone
            return False
        now = time.time() if now is None else now
        return now - self.updated <= self.ttl_s + skew_s()

    def who(self) -> str:
        gpus = f", GPUs {self.gpus}" if self.gpus else ""
        return f"{self.host} ({self.job.get('id', '?')}{gpus}) since {self.started}"


def _parse_claim(uri: str, got: storage.Versioned) -> ClaimInfo | None:
    try:
        raw = json.loads(got.data)
        return ClaimInfo(
            uri=uri,
            attempt=str(raw["attempt"]),
            host=str(raw["host"]),
            job=dict(raw.get("job") or {}),
            started=str(raw["started"]),
            expires=str(raw.get("expires", "?")),
            ttl_s=float(raw["ttl_s"]),
            gpus=raw.get("gpus"),
            stage=raw.get("stage"),
            number=int(raw.get("number", 1)),
            updated=_epoch(got.updated),
            version=got.version,
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable claim (%s); treated as absent", uri, _why(exc))
        return None


def _why(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]


def read_claim(store: str, run: str) -> ClaimInfo | None:
    """The run's claim, None when there is none or it is corrupt (reported)."""
    uri = store_layout.run_file(store, run, store_layout.CLAIM_FILE)
    got = storage.read_versioned(uri)
    return _parse_claim(uri, got) if got is not None else None


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class FailureInfo:
    uri: str
    kind: str  # error | interrupted
    error_type: str
    error: str
    stage: str
    attempts: int
    time: str
    job: dict[str, Any] = field(default_factory=dict)
    notified: bool = False
    raw: dict[str, Any] = field(default_factory=dict)
    version: str = ""


def parse_failure(uri: str, data: bytes, version: str = "") -> FailureInfo | None:
    try:
        raw = json.loads(data)
        return FailureInfo(
            uri=uri,
            kind=str(raw.get("kind", ERROR)),
            error_type=str(raw["error_type"]),
            error=str(raw["error"]),
            stage=str(raw["stage"]),
            attempts=int(raw["attempts"]),
            time=str(raw["time"]),
            job=dict(raw.get("job") or {}),
            notified=bool(raw.get("notified")),
            raw=raw,
            version=version,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable failure record (%s); treated as absent", uri, _why(exc))
        return None


def read_failure(store: str, run: str) -> FailureInfo | None:
    uri = store_layout.run_file(store, run, store_layout.FAILED_FILE)
    got = storage.read_versioned(uri)
    return parse_failure(uri, got.data, got.version) if got is not None else None


def mark_notified(failure: FailureInfo) -> bool:
    """Record in failed.json that its give-up was announced (only if it is unchanged)."""
    body = dict(failure.raw, notified=_iso(time.time()))
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    return storage.replace_if(failure.uri, data, failure.version) is not None


# --------------------------------------------------------------------------- holding a claim


class Claim:
    """This process's claim on one run (see the module doc)."""

    def __init__(self, store: str, run: str, *, checkpoint: str, gpus: str | None) -> None:
        self.store, self.run, self.checkpoint, self.gpus = store, run, checkpoint, gpus
        self.uri = store_layout.run_file(store, run, store_layout.CLAIM_FILE)
        self.attempt = owned_name(ATTEMPT_PREFIX)
        self.ttl = ttl_s()
        self.started = time.time()
        self.job = job_of()
        self.stage = STAGES[0]
        self.number = 1
        self.version: str | None = None
        self.lost_to: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def body(self) -> bytes:
        now = time.time()
        return (
            json.dumps(
                {
                    "attempt": self.attempt,
                    "number": self.number,
                    "run": self.run,
                    "checkpoint": self.checkpoint,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "job": self.job,
                    "gpus": self.gpus,
                    "stage": self.stage,
                    "started": _iso(self.started),
                    "renewed": _iso(now),
                    "ttl_s": self.ttl,
                    "expires": _iso(now + self.ttl),
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        ).encode()

    def acquire(self) -> ClaimInfo | None:
        """Take the claim: create it, or take over an expired one. None when taken; else
        the live claim of whoever holds it."""
        previous = read_failure(self.store, self.run)
        self.number = previous.attempts + 1 if previous else 1
        for _ in range(5):  # a claim released or replaced between reading and writing
            got = storage.read_versioned(self.uri)
            held = _parse_claim(self.uri, got) if got is not None else None
            if held is not None and held.live():
                return held
            if got is not None:
                log.info(
                    "%s: taking over %s",
                    self.run,
                    f"the expired claim of {held.who()}" if held else "an unreadable claim",
                )
            version = storage.replace_if(self.uri, self.body(), got.version if got else None)
            if version is not None:
                self.version = version
                return None
        got = storage.read_versioned(self.uri)
        held = _parse_claim(self.uri, got) if got is not None else None
        if held is None:
            raise StoreError(f"{self.uri}: could not claim the run (it keeps changing); retry")
        return held

    def renew(self, stage: str | None = None) -> bool:
        """Rewrite the claim (new expiry, stage) if it is still ours; False once lost."""
        with self._lock:
            if self.lost_to is not None or self.version is None:
                return False
            if stage is not None:
                self.stage = stage
            try:
                version = storage.replace_if(self.uri, self.body(), self.version)
            except StoreError as exc:  # a network blip: the next beat tries again
                log.warning("%s: could not renew the claim: %s", self.run, exc)
                return True
            if version is None:
                now = read_claim(self.store, self.run)
                self.lost_to = now.who() if now else "nobody (removed)"
                log.warning("%s: the claim was taken over by %s", self.run, self.lost_to)
                return False
            self.version = version
            return True

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[Claim]:
        def beat() -> None:
            while not self._stop.wait(max(self.ttl / 3, 0.05)):
                if not self.renew():
                    return

        self._thread = threading.Thread(target=beat, name=f"claim-{self.run}", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def release(self) -> None:
        with self._lock:
            if self.version is not None and self.lost_to is None:
                try:
                    storage.delete_if(self.uri, self.version)
                except StoreError as exc:
                    log.warning("%s: could not release the claim: %s", self.run, exc)
            self.version = None

    def record_failure(self, exc: BaseException) -> str:
        """Write failed.json for ``exc`` (the stage this attempt was in); its URI."""
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, SystemExit):
            line = f"stopped by a signal or exit (code {exc.code})"
        body = {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "kind": INTERRUPTED if interrupted else ERROR,
            "error_type": type(exc).__name__,
            "error": line[:500],
            "stage": self.stage,
            "attempts": self.number,
            "attempt": self.attempt,
            "time": _iso(time.time()),
            "host": socket.gethostname(),
            "job": self.job,
            "gpus": self.gpus,
        }
        uri = store_layout.run_file(self.store, self.run, store_layout.FAILED_FILE)
        data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        storage.write_bytes(uri, data, overwrite=True)
        return uri


@contextlib.contextmanager
def attempt(claim: Claim) -> Iterator[Claim]:
    """Run an attempt under ``claim``: heartbeat while it works, failed.json if it fails
    (any exception; SIGTERM as SystemExit is kind ``interrupted``), the claim released
    either way."""
    try:
        with claim.heartbeat():
            yield claim
    except BaseException as exc:
        try:
            uri = claim.record_failure(exc)
            log.info("%s: %s failed at %s; recorded in %s", claim.run, claim.attempt,
                     claim.stage, uri)  # fmt: skip
        except StoreError as err:
            log.warning("%s: could not record the failure: %s", claim.run, err)
        raise
    finally:
        claim.release()


# --------------------------------------------------------------------------- one listing


@dataclass(frozen=True)
class RunState:
    """What the store says about one run: ``done``, ``running``, ``failed``, ``given up``
    or ``planned`` (no state at all)."""

    name: str
    state: str
    overall: float | None = None
    claim: ClaimInfo | None = None
    failure: FailureInfo | None = None


DONE, RUNNING, FAILED, GIVEN_UP, PLANNED = "done", "running", "failed", "given up", "planned"
SUPERSEDED = "superseded"


def states(
    runs: Mapping[str, store_layout.StoredRun],
    *,
    benchmarks: Sequence[str] = (store_layout.V1,),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_failed: bool = False,
    max_concurrency: int = 16,
) -> dict[str, RunState]:
    """The state of each run of one store listing (:func:`rmeval.store.list_runs`). Only
    the claim.json / failed.json files of unfinished runs are read (few), concurrently. A
    run is done when it is done for every one of ``benchmarks``."""
    from rmeval.procutil import bounded_map

    out: dict[str, RunState] = {}
    todo = []
    for name, r in runs.items():
        if all(r.done(b) for b in benchmarks):
            out[name] = RunState(name, DONE)
        elif r.claim is not None or r.failed is not None:
            todo.append(r)
        else:
            out[name] = RunState(name, PLANNED)

    def read(r: store_layout.StoredRun) -> RunState:
        claim = None
        if r.claim is not None:
            got = storage.read_versioned(r.claim.uri)
            claim = _parse_claim(r.claim.uri, got) if got is not None else None
        failure = None
        if r.failed is not None:
            got = storage.read_versioned(r.failed.uri)
            failure = parse_failure(r.failed.uri, got.data, got.version) if got else None
        if claim is not None and claim.live():
            return RunState(r.name, RUNNING, claim=claim, failure=failure)
        if failure is not None:
            gave_up = failure.attempts >= max_attempts and not retry_failed
            return RunState(r.name, GIVEN_UP if gave_up else FAILED, failure=failure)
        return RunState(r.name, PLANNED, claim=claim)

    for st in bounded_map(read, iter(todo), max_concurrency, total=len(todo), desc="state"):
        out[st.name] = st
    return out
