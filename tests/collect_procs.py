"""Real ``rmeval collect`` processes for the concurrency and kill -9 tests.

``python -m tests.collect_procs race START STEP RESULTS_DIR DATASET TABLE STORE...``
    runs ``rmeval collect --source STORE_i`` into one results dataset, round ``i`` starting
    at wall-clock time ``START + i * STEP`` (two such processes race in every round). The
    imports are done before the first round, so the rounds start within a millisecond.

``python -m tests.collect_procs kill-at EVENT PATH -- ARGS...``
    runs ``rmeval ARGS`` and sends itself SIGKILL just before the first operation ``EVENT``
    on ``PATH``: ``rename`` (``os.replace``/``os.rename`` onto PATH) or ``remove`` (unlink
    of PATH). The point is found with an audit hook (:func:`sys.addaudithook`) on the real
    file operations, so rmeval carries no test hook.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _race(argv: list[str]) -> int:
    from rmeval import cli

    start, step = float(argv[0]), float(argv[1])
    results_dir, dataset, table, stores = argv[2], argv[3], argv[4], argv[5:]
    failed = 0
    for i, store in enumerate(stores):
        delay = start + i * step - time.time()
        if delay > 0:
            time.sleep(delay)
        rc = cli.main(
            [
                "collect",
                "--source",
                store,
                "--results-dir",
                results_dir,
                "--results-dataset",
                dataset,
                "--table",
                table,
            ]
        )
        failed += rc != 0
    return 1 if failed else 0


def _kill_at(argv: list[str]) -> int:
    event, target = argv[0], os.path.abspath(argv[1])
    args = argv[3:] if argv[2] == "--" else argv[2:]
    index = {"rename": 1, "remove": 0}[event]  # which argument of the audit event is PATH
    name = {"rename": "os.rename", "remove": "os.remove"}[event]

    def hook(ev: str, ev_args: tuple) -> None:
        if ev == name and os.path.abspath(os.fspath(ev_args[index])) == target:
            os.kill(os.getpid(), signal.SIGKILL)

    from rmeval import cli

    sys.addaudithook(hook)
    return cli.main(args)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"race": _race, "kill-at": _kill_at}[mode](rest))
