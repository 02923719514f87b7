"""Benchmark: `rmeval plan` over 10,000 checkpoints listed from the GCS emulator.

Target: <= 10 s end to end (the CLI as a user runs it, interpreter start included), for
``rmeval plan --output`` and, printed beside it, ``rmeval launch --source --dry-run`` (which
plans the same way and then uses the spec plan validated, without parsing it again).

Setup: an in-process gcp-storage-emulator on 127.0.0.1. Objects are tiny and are put into
the emulator's in-memory store directly (one HTTP upload per object would take minutes
and measure the emulator, not the planner); the planner itself only ever talks HTTP to it.
Names follow the real pattern
``<dataset>/tulu2_13b_rm_human_datamodel_counts_7000_ID__<uuid>__SWAPS_<n>--<id>/streaming_params_<step>``;
half the run directories also hold a ``streaming_train_state_<step>`` and 5% an older step
(superseded). The store holds ``--done`` finished runs (metrics, scores, provenance).

Baseline, same data, same run: the seed's approach in our own words — list every object
with ``streaming_params`` in its name, drop a checkpoint when its experiment name is a
substring of any finished name, copy a template task per checkpoint (deepcopy), dump the
spec with PyYAML and load it back with beaker-py's ``BeakerExperimentSpec.from_file``.

Status at the same scale: a second store of ``--n`` runs (all done but 10: 4 failed, 3
given up, 3 running, with real claim.json / failed.json bodies and metrics.json carrying
its Overall as object metadata, as run-one publishes it), timed as ``rmeval status
--store`` end to end (target <= 10 s: one listing, state files read only for the 10
unfinished runs). Baseline, same store: per-run lookups (read each run's metrics.json for
its Overall, look for its claim.json and failed.json), 16 at a time.

Run: python benchmarks/plan.py [--n 10000] [--done 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

TARGET_S = 10.0
DATASETS = ("helpsteer2", "multipref", "alpacafarm", "chatarena")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"emulator did not start on {port}")


def _names(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Checkpoint object names (n) and the other objects listed next to them."""
    import random

    rng = random.Random(seed)
    ckpts, others = [], []
    i = 0
    while len(ckpts) < n:
        ds = DATASETS[i % len(DATASETS)]
        uid = uuid.UUID(int=rng.getrandbits(128)).hex
        run_dir = (
            f"{ds}/tulu2_13b_rm_human_datamodel_counts_7000_ID__{uid}__"
            f"SWAPS_{rng.randint(100, 7000)}--{uuid.UUID(int=rng.getrandbits(128)).hex}"
        )
        step = rng.randint(100, 900)
        ckpts.append(f"{run_dir}/streaming_params_{step}")
        if i % 20 == 0 and len(ckpts) < n:
            ckpts.append(f"{run_dir}/streaming_params_{step - 50}")  # superseded
        if i % 2 == 0:
            others.append(f"{run_dir}/streaming_train_state_{step}")
        i += 1
    return ckpts, others


def _bulk_insert(
    server, base_url: str, bucket: str, names: list[str], content: dict | None = None
) -> None:
    """Put tiny objects straight into the emulator's in-memory store (``content``: some
    objects' ``(bytes, metadata)``)."""
    from gcp_storage_emulator.handlers.objects import _checksums, _make_object_resource

    st = server._storage
    objs = st.objects.setdefault(bucket, {})
    for name in names:
        data, meta = (content or {}).get(name, (b"x", None))
        obj = _make_object_resource(base_url, bucket, name, "application/octet-stream", len(data))
        if meta:
            obj["metadata"] = meta
        if content and name in content:
            obj = _checksums(data, obj)  # as an upload sets them: readers check them
        st._store.write_bytes(st._object_path(bucket, name), data)
        objs[name] = obj
    st._write_config_to_file()


