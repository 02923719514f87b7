"""The one replacement both RewardBench drivers (run_rm_driver.py, run_v2_driver.py) make:
``RewardBenchPipeline``'s hard-coded ``.to("cuda")`` (a ``BatchEncoding.to``) goes to the
CPU. Imported by those scripts from their own directory, inside the reference environment."""

from __future__ import annotations


def send_cuda_to_cpu() -> None:
    import transformers

    to = transformers.BatchEncoding.to

    def to_cpu(self, device, *args, **kwargs):
        if str(device).startswith("cuda"):
            device = "cpu"
        return to(self, device, *args, **kwargs)

    transformers.BatchEncoding.to = to_cpu
