"""Benchmark: collect 1,000 experiments through the Beaker source, concurrent vs sequential.

The fake Beaker service (tests/fake_beaker.py, real beaker-py on the client side) adds a
fixed latency to every call (default 50 ms). Each experiment costs four calls after the
listing (ListJobs, GetDataset, ListDatasetFiles, HTTP GET of metrics.json), so a sequential
fetch needs about 4 x latency per experiment.

The baseline is the same code with ``max_concurrency=1``, run in the same process on
``--baseline-n`` experiments (default 60) and scaled to the full count by its measured
per-experiment time; ``--full-baseline`` runs it on all of them instead (minutes).

Memory: peak Python allocations (tracemalloc) of the concurrent fetch at several sizes;
flat means the peak grows with the table (a few KB a row), not with the pending work.

    python benchmarks/collect.py [--n 1000] [--latency 0.05] [--max-concurrency 128]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmeval import collect
from tests.collect_fixtures import make_metrics
from tests.fake_beaker import FakeBeakerServer

PREFIX = "rm-eval-bench-"


def populate(state, workspace: str, n: int, seed: int) -> None:
    ws = state.add_workspace(workspace)
    rng = random.Random(seed)
    for i in range(n):
        m = make_metrics(rng.randrange(1 << 30))
        state.add_experiment(
            ws, f"{PREFIX}{i:05d}", files={"metrics.json": json.dumps(m)}, created=1000.0 + i
        )


def timed_fetch(workspace: str, max_concurrency: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    runs, issues = collect.fetch_beaker(
        workspace, experiment_prefix=PREFIX, max_concurrency=max_concurrency
    )
    table = collect.build_table(runs)
    return time.perf_counter() - t0, len(table.rows), len(issues)


def _serve(conn, workspaces: list[tuple[str, int, int]], max_workers: int) -> None:
    """The fake service in its own process (as the real one is remote): its CPU time is
    not charged to the client being measured. Answers small commands over a pipe."""
    server = FakeBeakerServer(max_workers=max_workers)
    state = server.start()
    for ws, n, seed in workspaces:
        populate(state, ws, n, seed)
    conn.send(state.env())
    while True:
        cmd, arg = conn.recv()
        if cmd == "latency":
            state.latency = arg
            conn.send(None)
        elif cmd == "reset":
            state.calls.clear()
            state.peak_in_flight = 0
            conn.send(None)
        elif cmd == "stats":
            conn.send((sum(state.calls.values()), state.peak_in_flight))
        else:
            server.stop()
            conn.send(None)
            return


class RemoteFake:
    def __init__(self, workspaces, max_workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, workspaces, max_workers), daemon=True)
        self.proc.start()
        if not self.conn.poll(300):
            raise RuntimeError("fake Beaker did not start within 300 s")
        self.env = self.conn.recv()

    def call(self, cmd: str, arg=None):
        self.conn.send((cmd, arg))
        return self.conn.recv()

    def stop(self) -> None:
        self.call("stop")
        self.proc.join(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every call")
    ap.add_argument("--max-concurrency", type=int, default=128)
    ap.add_argument("--baseline-n", type=int, default=60)
    ap.add_argument("--full-baseline", action="store_true")
    ap.add_argument("--memory-sizes", default="250,500,1000")
    args = ap.parse_args()

    base_n = args.n if args.full_baseline else min(args.baseline_n, args.n)
    sizes = [int(x) for x in args.memory_sizes.split(",") if x]
    specs = [("ai2/bench", args.n, 1), ("ai2/bench-baseline", base_n, 2)]
    specs += [(f"ai2/mem-{size}", size, size) for size in sizes]
    fake = RemoteFake(specs, max_workers=max(64, 2 * args.max_concurrency))
    os.environ.update(fake.env)
    try:
        fake.call("latency", args.latency)
        print(
            f"fake Beaker (own process): {args.n} finalized experiments, "
            f"{args.latency * 1000:.0f} ms per call"
        )
        fake.call("reset")
        t_conc, rows, issues = timed_fetch("ai2/bench", args.max_concurrency)
        calls, peak = fake.call("stats")
        print(
            f"concurrent (max_concurrency={args.max_concurrency}): {rows} rows, {issues} issues, "
            f"{calls} calls, {t_conc:.2f} s, peak in flight {peak}"
        )
        assert rows == args.n, "every experiment must become a row"

        t_seq, rows_b, _ = timed_fetch("ai2/bench-baseline", 1)
        per_exp = t_seq / rows_b
        t_seq_full = per_exp * args.n
        label = "measured" if base_n == args.n else f"scaled from {rows_b} measured"
        print(
            f"sequential (max_concurrency=1): {rows_b} rows in {t_seq:.2f} s "
            f"({per_exp * 1000:.0f} ms/experiment); {args.n} experiments: "
            f"{t_seq_full:.1f} s ({label})"
        )
        speedup = t_seq_full / t_conc
        print(f"speed-up: {speedup:.1f}x   target: < 5 s and >= 20x")
        print(
            f"  -> {'PASS' if t_conc < 5 and speedup >= 20 else 'FAIL'}: "
            f"{t_conc:.2f} s, {speedup:.1f}x"
        )

        fake.call("latency", 0.0)  # memory does not depend on latency
        print("client memory (tracemalloc peak during the concurrent fetch):")
        for size in sizes:
            tracemalloc.start()
            _, rows, _ = timed_fetch(f"ai2/mem-{size}", args.max_concurrency)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(
                f"  {size:>5} experiments: peak {peak / 1e6:7.2f} MB "
                f"({peak / rows / 1e3:.1f} KB/row)"
            )
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
