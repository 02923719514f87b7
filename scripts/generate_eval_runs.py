#!/usr/bin/env python3
"""Seed-compatible entry point: ``generate_eval_runs`` with the seed's flags, running
``rmeval plan``.

    python scripts/generate_eval_runs.py --template evals/template-helpsteer2-counts.yml \
        --output_file helpsteer2-eval-runs.yml --gcs_bucket ljm-dev \
        --gcs_dir_path human-preferences/rm_checkpoints/helpsteer2/... --store gs://…/results

Differences from the seed, on purpose:

- ``--template`` takes a Jinja spec template (``rmeval/templates/beaker/*.yml.j2``). A seed
  template named ``template-<dataset>-counts.yml`` selects the preset ``<dataset>`` with the
  default convert-and-eval template instead.
- Runs already done are dropped by exact name (metrics.json in ``--store``; with
  ``--beaker_workspace``, an experiment of that name), never by substring.
- ``--is_reward_model`` is accepted and has no effect (every checkpoint is a reward model);
  ``--cleanup`` is accepted and has no effect (run-one always removes its temporary files).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

SEED_TEMPLATE = re.compile(r"^template-(?P<dataset>[A-Za-z0-9_]+)-counts\.ya?ml$")


def to_plan_argv(argv: Sequence[str] | None = None) -> list[str]:
    """Translate the seed's flags into ``rmeval plan`` arguments."""
    p = argparse.ArgumentParser(prog="generate_eval_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default=None)
    p.add_argument("--output_file", default=None)
    p.add_argument("--gcs_bucket", default=None)
    p.add_argument("--gcs_dir_path", default=None)
    p.add_argument("--prefix", default=None)
    p.add_argument("--is_reward_model", action="store_true")
    p.add_argument("--beaker_workspace", default=None)
    p.add_argument("--cleanup", action="store_true")
    p.add_argument("--store", default=None, help="results store (not in the seed; needed)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for the converted models (the seed's template named it; needed)",
    )
    p.add_argument("--preset", default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    out = ["plan"]
    preset = args.preset
    if args.template:
        m = SEED_TEMPLATE.match(Path(args.template).name)
        if m and not args.template.endswith(".j2"):
            preset = preset or m["dataset"]
        else:
            out += ["--template", args.template]
    if preset:
        out += ["--preset", preset]
    for flag in ("output_file", "gcs_bucket", "gcs_dir_path", "prefix", "store", "tokenizer"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag}", value]
    if args.beaker_workspace:
        out += ["--workspace", args.beaker_workspace]
    if args.overwrite:
        out.append("--overwrite")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from rmeval.cli import main as rmeval_main

    return rmeval_main(to_plan_argv(argv))


if __name__ == "__main__":
    sys.exit(main())
