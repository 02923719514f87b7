"""rmeval's RewardBench 2 against RewardBench itself: rewardbench 0.1.4's own
``scripts/run_v2.py`` ``main()`` in the v1 parity test's environment (RMEVAL_RUNRM_PYTHON;
tests/run_v2_driver.py replaces only the hard-coded ``.to("cuda")``; run_v2 reads the local
``.jsonl`` itself), ``--torch_dtype float32``, on the RewardBench 2 sample (six subsets,
Ties ref/tied pairs, whitespace and code in the texts).

(a) ``rmeval evaluate --benchmark rewardbench2 --scoring run_rm`` on the folder EasyLM's
    converter writes gives run_v2's subset scores and, completion by completion, its
    rewards (fp32 noise apart);
(b) run_v2 loading rmeval's own converted folder gives the subset scores of rmeval's
    default (``trained``) on it.

One documented difference: run_rm sets ``tokenizer.truncation_side = "left"``, run_v2 does
not, so run_v2 cuts a text over ``--max_length`` at its end (the response's end and the eos,
where the reward is read, are lost); rmeval truncates from the left for both benchmarks. The
sample has such texts: their rewards are compared for being different, every other
completion's reward for being equal, and the subset scores for being equal wherever no
completion of the subset was truncated.

The table is printed at the end of the test run and written to ``run_v2_parity.txt``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rmeval.rewardbench import scoring_v2
from rmeval.rewardbench.data import sample_records_v2
from rmeval.rewardbench.evaluate import evaluate
from tests import refenv
from tests.converted_fixtures import converted_model, easylm_converter_folder

pytestmark = pytest.mark.slow

REL_TOL = 2e-4  # as the v1 parity test: run_v2's left-padded batches move its rewards
TIES_TOL = 1e-4  # the Ties score's margin term is continuous in the rewards
MAX_LENGTH = 2048
RUN_V2_FLAGS = ["--torch_dtype", "float32", "--do_not_save", "--batch_size", "8"]
_LINE = re.compile(r"^(?P<subset>[^:\n]+): (?:Overall score (?P<ties>\S+)|\S+ \((?P<acc>\S+)\))$")


def parity_data(path: Path) -> Path:
    rows = sample_records_v2(2, seed=3)
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["prompt"] = f"  {r['prompt']}\n\n"
            r["chosen"] = [f"\n{c}  " for c in r["chosen"]]
        if i % 4 == 1:
            r["rejected"] = [f"{c}\n" for c in r["rejected"]]
        if i % 5 == 2:
            r["chosen"][0] = f"```python\ndef f(x):\n    return x * 2\n```\n{r['chosen'][0]}\n\t"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _run_v2(interpreter: str, root: Path, model: str, data: Path) -> tuple[dict, dict]:
    """run_v2's printed subset scores and {id: [reward per completion]}."""
    out = refenv.run(
        interpreter, "run_v2_driver.py", "--model", model, "--dataset", str(data),
        *RUN_V2_FLAGS, cwd=root,
    )  # fmt: skip
    metrics = {}
    for line in out.splitlines():
        m = _LINE.match(line.strip())
        if m and m["subset"] in scoring_v2.SUBSETS:
            metrics[m["subset"]] = float(m["ties"] or m["acc"])
    saved = json.loads((root / "results" / "eval-set-scores" / f"{model}.json").read_text())
    metrics["chat_template"] = saved["chat_template"]
    rewards = {
        str(i): [s[0] if isinstance(s, list) else s for s in scores]
        for i, scores in zip(saved["id"], saved["scores"], strict=True)
    }
    return metrics, rewards


def _rmeval(model: Path, data: Path, out: Path, **kw) -> tuple[dict, dict, set]:
    """rmeval's metrics, {id: [reward per completion]} and the (id, completion) of the
    texts cut to --max-length (a scored sequence ends at its read position: at most
    MAX_LENGTH tokens, one less when run_rm's trailing eos is the pad)."""
    scores = out.with_suffix(".scores.jsonl")
    result = evaluate(
        str(model), str(data), benchmark="rewardbench2", save_scores=str(scores),
        device="cpu", progress=False, max_length=MAX_LENGTH, **kw,
    )  # fmt: skip
    rewards: dict[str, list[float]] = {}
    cut = set()
    for line in scores.read_text().splitlines():
        r = json.loads(line)
        rewards.setdefault(r["id"], []).append(r["reward"])
        if r["tokens"] >= MAX_LENGTH - 1:
            cut.add((r["id"], r["completion"]))
    assert sum(len(v) for v in rewards.values()) > len(cut) > 0 or not cut
    return result.metrics, rewards, cut


