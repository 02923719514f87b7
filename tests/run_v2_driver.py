"""Run RewardBench's own ``scripts/run_v2.py`` ``main()`` offline, on the CPU.

Runs inside the rewardbench 0.1.4 reference environment (``make ref-envs``), never in
rmeval's. run_v2 reads a local ``.jsonl`` dataset itself (``load_bon_dataset_v2``: a
``--dataset`` path containing ".jsonl" goes through pandas), so its data loading needs no
replacement; the one thing replaced is the hard-coded ``.to("cuda")`` of
``RewardBenchPipeline`` (a ``BatchEncoding.to``), which is sent to the CPU instead.

    python tests/run_v2_driver.py [run_v2 arguments ...]

With ``--do_not_save`` run_v2 prints one ``<subset>: ...`` line per subset and writes the
per-row scores to ``./results/eval-set-scores/<model>.json`` (local only).
"""

from __future__ import annotations

import sys

from cuda_to_cpu import send_cuda_to_cpu  # tests/, the script's own directory


def main(argv: list[str]) -> None:
    send_cuda_to_cpu()

    from scripts import run_v2

    sys.argv = ["run_v2.py", *argv]
    run_v2.main()


if __name__ == "__main__":
    main(sys.argv[1:])