def baseline(source: str, store: str, prefix: str) -> tuple[float, float, int]:
    """The seed's way (see the module doc). Returns (listing s, rendering s, tasks)."""
    import yaml
    from beaker import BeakerExperimentSpec

    from rmeval import storage

    t0 = time.perf_counter()
    client = storage.gcs_client()
    bucket, key = storage.split_gcs(source)
    blobs = [b.name for b in client.list_blobs(bucket, prefix=key) if "streaming_params" in b.name]
    sb, sk = storage.split_gcs(store)
    finished = [
        b.name.split("/")[-2] for b in client.list_blobs(sb, prefix=sk) if b.name.endswith(".json")
    ]
    todo = []
    for name in blobs:
        exp = name.split("/")[-2].split("--")[0].replace(".", "-")
        if any(exp in f for f in finished):  # substring match, as the seed did
            continue
        todo.append(name)
    t1 = time.perf_counter()
    template = {
        "version": "v2",
        "description": "convert and eval",
        "tasks": [
            {
                "name": "convert-and-run-evals",
                "image": {"beaker": "ljm/easylm-convert"},
                "command": ["python3", "convert_to_hf.py"],
                "arguments": ["--batch_size", "1"],
                "result": {"path": "/output"},
                "resources": {"gpuCount": 1},
                "context": {"priority": "normal", "preemptible": True},
                "constraints": {"cluster": ["ai2/jupiter-cirrascale-2"]},
                "envVars": [{"name": "BEAKER_TOKEN", "secret": "BEAKER_TOKEN"}],
            }
        ],
    }
    spec = copy.deepcopy(template)
    spec["tasks"] = []
    for i, name in enumerate(todo):
        task = copy.deepcopy(template["tasks"][0])
        task["name"] = f"convert-and-run-evals-{i}"
        task["arguments"] += ["--gcs_dir_path", name, "--prefix", prefix, "--is_reward_model"]
        spec["tasks"].append(task)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yml"
        path.write_text(yaml.safe_dump(spec))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            BeakerExperimentSpec.from_file(path)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(todo)


def _status_store(n: int, prefix: str) -> dict[str, tuple[bytes, dict | None]]:
    """``{object name: (bytes, metadata)}`` of a store of ``n`` runs: all done but 10."""
    import json

    from rmeval import state
    from rmeval import store as store_layout
    from rmeval.rewardbench.scoring import SUBSETS

    out: dict[str, tuple[bytes, dict | None]] = {}
    for i in range(n):
        run = f"{prefix}/run-{i:05d}"
        if i < n - 10:
            value = 0.5 + (i % 97) / 200
            metrics = json.dumps({**{s: value for s in SUBSETS}, "model": run}).encode()
            out[f"{run}/{store_layout.METRICS_FILE}"] = (
                metrics, {store_layout.OVERALL_METADATA: repr(value)}
            )  # fmt: skip
            out[f"{run}/{store_layout.SCORES_FILE}"] = (b"{}\n", None)
            out[f"{run}/{store_layout.PROVENANCE_FILE}"] = (b"{}\n", None)
        elif i < n - 3:
            attempts = 1 if i < n - 6 else state.DEFAULT_MAX_ATTEMPTS
            body = {"kind": "error", "error_type": "EvalError", "error": "NaN rewards",
                    "stage": "evaluate", "attempts": attempts, "time": "2026-12-02T00:00:00Z",
                    "job": {"backend": "github", "id": f"run {i}/1 job run"}}  # fmt: skip
            out[f"{run}/{store_layout.FAILED_FILE}"] = (json.dumps(body).encode(), None)
        else:
            body = {"attempt": f"run-one-otherhost.1-{i}-x", "host": "otherhost",
                    "job": {"backend": "beaker", "id": f"job {i}"}, "started": "2026-12-02T00:00:00Z",
                    "ttl_s": 3600.0, "stage": "convert"}  # fmt: skip
            out[f"{run}/{store_layout.CLAIM_FILE}"] = (json.dumps(body).encode(), None)
    return out


def status_baseline(store: str, runs: list[str]) -> tuple[float, int]:
    """Per-run lookups (see the module doc): seconds, and the runs found done."""
    import concurrent.futures as cf

    from rmeval import storage

    def one(run: str) -> bool:
        done = storage.exists(f"{store}/{run}/metrics.json")
        if done:
            storage.read_bytes(f"{store}/{run}/metrics.json")
        storage.exists(f"{store}/{run}/claim.json")
        storage.exists(f"{store}/{run}/failed.json")
        return done

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        done = sum(pool.map(one, runs))
    return time.perf_counter() - t, done