@pytest.fixture(scope="module")
def parity(tmp_path_factory, request):
    interpreter = refenv.python(refenv.RUNRM)
    root = tmp_path_factory.mktemp("parity-v2")
    converted = converted_model(root / "build", "sentencepiece")
    (root / "rmeval-folder").symlink_to(converted, target_is_directory=True)
    easylm_converter_folder(converted, root / "easylm-folder")
    data = parity_data(root / "rows.jsonl")
    rows = {json.loads(x)["id"]: json.loads(x) for x in data.read_text().splitlines()}
    runs = {
        "a": (
            _run_v2(interpreter, root, "easylm-folder", data),
            _rmeval(root / "easylm-folder", data, root / "a", scoring_format="run_rm"),
        ),
        "b": (
            _run_v2(interpreter, root, "rmeval-folder", data),
            _rmeval(root / "rmeval-folder", data, root / "b"),
        ),
    }
    table = _table(runs)
    (root / "run_v2_parity.txt").write_text(table + "\n")
    request.config.stash.setdefault(refenv.REPORTS, []).append(table)
    return runs, rows


def _cut_subsets(data_rows: dict, cut: set) -> set:
    return {data_rows[i]["subset"] for i, _ in cut}


def _differing(m1: dict, m2: dict, skip: set = frozenset()) -> list[str]:
    def same(s: str) -> bool:
        return math.isclose(m1[s], m2[s], abs_tol=TIES_TOL if s == "Ties" else 1e-12)

    return [s for s in scoring_v2.SUBSETS if s not in skip and not same(s)]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(1.0, abs(b))


def _max_rel(r1: dict, r2: dict, cut: set) -> float:
    assert r1.keys() == r2.keys()
    return max(
        _rel(a, b)
        for k in r1
        for j, (a, b) in enumerate(zip(r1[k], r2[k], strict=True))
        if (k, j) not in cut
    )


def _min_rel_cut(r1: dict, r2: dict, cut: set) -> float:
    return min(_rel(r1[k][j], r2[k][j]) for k, j in cut)


def _table(runs: dict) -> str:
    (ra, ra_r), (ma, ma_r, cut_a) = runs["a"]
    (rb, rb_r), (mb, mb_r, cut_b) = runs["b"]
    head = ("subset", "run_v2", "rmeval run_rm", "run_v2", "rmeval trained")
    lines = [
        "RewardBench 2 subset scores: (a) EasyLM-converter folder, (b) rmeval's converted folder",
        f"{'':<12} {'(a)':>14} {'(a)':>14} {'(b)':>14} {'(b)':>14}",
        f"{head[0]:<12} {head[1]:>14} {head[2]:>14} {head[3]:>14} {head[4]:>14}",
    ]
    for s in scoring_v2.SUBSETS:
        lines.append(f"{s:<12} {ra[s]:>14.6f} {ma[s]:>14.6f} {rb[s]:>14.6f} {mb[s]:>14.6f}")
    n = sum(len(v) for v in ma_r.values())
    lines += [
        f"(a) --scoring run_rm vs run_v2: {len(_differing(ra, ma))} of 6 subsets differ; "
        f"max relative reward difference {_max_rel(ma_r, ra_r, cut_a):.2e} over the "
        f"{n - len(cut_a)} of {n} completions within {MAX_LENGTH} tokens; the {len(cut_a)} "
        f"longer ones (run_v2 cuts their end) differ by >= {_min_rel_cut(ma_r, ra_r, cut_a):.2e}",
        f"(b) default (trained) vs run_v2 on rmeval's folder: {len(_differing(rb, mb))} of 6 "
        f"subsets differ; max relative reward difference {_max_rel(mb_r, rb_r, cut_b):.2e} "
        f"(within {MAX_LENGTH} tokens)",
    ]
    return "\n".join(lines)


def test_scoring_run_rm_reproduces_run_v2_on_an_easylm_converter_folder(parity):
    runs, rows = parity
    (theirs, their_rewards), (ours, our_rewards, cut) = runs["a"]
    assert theirs["chat_template"] == ours["chat_template"] == "tulu"
    assert cut, "the sample has texts over --max-length"
    assert _differing(theirs, ours, skip=_cut_subsets(rows, cut)) == []
    assert _max_rel(our_rewards, their_rewards, cut) <= REL_TOL
    assert _min_rel_cut(our_rewards, their_rewards, cut) > 100 * REL_TOL  # the one difference


def test_run_v2_on_rmevals_folder_gives_rmevals_default(parity):
    runs, rows = parity
    (theirs, their_rewards), (ours, our_rewards, cut) = runs["b"]
    assert theirs["chat_template"] == "tokenizer" and ours["chat_template"] == "easylm-trained"
    assert _differing(theirs, ours, skip=_cut_subsets(rows, cut)) == []
    assert _max_rel(our_rewards, their_rewards, cut) <= REL_TOL
