"""The local backend: a pool of worker processes, each running one task's ``rmeval`` command.

A spec's task is run as ``python -m rmeval <command[1:]> <arguments>`` (the same command a
Beaker task runs; only ``rmeval`` commands are accepted), with this interpreter and this
rmeval (:func:`rmeval.procutil.child_env`). Beaker's result directory is
emulated: any argument equal to or under the task's ``result.path`` (``/output``) is moved
under ``<log_dir>/<task>/output``. Each task writes one log file ``<log_dir>/<task>.log``
(appended across attempts). A failing task does not stop the others. Launching again is
resumable: ``run-one`` skips runs whose metrics are already published and reports them as
skipped. What happened is read from the status file each worker writes
(``<log_dir>/<task>.result.json``, :mod:`rmeval.outcome`: ok / skipped, or the failure's
error type and message), never from the worker's output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmeval import outcome, storage
from rmeval.errors import BackendError
from rmeval.procutil import child_env

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTask:
    """One unit of work: a name (the run) and the arguments after ``rmeval``."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """What happened to one run on a backend."""

    name: str
    status: str  # ok | skipped | failed | created | exists | planned
    detail: str = ""
    log: str | None = None
    seconds: float = 0.0


@dataclass
class LaunchSummary:
    backend: str
    outcomes: list[Outcome]

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        """A human summary: one line per run, then the counts."""
        out = []
        for o in sorted(self.outcomes, key=lambda o: (o.status != "failed", o.name)):
            where = f"  (log: {o.log})" if o.log else ""
            detail = f": {o.detail}" if o.detail else ""
            out.append(f"{o.status:<8} {o.name}{detail}{where}")
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        order = ["ok", "created", "skipped", "claimed", "exists", "planned", "failed"]
        total = ", ".join(f"{counts.get(k, 0)} {k}" for k in order if k in counts or k == "failed")
        out.append(f"{self.backend}: {len(self.outcomes)} run(s): {total}")
        return out


# --------------------------------------------------------------------------- from a spec


def tasks_from_spec(spec: Mapping[str, Any], results_root: str | os.PathLike) -> list[LocalTask]:
    """The local tasks of a validated spec mapping (see the module doc)."""
    results_root = Path(results_root)
    tasks: list[LocalTask] = []
    for i, task in enumerate(spec.get("tasks") or []):
        name = task.get("name") or f"task{i}"
        words = [str(x) for x in (task.get("command") or [])] + [
            str(x) for x in (task.get("arguments") or [])
        ]
        if not words or Path(words[0]).name != "rmeval" or len(words) < 2:
            raise BackendError(
                f"tasks[{i}] ({name}): the local backend runs only 'rmeval …' commands, got {words[:2]!r}"
            )
        if task.get("datasets"):
            raise BackendError(
                f"tasks[{i}] ({name}): the local backend cannot mount Beaker datasets; "
                "run it with --backend beaker"
            )
        result = (task.get("result") or {}).get("path")
        if result:
            result = result.rstrip("/") or "/"
            local = results_root / name / "output"
            words = [_rebase(w, result, local) for w in words]
        tasks.append(LocalTask(name=name, argv=tuple(words[1:])))
    return tasks


def _rebase(word: str, result: str, local: Path) -> str:
    if word == result:
        return str(local)
    if word.startswith(result + "/"):
        return str(local / word[len(result) + 1 :])
    return word


# --------------------------------------------------------------------------- running


def _run_task(task: LocalTask, log_dir: Path, env: Mapping[str, str] | None) -> Outcome:
    from rmeval.naming import safe_component

    safe = safe_component(task.name, what="task name")
    log_path = log_dir / f"{safe}.log"
    result_path = log_dir / f"{safe}.result.json"
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()
    argv = [sys.executable, "-m", "rmeval", *task.argv, outcome.FLAG, str(result_path)]
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as logf:
        logf.write(
            f"==> {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(['rmeval', *task.argv])}\n"
        )
        logf.flush()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                check=False,
            )
        except OSError as exc:
            return Outcome(task.name, "failed", f"cannot start: {exc}", str(log_path))
    seconds = time.perf_counter() - t0
    record = outcome.read(result_path)
    if proc.returncode != 0:
        detail = f"exit {proc.returncode}: {_failure(record)}"
        return Outcome(task.name, "failed", detail, str(log_path), seconds)
    state = str(record.get("status") or outcome.OK) if record else outcome.OK
    return Outcome(task.name, state, "", str(log_path), seconds)


def _failure(record: Mapping[str, Any] | None) -> str:
    """What a failed worker's status file says (secrets masked: it is echoed into the
    launch summary), or that it wrote none."""
    from rmeval.credentials import redact

    if record is None or record.get("status") != outcome.FAILED:
        return "it wrote no status (killed?); see its log"
    return redact(str(record.get("message") or record.get("error_type") or ""))[:300]


def run_local(
    tasks: Sequence[LocalTask],
    *,
    log_dir: str | os.PathLike,
    max_parallel: int = 1,
    dry_run: bool = False,
    progress: bool = True,
    env: Mapping[str, str] | None = None,
) -> LaunchSummary:
    """Run ``tasks`` with at most ``max_parallel`` worker processes at a time."""
    from tqdm.auto import tqdm

    if max_parallel < 1:
        raise BackendError(f"--max-parallel must be at least 1, got {max_parallel}")
    names = [t.name for t in tasks]
    dup = {n for n, k in Counter(names).items() if k > 1}
    if dup:
        raise BackendError(f"duplicate run name {sorted(dup)[0]!r}: each run needs its own log")
    log_dir = Path(log_dir)
    if dry_run:  # command lines a shell runs exactly as printed
        return LaunchSummary(
            "local",
            [Outcome(t.name, "planned", shlex.join(["rmeval", *t.argv])) for t in tasks],
        )
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage.write_error(exc, log_dir, "create the log directory") from exc
    storage.check_writable(log_dir / "launch.log")  # a probe, before any worker starts
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(tasks), unit="run", disable=None if progress else True, desc="launch")
    try:
        with ThreadPoolExecutor(max_workers=max_parallel) as pool:
            futures = {pool.submit(_run_task, t, log_dir, env): t for t in tasks}
            for fut in as_completed(futures):
                task = futures[fut]
                try:
                    outcome = fut.result()
                except Exception as exc:  # a bug in the pool itself: report, keep going
                    outcome = Outcome(task.name, "failed", f"{type(exc).__name__}: {exc}")
                outcomes.append(outcome)
                log.info(
                    "%s %s%s",
                    outcome.status,
                    outcome.name,
                    f": {outcome.detail}" if outcome.detail else "",
                )
                bar.update(1)
    finally:
        bar.close()
    return LaunchSummary("local", outcomes)
