"""scoring_v2.py against rewardbench 0.1.4's own ``reroll_and_score_dataset`` and
``process_single_model`` (with ``sample_stats``), compiled from the AST of the installed
package's ``utils.py`` as the v1 scoring test does (``import rewardbench`` needs fastchat and
datasets, which this environment does not have). The functions only call ``to_pandas`` /
``from_pandas`` / ``from_dict`` / row iteration of a ``datasets.Dataset``; a table class
with those four members, backed by pandas, stands in for it. Everything else is theirs.
"""

from __future__ import annotations

import ast
import math
import random

import numpy as np
import pandas as pd
import pytest

from rmeval.errors import EvalError
from rmeval.rewardbench import scoring_v2
from tests.test_rewardbench_scoring import _package_dir


class _Table:
    """The part of ``datasets.Dataset`` the two functions use."""

    def __init__(self, df: pd.DataFrame):
        self.df = df.reset_index(drop=True)

    @classmethod
    def from_pandas(cls, df):
        return cls(df)

    @classmethod
    def from_dict(cls, d):
        return cls(pd.DataFrame(d))

    def to_pandas(self):
        return self.df.copy()

    def __iter__(self):
        yield from self.df.to_dict("records")

    def __getitem__(self, col):
        return self.df[col].tolist()


@pytest.fixture(scope="module")
def theirs():
    root = _package_dir()
    tree = ast.parse((root / "utils.py").read_text(encoding="utf-8"))
    wanted = {"reroll_and_score_dataset", "sample_stats", "process_single_model"}
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {f.name for f in fns} == wanted
    ns: dict = {"np": np, "pd": pd, "math": math, "Dataset": _Table}
    exec(compile(ast.Module(body=fns, type_ignores=[]), str(root / "utils.py"), "exec"), ns)
    return ns


def _their_rows(theirs, rows):
    """run_v2's path: unrolled (one score per completion), then rerolled."""
    flat = [
        {"id": rid, "subset": "s", "text": f"t{i}", "scores": s}
        for rid, _, scores in rows
        for i, s in enumerate(scores)
    ]
    rolled = theirs["reroll_and_score_dataset"](
        _Table(pd.DataFrame(flat)), [len(r[2]) for r in rows], cols_to_combine=["text", "scores"]
    )
    return rolled


def _bon_case(theirs, rows):
    rolled = _their_rows(theirs, rows)
    expected = list(rolled["results"])
    ours = [scoring_v2.best_of_n(scores) for _, _, scores in rows]
    assert ours == pytest.approx(expected, rel=0, abs=1e-15)
    assert scoring_v2.subset_score("Focus", rows) == pytest.approx(np.mean(expected), abs=1e-15)
    return expected


def test_best_of_n_crafted_ties_at_top(theirs):
    rows = [
        ("a", 1, [2.0, 1.0, 0.5, -1.0]),  # correct best: 1
        ("b", 1, [2.0, 2.0, 0.5, -1.0]),  # two-way tie at the top: 1/2
        ("c", 1, [3.0, 3.0, 3.0, 3.0]),  # all tied: 1/4
        ("d", 1, [1.0, 2.0, 0.5, 0.0]),  # beaten: 0
        ("e", 1, [1.0, 2.0, 2.0, 0.0]),  # others tie above: 0
    ]
    assert _bon_case(theirs, rows) == [1.0, 0.5, 0.25, 0.0, 0.0]


def test_best_of_n_random_tables(theirs):
    rng = random.Random(1)
    for _ in range(30):
        rows = []
        for k in range(rng.randint(1, 12)):
            n = rng.choice([2, 4, 4, 4, 7])
            rows.append((str(k), 1, [float(rng.choice([0, 1, 2, 3])) for _ in range(n)]))
        _bon_case(theirs, rows)


