"""scoring.py against the rewardbench package's own constants and section helper.

``import rewardbench`` pulls in fastchat, datasets, ... so the package cannot be imported
here. Its ``constants.py`` has no imports and loads alone from its file; the helper
``calculate_scores_per_section`` is compiled on its own, from the AST of ``utils.py``.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import random
from pathlib import Path

import pytest

from rmeval.rewardbench import scoring


def _package_dir() -> Path:
    spec = importlib.util.find_spec("rewardbench")  # finds it without running __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the rewardbench package is not installed (pip install --no-deps rewardbench)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def official():
    root = _package_dir()
    spec = importlib.util.spec_from_file_location("_rb_constants", root / "constants.py")
    constants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constants)
    tree = ast.parse((root / "utils.py").read_text(encoding="utf-8"))
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "calculate_scores_per_section"
    )
    namespace: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(root / "utils.py"), "exec"), namespace)
    return constants, namespace["calculate_scores_per_section"]


def test_constants_match_the_package(official):
    constants, _ = official
    assert constants.EXAMPLE_COUNTS == scoring.EXAMPLE_COUNTS
    assert {k: tuple(v) for k, v in constants.SUBSET_MAPPING.items()} == scoring.SECTIONS
    assert list(constants.SUBSET_MAPPING) == list(scoring.SECTION_NAMES)


def test_section_scores_match_the_package_on_random_metrics(official):
    constants, calculate = official
    rng = random.Random(0)
    for trial in range(300):
        present = [s for s in scoring.SUBSETS if trial < 100 or rng.random() < 0.7]
        metrics = {s: rng.random() for s in present}
        if trial % 7 == 0:
            metrics["model"] = "m"  # meta keys and unknown subsets are ignored by both
            metrics["some-new-subset"] = 0.5
        theirs = calculate(constants.EXAMPLE_COUNTS, constants.SUBSET_MAPPING, metrics)
        ours = scoring.section_scores(metrics)
        assert set(theirs) == set(ours)
        for section, value in ours.items():
            if value is None:  # documented difference: theirs writes 0 for an empty section
                assert theirs[section] == 0
            else:
                assert math.isclose(value, theirs[section], rel_tol=1e-12, abs_tol=1e-12)
        if all(v is not None for v in ours.values()):
            expected = sum(theirs.values()) / 4
            assert math.isclose(scoring.overall(ours), expected, rel_tol=1e-12)
        else:
            assert scoring.overall(ours) is None


def test_documented_formula_by_hand():
    """Σ accuracy·count / Σ count over present subsets, independent of the package."""
    acc = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0, "xstest-should-refuse": 0.5}
    sections = scoring.section_scores(acc)
    assert sections["Chat"] == pytest.approx(100 / (100 + 28))
    assert sections["Safety"] == pytest.approx(0.5)
    assert sections["Chat Hard"] is None and sections["Reasoning"] is None
    # math-prm weighs 984: as much as the six code subsets together
    reasoning = scoring.section_scores(
        {
            "math-prm": 1.0,
            **{f"hep-{x}": 0.0 for x in ("cpp", "go", "java", "js", "python", "rust")},
        }
    )
    assert reasoning["Reasoning"] == pytest.approx(0.5)