def _timed_cli(*args: str) -> tuple[float, str]:
    """Seconds ``rmeval ARGS`` takes as a user runs it (a new interpreter), and its stderr
    followed by its stdout."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"rmeval {args[0]} failed:\n{r.stderr}")
    return seconds, r.stderr + r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="checkpoints")
    ap.add_argument("--done", type=int, default=2_000, help="runs already finished in the store")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--status-only", action="store_true", help="only the status benchmark")
    args = ap.parse_args()

    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    _wait(port)
    host = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")

    from rmeval import naming, plan, specs, storage

    try:
        storage.gcs_client().create_bucket("ljm-dev")
        root = "human-preferences/rm_checkpoints"
        t = time.perf_counter()
        ckpts, others = _names(args.n)
        prefix = "bench"
        done_runs = sorted({naming.run_name(f"gs://ljm-dev/{root}/{c}", prefix) for c in ckpts})[
            : args.done
        ]
        store_objs = [
            f"results/{r}/{f}"
            for r in done_runs
            for f in ("metrics.json", "scores.jsonl", "provenance.json")
        ]
        _bulk_insert(server, host, "ljm-dev", [f"{root}/{c}" for c in ckpts + others] + store_objs)
        status_objs = _status_store(args.n, "status-store")
        _bulk_insert(server, host, "ljm-dev", sorted(status_objs), status_objs)
        setup_s = time.perf_counter() - t
        status_e2e, status_out = _timed_cli("status", "--store", "gs://ljm-dev/status-store")
        status_counts = status_out.strip().splitlines()[-1] if status_out.strip() else "?"
        if not args.no_baseline:
            run_names = sorted({n.split("/")[1] for n in status_objs})
            s_base, s_done = status_baseline("gs://ljm-dev/status-store", run_names)
        else:
            s_base, s_done = float("nan"), -1
        print(f"status benchmark: {args.n} runs in the store (10 not done)")
        print(f"rmeval status: {status_counts}")
        print(f"{'stage':<30}{'rmeval':>10}{'per-run':>12}{'ratio':>8}")
        print(f"{'status (CLI, end to end)':<30}{status_e2e:>9.2f}s{s_base:>11.2f}s"
              f"{s_base / status_e2e:>7.1f}x")  # fmt: skip
        print(
            f"end to end (rmeval status CLI):  {status_e2e:.2f} s  = {status_e2e / TARGET_S:.2f} "
            f"of the {TARGET_S:.0f} s target ({'OK' if status_e2e <= TARGET_S else 'OVER TARGET'});"
            f" per-run baseline found {s_done} done"
        )
        if args.status_only:
            return 0
        source, store = f"gs://ljm-dev/{root}", "gs://ljm-dev/results"
        TOKENIZER = "gs://ljm-dev/tokenizers/llama2/tokenizer.model"  # plan checks it is given

        # ---- ours, in process: the split
        t0 = time.perf_counter()
        p = plan.plan(source, prefix=prefix, store=store)
        t1 = time.perf_counter()
        text = plan.render_plan(p, specs.DEFAULT_TEMPLATE, values={"tokenizer": TOKENIZER}).text
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            plan.write_spec(text, str(Path(d) / "spec.yml"))
        t3 = time.perf_counter()
        listing, rendering, writing = t1 - t0, t2 - t1, t3 - t2
        assert p.found == args.n, (p.found, args.n)

        # ---- ours, end to end: the CLI as a user runs it
        with tempfile.TemporaryDirectory() as d:
            common = ["--source", source, "--store", store, "--prefix", prefix]
            common += ["--tokenizer", TOKENIZER]
            e2e, stderr = _timed_cli("plan", *common, "--output", str(Path(d) / "spec.yml"))
            summary = [ln for ln in stderr.splitlines() if ln.startswith("found ")]
            # launch plans on the spot and uses the validated spec (one parse, one check)
            logs = str(Path(d) / "logs")
            e2e_launch, _ = _timed_cli("launch", *common, "--dry-run", "--log-dir", logs)

        if not args.no_baseline:
            b_list, b_render, b_tasks = baseline(source, store, prefix)

        print(f"plan benchmark: {args.n} checkpoints ({len(ckpts) + len(others)} objects under the source), "
              f"{args.done} runs done in the store; setup (bulk insert) {setup_s:.1f} s")  # fmt: skip
        print(f"rmeval: {summary[0] if summary else p.summary()}")
        print(f"{'stage':<30}{'rmeval':>10}{'seed-style':>12}{'ratio':>8}")
        if args.no_baseline:
            b_list = b_render = float("nan")
            b_tasks = -1
        rows = [
            ("listing + done check", listing, b_list),
            ("rendering + validation", rendering, b_render),
            ("in-process total", listing + rendering + writing, b_list + b_render),
        ]
        for name, ours, base in rows:
            print(f"{name:<30}{ours:>9.2f}s{base:>11.2f}s{base / ours:>7.1f}x")
        print(f"{'  (writing the spec)':<30}{writing:>9.2f}s")
        print(
            f"end to end (rmeval plan CLI):  {e2e:.2f} s  = {e2e / TARGET_S:.2f} of the "
            f"{TARGET_S:.0f} s target ({'OK' if e2e <= TARGET_S else 'OVER TARGET'})"
        )
        print(
            f"end to end (rmeval launch --source --dry-run):  {e2e_launch:.2f} s  = "
            f"{e2e_launch / TARGET_S:.2f} of the {TARGET_S:.0f} s target"
        )
        print(
            f"tasks: rmeval {len(p.to_run)} (superseded {len(p.superseded)} dropped, "
            f"done {len(p.done)}), seed-style {b_tasks} (substring 'done' matching, no "
            "superseded-step handling)"
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
