"""Run RewardBench's own ``scripts/run_rm.py`` ``main()`` offline, on the CPU.

Runs inside the rewardbench 0.1.4 reference environment (``make ref-envs``), never in
rmeval's. It replaces exactly two things and nothing else of run_rm:

- the hub dataset load (``rewardbench.utils.load_dataset``, what ``load_eval_dataset``
  calls for ``allenai/reward-bench``) with a local RewardBench-format JSON-lines file;
- the hard-coded ``.to("cuda")`` of ``RewardBenchPipeline`` (a ``BatchEncoding.to``),
  which is sent to the CPU instead.

    python tests/run_rm_driver.py DATA.jsonl [run_rm arguments ...]

run_rm writes ``./results/eval-set/<model>.json`` and ``./results/eval-set-scores/
<model>.json`` relative to the working directory, as it always does.
"""

from __future__ import annotations

import sys

from cuda_to_cpu import send_cuda_to_cpu  # tests/, the script's own directory


def main(data_file: str, argv: list[str]) -> None:
    import datasets
    import rewardbench.utils

    def local_dataset(name, split=None, **kwargs):
        if name != rewardbench.utils.CORE_EVAL_SET or split != "filtered":
            raise RuntimeError(f"unexpected dataset request {name!r} split {split!r}")
        return datasets.Dataset.from_json(data_file)

    rewardbench.utils.load_dataset = local_dataset
    send_cuda_to_cpu()

    from scripts import run_rm

    sys.argv = ["run_rm.py", *argv]
    run_rm.main()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
