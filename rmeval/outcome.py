"""The outcome file a command leaves for the process that started it (``--result-json FILE``).

Every command takes the hidden option :data:`FLAG`. The process that runs a command for
someone else (the local backend's workers, :mod:`rmeval.backends.local`; the plan-runs
action, ``actions/plan-runs/plan_runs.py``) passes it and reads the record, instead of
parsing the command's stderr. The record is one JSON object with ``status``:

- success: ``ok`` (run-one: ``ok`` or ``skipped``, with the fields of
  :class:`rmeval.run.RunOneResult`), and ``exit_code``;
- failure (:data:`FAILED`): ``error_type`` (the exception's class name, e.g.
  ``StoreError``; null when the command itself reported failed work, such as a launch
  with failed runs), ``message`` (the one line the CLI printed after ``rmeval: error:``)
  and ``exit_code``.

A process killed before it could write leaves no record: :func:`read` gives None.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

FLAG = "--result-json"
OK = "ok"
FAILED = "failed"


def write(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically, replacing an older record."""
    from rmeval import storage

    text = json.dumps(dict(record), indent=2, default=str) + "\n"
    storage.write_text(os.fspath(path), text, overwrite=True)


def success(exit_code: int, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a command that returned ``exit_code`` (``record``: its own fields)."""
    out: dict[str, Any] = {"status": OK, **(record or {})}
    if exit_code:
        out.update(status=FAILED, error_type=None, message=f"exit {exit_code}")
    out["exit_code"] = exit_code
    return out


def failure(exc: BaseException, message: str, exit_code: int) -> dict[str, Any]:
    """The record of a command that failed with ``exc``, reported as ``message``."""
    return {
        "status": FAILED,
        "error_type": type(exc).__name__,
        "message": message,
        "exit_code": exit_code,
    }


def write_failure(path: str | os.PathLike | None, record: Mapping[str, Any]) -> None:
    """Best effort: a status file that cannot be written must not hide the error itself."""
    if path:
        with contextlib.suppress(Exception):
            write(path, record)


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``; None when there is none (the process died before it wrote
    one) or it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None