def _ties_case(theirs, rows):
    rolled = _their_rows(theirs, rows)
    df = rolled.to_pandas()
    df["num_correct"] = [nc for _, nc, _ in rows]
    _, expected = theirs["process_single_model"](_Table(df))
    ours = scoring_v2.ties_score(rows)
    assert math.isclose(ours, float(expected), rel_tol=1e-12, abs_tol=1e-15), (ours, expected)
    return float(expected)


def test_ties_crafted_several_correct_and_ref_without_twin(theirs):
    rows = [
        ("ref:1", 1, [3.0, 1.0, 0.0]),
        ("tied:1", 3, [3.0, 2.5, 2.0, 1.0, 0.0]),  # several correct, margin ratio 1/1
        ("ref:2", 1, [0.0, 1.0]),  # inaccurate ref
        ("tied:2", 2, [2.0, 1.9, 0.0, -3.0]),
        ("ref:3", 1, [5.0, 1.0]),  # a ref without a tied twin
        ("tied:4", 2, [1.0, 0.5, 2.0]),  # a tied without a ref twin, inaccurate
    ]
    value = _ties_case(theirs, rows)
    assert 0 < value < 1


def test_ties_crafted_zero_correct_margin_and_top_ties(theirs):
    rows = [
        ("ref:7", 1, [2.0, 1.0, 1.0]),
        ("tied:7", 2, [2.0, 2.0, 1.0, 1.0]),  # different-correct margin 0: no margin term
        ("ref:8", 1, [1.0, 1.0]),  # correct tied with incorrect: not accurate
        ("tied:8", 3, [4.0, 4.0, 3.0, 3.0]),  # best incorrect ties the worst correct
        ("ref:9", 1, [1.0, 0.0]),
        ("tied:9", 2, [1.5, 1.0, 0.0]),
    ]
    _ties_case(theirs, rows)


def test_ties_random_tables(theirs):
    rng = random.Random(2)
    for _ in range(40):
        rows = []
        for n in range(rng.randint(1, 8)):
            for kind in ("ref", "tied"):
                if rng.random() < 0.2:
                    continue
                nc = 1 if kind == "ref" else rng.randint(2, 5)
                total = nc + rng.randint(1, 6)
                rows.append((f"{kind}:{n}", nc, [float(rng.randint(-3, 3)) for _ in range(total)]))
        if not rows:
            continue
        _ties_case(theirs, rows)


def test_ties_documented_difference_no_different_correct_margin(theirs):
    """Both groups exist but the tied one has a single correct answer: RewardBench's mean
    of nothing is NaN; ours counts those terms as 0."""
    rows = [("ref:1", 1, [2.0, 1.0]), ("tied:1", 1, [2.0, 1.0])]
    rolled = _their_rows(theirs, rows)
    df = rolled.to_pandas()
    df["num_correct"] = [1, 1]
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        _, expected = theirs["process_single_model"](_Table(df))
    assert math.isnan(expected)
    assert scoring_v2.ties_score(rows) == pytest.approx(0.6)


def test_ties_formula_by_hand():
    rows = [("ref:1", 1, [3.0, 1.0]), ("tied:1", 2, [3.0, 2.0, 0.0])]
    # tied: cim 2, dcm 1; ref: cim 2 -> all four terms 1, margin tanh(2/1 - 1)
    assert scoring_v2.ties_score(rows) == pytest.approx(1.0 + 0.01 * math.tanh(1.0))


@pytest.mark.parametrize("bad", ["ref-1", "tie:3", "ref:x", "3", "ref:1:2"])
def test_ties_bad_id_is_an_error(bad):
    with pytest.raises(EvalError, match=r"ref:<n> or tied:<n>"):
        scoring_v2.ties_score([(bad, 1, [1.0, 0.0])])


def test_overall_is_the_mean_of_six():
    metrics = {s: i / 10 for i, s in enumerate(scoring_v2.SUBSETS)}
    assert scoring_v2.overall(metrics) == pytest.approx(sum(range(6)) / 60)
    del metrics["Ties"]
    assert scoring_v2.overall(metrics) is None
