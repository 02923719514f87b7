"""A small published store for the provenance, collect and reproduce tests: two runs of
real flax-written checkpoints published by run-one, each with its kept model."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rmeval import run
from rmeval.store import PROVENANCE_FILE
from tests.run_fixtures import HEADS, Material, make_material


@dataclass(frozen=True)
class Published:
    material: Material
    store: str
    runs: list[str]
    kept: dict[str, str]  # run -> its kept model


def publish(root: Path, n: int = 2) -> Published:
    material = make_material(root, n=n)
    store = str(root / "store")
    runs, kept = [], {}
    for i, ckpt in enumerate(material.checkpoints):
        keep = str(root / f"kept-{i}")
        result = run.run_one(
            ckpt,
            store,
            prefix="p",
            tokenizer=material.tokenizer,
            eval_data=material.dataset,
            num_heads=HEADS,
            keep_model=keep,
            progress=False,
        )
        runs.append(result.run)
        kept[result.run] = keep
    return Published(material, store, runs, kept)


def copy_store(pub: Published, dest: Path) -> str:
    shutil.copytree(pub.store, dest)
    return str(dest)


def edit_provenance(store: str, run_name: str, edit) -> dict:
    """Rewrite ``<store>/<run>/provenance.json`` with ``edit(obj)`` applied."""
    path = Path(store) / run_name / PROVENANCE_FILE
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))
    return obj
