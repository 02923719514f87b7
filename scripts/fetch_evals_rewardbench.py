#!/usr/bin/env python3
"""The seed's ``fetch_evals_rewardbench.py``, with its flags verbatim, on top of
``rmeval collect``.

    python3 scripts/fetch_evals_rewardbench.py \\
        --output_path helpsteer2-counts-runs.csv \\
        --beaker_workspace ai2/my-workspace \\
        --experiment_prefix rm-eval-helpsteer2-count \\
        --feature_counts_dir path/to/feats/

Differences from the seed, on purpose: official xstest weights; runs without features and
other left-out inputs are reported (and written to ``<output>.issues.json``) instead of
dropped silently; an existing output is kept unless ``--overwrite``; ``--source`` reads a
results store instead of Beaker. ``--gpt4_threshold_score`` is a fraction (scores are
fractions). The workspace defaults to ``$BEAKER_WORKSPACE``.
"""

from __future__ import annotations

import argparse
import os
import sys


def to_collect_argv(argv: list[str] | None = None) -> list[str]:
    """Translate the seed's flags into ``rmeval collect`` arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_path", required=True)
    p.add_argument("--beaker_workspace", default=os.environ.get("BEAKER_WORKSPACE"))
    p.add_argument("--experiment_prefix", default=None, help="default for Beaker: rm-eval-")
    p.add_argument("--feature_counts_dir", default=None)
    p.add_argument("--experiments_file", default=None)
    p.add_argument("--gpt4_threshold_score", type=float, default=None)
    p.add_argument("--dataset_total_size", type=int, default=None)
    # rmeval additions
    p.add_argument("--source", default=None, help="a results store instead of Beaker")
    p.add_argument("--max_concurrency", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true")
    a = p.parse_args(argv)
    if a.source is None and not a.beaker_workspace:
        p.error("--beaker_workspace ORG/NAME is required (or set BEAKER_WORKSPACE, or --source)")
    source = a.source or f"beaker://{a.beaker_workspace}"
    out = ["collect", "--source", source, "--output", a.output_path]
    out += ["--max-concurrency", str(a.max_concurrency)]
    for flag, value in (
        ("--experiment-prefix", a.experiment_prefix),
        ("--feature-counts-dir", a.feature_counts_dir),
        ("--experiments-file", a.experiments_file),
        ("--gpt4-threshold", a.gpt4_threshold_score),
        ("--dataset-total-size", a.dataset_total_size),
    ):
        if value is not None:
            out += [flag, str(value)]
    out += ["--overwrite"] * a.overwrite + ["--strict"] * a.strict
    return out


def main(argv: list[str] | None = None) -> int:
    from rmeval.cli import main as rmeval_main

    return rmeval_main(to_collect_argv(argv))


if __name__ == "__main__":
    sys.exit(main())
