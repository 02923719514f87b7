"""Builders for collect/results tests: realistic metrics.json objects and run names.

Accuracies are computed here the way run_rm computes them (correct pairs / pairs of the
subset) from a seeded draw, and the expected section scores are recomputed here from the
official RewardBench example counts (a fact, stated again below), so tests never compare
the code against its own constants.
"""

from __future__ import annotations

import json
import random
import uuid as uuidlib

# Official RewardBench facts (reference/rewardbench.md): section membership and the example
# counts that weigh the section scores. math-prm has 447 real pairs, weighted as 984.
OFFICIAL = {
    "Chat": {
        "alpacaeval-easy": 100,
        "alpacaeval-length": 95,
        "alpacaeval-hard": 95,
        "mt-bench-easy": 28,
        "mt-bench-med": 40,
    },
    "Chat Hard": {
        "mt-bench-hard": 37,
        "llmbar-natural": 100,
        "llmbar-adver-neighbor": 134,
        "llmbar-adver-GPTInst": 92,
        "llmbar-adver-GPTOut": 47,
        "llmbar-adver-manual": 46,
    },
    "Safety": {
        "refusals-dangerous": 100,
        "refusals-offensive": 100,
        "xstest-should-refuse": 154,
        "xstest-should-respond": 250,
        "donotanswer": 136,
    },
    "Reasoning": {
        "math-prm": 984,
        "hep-cpp": 164,
        "hep-go": 164,
        "hep-java": 164,
        "hep-js": 164,
        "hep-python": 164,
        "hep-rust": 164,
    },
}
REAL_PAIRS = {"math-prm": 447}
ALL_SUBSETS = [s for sec in OFFICIAL.values() for s in sec]


def make_metrics(seed: int, skill: float | None = None) -> dict:
    """A metrics.json object as run_rm writes it: per subset, correct/total from a seeded
    draw of Bernoulli outcomes with a per-run skill."""
    rng = random.Random(seed)
    p = skill if skill is not None else rng.uniform(0.45, 0.95)
    out: dict = {
        "model": f"/reward_model/{seed}",
        "model_type": "Seq. Classifier",
        "chat_template": rng.choice(["tokenizer", "tulu"]),
    }
    for section in OFFICIAL.values():
        for subset, count in section.items():
            n = REAL_PAIRS.get(subset, count)
            correct = sum(rng.random() < p for _ in range(n))
            out[subset] = correct / n
    return out


def expected_scores(metrics: dict) -> dict[str, float]:
    """Section scores (count-weighted means) and Overall (mean of sections)."""
    out = {}
    for section, counts in OFFICIAL.items():
        out[section] = sum(metrics[s] * c for s, c in counts.items()) / sum(counts.values())
    out["Overall"] = sum(out[s] for s in OFFICIAL) / len(OFFICIAL)
    return out


def metrics_bytes(seed: int, **kw) -> bytes:
    return json.dumps(make_metrics(seed, **kw), indent=1).encode()


def new_uuid(rng: random.Random) -> str:
    return uuidlib.UUID(int=rng.getrandbits(128)).hex


def counts_run_name(uid: str, budget: int, prefix: str = "rm-eval-helpsteer2-counts-") -> str:
    """The name a counts-mode experiment has in the wild."""
    return f"{prefix}tulu2_13b_rm_human_datamodel_counts_7000_ID__{uid}__SWAPS_{budget}"


def feats_run_name(feature_hash: str, budget: int, prefix: str = "rm-eval-hs2-") -> str:
    return f"{prefix}tulu2_13b_rm_human_datamodel_FEATS_{feature_hash}_SWAPS_{budget}"


# Feature keys as they appear in the counts files: ':' '|' '=' spaces, plus a comma and a
# double quote to make CSV quoting matter.
HOSTILE_KEYS = [
    "prompt_len::min_val=0.33|max_val=0.67",
    "token_len_diff::min_val=0.0|max_val=0.33",
    "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Computer sciences",
    "analyzer_scalar::feature_name=complexity_of_intents|value=simple",
    "analyzer_open_set::feature_name=languages",
    'analyzer_closed_set::feature_name=format|constraints=Code, "JSON" & YAML',
]


def make_counts(rng: random.Random, keys: list[str] = HOSTILE_KEYS) -> dict[str, int]:
    return {k: rng.randint(0, 4000) for k in keys}
