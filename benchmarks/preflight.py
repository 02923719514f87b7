"""Benchmark: how long `rmeval run-one` takes to refuse each bad option, against the
conversion it no longer runs first.

A 166 MB bf16 reward-model checkpoint (dim 1024, 4 layers, 8 heads, intermediate 2752,
vocab 32000), written by flax the way EasyLM writes it, a trained tokenizer and a
RewardBench-format sample are built in a temporary directory. In the same run, each
contender is its own subprocess (wall time, interpreter start included):

- startup:  `rmeval --version` (the floor of any command);
- convert:  `rmeval convert` of the checkpoint (the work a late failure used to waste;
            a 13B checkpoint takes 15-20 minutes);
- one `rmeval run-one` per bad option, each with every other option valid; it must exit
  with one error line and leave no work directory (nothing converted).

Prints seconds per case and its ratio to the conversion.
Usage: python benchmarks/preflight.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(dim=1024, n_layers=4, n_heads=8, n_kv_heads=8, intermediate=2752, vocab=32000)
RUN_DIR = (
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026"
)


def _build(root: Path) -> tuple[str, str, str]:
    from rmeval.checkpoints.flaxwriter import random_llama_params, write_checkpoint
    from rmeval.rewardbench.data import sample_records, write_sample
    from rmeval.tokenizer import train_tokenizer

    ckpt = root / "bucket" / RUN_DIR / "streaming_params_5"
    ckpt.parent.mkdir(parents=True)
    write_checkpoint(str(ckpt), random_llama_params(**SHAPE, seed=0), float_dtype="bf16")
    texts = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in sample_records(2, 0)]
    tok = train_tokenizer(texts, root / "tok", vocab_size=300)
    data = write_sample(root / "rb.jsonl", per_subset=1)
    return str(ckpt), str(tok), str(data)


def _timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", *argv], capture_output=True, text=True, check=False
    )
    return time.perf_counter() - t0, proc


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rmeval-bench-preflight-") as tmp:
        root = Path(tmp)
        ckpt, tok, data = _build(root)
        (root / "a-file").write_text("x")
        bad_data = root / "other.jsonl"
        bad_data.write_text('{"question": "q", "answer": "a"}\n')
        cases = {
            "--dtype fp16 (CPU)": ["--dtype", "fp16"],
            "--device cuda (no GPU)": ["--device", "cuda"],
            "--device tpu": ["--device", "tpu"],
            "--scoring tulu": ["--scoring", "tulu"],
            "--subsets no-such-subset": ["--subsets", "no-such-subset"],
            "no --tokenizer": ["--no-tokenizer"],
            "--tokenizer missing": ["--tokenizer", str(root / "nope.model")],
            "--eval-data missing": ["--eval-data", str(root / "missing.jsonl")],
            "--eval-data other format": ["--eval-data", str(bad_data)],
            "--store not writable": ["--store", str(root / "a-file" / "store")],
            "no --store": ["--no-store"],
            "--model-size 7b (shapes)": ["--model-size", "7b", "--no-heads"],
            "--num-heads 3 (shapes)": ["--num-heads", "3"],
        }
        startup, _ = _timed(["--version"])
        convert_s, proc = _timed(
            ["convert", ckpt, str(root / "out"), "--num-heads", "8", "--tokenizer", tok]
        )
        if proc.returncode != 0:
            print(proc.stderr)
            return 1
        size = os.path.getsize(ckpt) / 1e6
        print(f"checkpoint {size:.0f} MB; startup {startup:.2f} s; convert {convert_s:.2f} s")
        print(f"{'bad option':<28} {'exit':>4} {'seconds':>8} {'/ convert':>10}  error")
        worst = 0.0
        for name, extra in cases.items():
            work = root / "work"
            argv = ["run-one", ckpt, "--eval-data", data, "--work-dir", str(work)]
            if "--no-store" not in extra:
                argv += ["--store", str(root / "store")]
            if "--no-tokenizer" not in extra and "--tokenizer" not in extra:
                argv += ["--tokenizer", tok]
            if "--no-heads" not in extra and "--num-heads" not in extra:
                argv += ["--num-heads", "8"]
            argv += [a for a in extra if not a.startswith("--no-")]
            seconds, proc = _timed(argv)
            line = (proc.stderr.strip().splitlines() or [""])[-1]
            ok = proc.returncode in (1, 2) and not work.exists() and "Traceback" not in proc.stderr
            worst = max(worst, seconds)
            print(
                f"{name:<28} {proc.returncode:>4} {seconds:>8.2f} {seconds / convert_s:>10.3f}  "
                f"{'' if ok else 'NOT REFUSED FIRST: '}{line[:90]}"
            )
            if not ok:
                return 1
        print(f"slowest refusal {worst:.2f} s = {worst / convert_s:.3f}x this conversion")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
