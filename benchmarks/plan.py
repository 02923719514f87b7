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


def _bulk_insert(server, base_url: str, bucket: str, names: list[str]) -> None:
    """Put tiny objects straight into the emulator's in-memory store."""
    from gcp_storage_emulator.handlers.objects import _make_object_resource

    st = server._storage
    objs = st.objects.setdefault(bucket, {})
    for name in names:
        data = b"x"
        obj = _make_object_resource(base_url, bucket, name, "application/octet-stream", 1)
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


def _timed_cli(*args: str) -> tuple[float, str]:
    """Seconds ``rmeval ARGS`` takes as a user runs it (a new interpreter), and its stderr."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"rmeval {args[0]} failed:\n{r.stderr}")
    return seconds, r.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="checkpoints")
    ap.add_argument("--done", type=int, default=2_000, help="runs already finished in the store")
    ap.add_argument("--no-baseline", action="store_true")
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
        setup_s = time.perf_counter() - t
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
