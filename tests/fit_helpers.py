"""Synthetic results tables for the fit and report tests: every column the real table
has (meta, sections, Overall, subsets, features), with Overall a known function of two
feature-count columns plus noise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rmeval.rewardbench.scoring import SECTION_NAMES, SUBSETS

# Feature names in the style of the real ones (':', '|', '=' and spaces inside).
FEAT_A = "prompt_len::min_val=0.33|max_val=0.67"
FEAT_B = "analyzer_closed_set::feature_name=subject_of_expertise|constraints=Computer sciences"
FEAT_NOISE = "token_len_diff::min_val=0.0|max_val=0.33"

TRUE_INTERCEPT = 0.55
TRUE_A = 4.0e-4  # per count
TRUE_B = -1.5e-4
NOISE = 0.005


def synthetic_table(
    n: int = 80,
    seed: int = 0,
    kind: str = "linear",
    subsets: bool = True,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1000, n)
    b = rng.integers(0, 1000, n)
    c = rng.integers(0, 1000, n)
    if kind == "linear":
        overall = TRUE_INTERCEPT + TRUE_A * a + TRUE_B * b
    elif kind == "quadratic":  # a curved response in a
        overall = TRUE_INTERCEPT + 8e-7 * (a - 500.0) ** 2 + TRUE_B * b
    elif kind == "log":
        overall = TRUE_INTERCEPT + 0.05 * np.log1p(a) - 0.02 * np.log1p(b)
    else:
        raise ValueError(kind)
    overall = overall + rng.normal(0, NOISE, n)
    frame = pd.DataFrame(
        {
            "model_type": "Seq. Classifier",
            "chat_template": "tulu",
            "name": [f"rm-eval-helpsteer2-count-{i:03d}" for i in range(n)],
            "uuid": [f"{i:032x}" for i in range(n)],
            "budget": rng.integers(100, 7000, n),
        }
    )
    for s in SECTION_NAMES:
        frame[s] = np.clip(overall + rng.normal(0, 0.03, n), 0, 1)
    frame["Overall"] = overall
    if subsets:
        for s in SUBSETS:
            frame[s] = np.clip(overall + rng.normal(0, 0.08, n), 0, 1)
    frame[FEAT_A] = a
    frame[FEAT_B] = b
    frame[FEAT_NOISE] = c
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def rmse(x, y) -> float:
    return math.sqrt(float(np.mean((np.asarray(x) - np.asarray(y)) ** 2)))
