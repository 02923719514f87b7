"""The embedded default: a local "bucket" laid out like the real one, and a pipeline config.

``rmeval demo`` builds, under a work directory:

- ``bucket/rm_checkpoints/demo/tiny_rm_human_datamodel_counts_7000_ID__<uuid>__SWAPS_<n>--<hash>/streaming_params_<step>``:
  real EasyLM streaming checkpoints of tiny LLaMA reward models (distinct seeds), written
  with flax exactly as EasyLM's checkpointer does;
- ``bucket/feats/regressor_feats_ID__<uuid>__SWAPS_<n>.json``: the matching feature counts;
- ``bucket/tokenizer/``: a byte-level BPE tokenizer trained on the sample's text;
- ``rewardbench-sample.jsonl``: a RewardBench-format sample covering all 23 subsets;
- ``rewardbench2-sample.jsonl``: a RewardBench 2 sample covering its six subsets (the
  pipeline scores every model on both benchmarks from one conversion);
- ``pipeline.yml``: the config that ``rmeval pipeline`` runs (local backend, local store).

Everything is deterministic in ``seed``; existing files are kept, so a second ``rmeval demo``
reuses the bucket and the pipeline finds nothing new to do.
"""

from __future__ import annotations

import json
import logging
import random
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rmeval import naming, storage

log = logging.getLogger(__name__)

# Tiny LLaMA reward model: small enough that a run converts and scores in seconds on a CPU.
DEMO_MODEL = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "intermediate": 176,
}
DEMO_VOCAB = 1024
DEMO_PER_SUBSET = 3
DEMO_DATASET = "demo"
DEMO_PREFIX = "demo-counts"
DEMO_TABLE = "counts-runs"
DEMO_TOTAL_SIZE = 7000

# Feature keys shaped like the real analyzers' (opaque strings with ':', '|', '=' and spaces).
FEATURE_KEYS = (
    "prompt_len::min_val=0.33|max_val=0.67",
    "token_len_diff::min_val=0.0|max_val=0.33",
    "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Computer sciences",
    "analyzer_scalar::feature_name=complexity_of_intents|value=simple",
)


@dataclass
class DemoLayout:
    workdir: Path
    bucket: Path
    checkpoints: Path
    features: Path
    tokenizer: Path
    dataset: Path
    dataset_v2: Path
    store: Path
    results: Path
    config: Path
    runs: list[str] = field(default_factory=list)


def layout(workdir: str | Path) -> DemoLayout:
    w = Path(workdir).resolve()
    bucket = w / "bucket"
    return DemoLayout(
        workdir=w,
        bucket=bucket,
        checkpoints=bucket / "rm_checkpoints" / DEMO_DATASET,
        features=bucket / "feats",
        tokenizer=bucket / "tokenizer",
        dataset=w / "rewardbench-sample.jsonl",
        dataset_v2=w / "rewardbench2-sample.jsonl",
        store=w / "store",
        results=w / "results",
        config=w / "pipeline.yml",
    )


def _run_dir_name(rng: random.Random) -> tuple[str, str, int]:
    uid = uuidlib.UUID(int=rng.getrandbits(128)).hex
    budget = rng.randrange(500, DEMO_TOTAL_SIZE, 250)
    suffix = uuidlib.UUID(int=rng.getrandbits(128)).hex
    name = f"tiny_rm_human_datamodel_counts_{DEMO_TOTAL_SIZE}_ID__{uid}__SWAPS_{budget}--{suffix}"
    return name, uid, budget


def _feature_counts(rng: random.Random, budget: int) -> dict[str, int]:
    return {k: rng.randrange(0, budget + 1) for k in FEATURE_KEYS}


def build(
    workdir: str | Path,
    runs: int = 6,
    seed: int = 0,
    results_dir: str | Path | None = None,
) -> DemoLayout:
    """Create (or reuse) the demo bucket, sample, tokenizer and pipeline config."""
    from rmeval.checkpoints.flaxwriter import random_llama_params, write_checkpoint
    from rmeval.rewardbench.data import load_pairs, write_sample
    from rmeval.tokenizer import train_tokenizer

    lay = layout(workdir)
    if results_dir is not None:
        lay.results = Path(results_dir).resolve()
    lay.workdir.mkdir(parents=True, exist_ok=True)

    if not lay.dataset.exists():
        write_sample(str(lay.dataset), per_subset=DEMO_PER_SUBSET, seed=seed)
    if not lay.dataset_v2.exists():
        write_sample(
            str(lay.dataset_v2), per_subset=DEMO_PER_SUBSET, seed=seed, benchmark="rewardbench2"
        )
    if not (lay.tokenizer / "tokenizer.json").exists():
        pairs = load_pairs(str(lay.dataset))
        texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
        train_tokenizer(texts, lay.tokenizer, vocab_size=DEMO_VOCAB)

    rng = random.Random(seed)
    lay.checkpoints.mkdir(parents=True, exist_ok=True)
    lay.features.mkdir(parents=True, exist_ok=True)
    for i in range(runs):
        name, uid, budget = _run_dir_name(rng)
        step = 100 * (i + 1)
        counts = _feature_counts(rng, budget)
        ckpt = lay.checkpoints / name / f"streaming_params_{step}"
        if not ckpt.exists():
            params = random_llama_params(
                **DEMO_MODEL, vocab=DEMO_VOCAB, head="score", seed=seed * 1000 + i
            )
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            with storage.atomic_local_file(ckpt) as tmp:
                write_checkpoint(tmp, params, float_dtype="fp32")
        feats = lay.features / naming.feature_counts_filename(uid, budget)
        if not feats.exists():
            storage.write_text(str(feats), json.dumps(counts, indent=1, sort_keys=True))
        lay.runs.append(str(ckpt))

    config = pipeline_config(lay)
    text = yaml.safe_dump(config, sort_keys=False)
    if not lay.config.exists() or lay.config.read_text() != text:
        storage.write_text(str(lay.config), text, overwrite=True)
    return lay


def pipeline_config(lay: DemoLayout) -> dict:
    """The ``rmeval pipeline`` config of the demo (see rmeval/pipeline.py for the keys)."""
    return {
        "source": str(lay.checkpoints),
        "prefix": DEMO_PREFIX,
        "store": str(lay.store),
        "backend": "local",
        "max_parallel": 2,
        "eval_data": str(lay.dataset),
        "benchmarks": ["rewardbench", "rewardbench2"],
        "eval_data_v2": str(lay.dataset_v2),
        "tokenizer": str(lay.tokenizer),
        "model_size": "auto",
        "num_heads": DEMO_MODEL["n_heads"],
        "feature_counts_dir": str(lay.features),
        "dataset_total_size": DEMO_TOTAL_SIZE,
        "results_dir": str(lay.results),
        "results_dataset": DEMO_DATASET,
        "table": DEMO_TABLE,
        "fit": {"model": "linear", "seed": 42},
        "report": True,
    }
