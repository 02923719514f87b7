"""rmeval against RewardBench itself: rewardbench 0.1.4's own ``scripts/run_rm.py`` ``main()``
in its own environment (tests/run_rm_driver.py replaces only the hub dataset load and the
hard-coded ``.to("cuda")``; run_rm's own ``--not_quantized --torch_dtype float32``).

(a) ``rmeval evaluate --scoring run_rm`` on the folder EasyLM's converter writes
    (LlamaTokenizer, no chat template, no pad) gives run_rm's per-subset accuracies and,
    text by text, its rewards (fp32 noise apart);
(b) run_rm loading rmeval's own converted folder, with no workaround, gives the accuracies
    of rmeval's default (``trained``) on it.

The data has all 23 subsets, texts with leading and trailing whitespace and newlines, code,
and texts over 2,048 tokens. The per-subset table is printed at the end of the test run
(tests/conftest.py) and written to ``run_rm_parity.txt`` in the test's directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rmeval.rewardbench import scoring
from rmeval.rewardbench.data import sample_records
from rmeval.rewardbench.evaluate import evaluate
from rmeval.tokenizer import load_tokenizer
from tests import refenv
from tests.converted_fixtures import converted_model, easylm_converter_folder

pytestmark = pytest.mark.slow

# Rewards are tens. With LlamaTokenizerFast run_rm pads on the left and numbers positions
# 0..n-1 over the padded row, so its own rewards move with the batch: batch 1 vs batch 8
# differed by 7.4e-5 (relative) on this data; rmeval vs run_rm (batch 8): 7.9e-5.
REL_TOL = 2e-4
RUN_RM_FLAGS = ["--not_quantized", "--torch_dtype", "float32", "--do_not_save"]
RUN_RM_FLAGS += ["--disable_beaker_save", "--batch_size", "8"]


def parity_data(path: Path) -> Path:
    """RewardBench-format pairs: 5 per subset, with whitespace, code and long texts."""
    rows = sample_records(5, seed=3)
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["prompt"] = f"  {r['prompt']}\n\n"
            r["chosen"] = f"\n{r['chosen']}  "
        if i % 4 == 1:
            r["rejected"] = f"{r['rejected']}\n"
        if i % 7 == 2:
            r["chosen"] = f"```python\ndef f(x):\n    return x * 2\n```\n{r['chosen']}\n\t"
        if i % 19 == 5:  # over 2,048 tokens: truncated from the left
            r["chosen"] = " ".join([r["chosen"]] * 40)
        if i % 23 == 11:
            r["prompt"] = " ".join([r["prompt"]] * 60)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _run_rm(interpreter: str, root: Path, model: str, data: Path) -> tuple[dict, dict]:
    """run_rm's metrics and {id: (chosen reward, rejected reward)} for ``root/model``."""
    refenv.run(
        interpreter, "run_rm_driver.py", str(data), "--model", model, *RUN_RM_FLAGS, cwd=root
    )
    metrics = json.loads((root / "results" / "eval-set" / f"{model}.json").read_text())
    scores = json.loads((root / "results" / "eval-set-scores" / f"{model}.json").read_text())

    def flat(v):
        return v[0] if isinstance(v, list) else v

    rewards = {
        str(i): (flat(c), flat(r))
        for i, c, r in zip(
            scores["id"], scores["scores_chosen"], scores["scores_rejected"], strict=True
        )
    }
    return metrics, rewards


def _rmeval(model: Path, data: Path, out: Path, **kw) -> tuple[dict, dict]:
    scores = out.with_suffix(".scores.jsonl")
    result = evaluate(str(model), str(data), save_scores=str(scores), progress=False, **kw)
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    return result.metrics, {r["id"]: (r["chosen_reward"], r["rejected_reward"]) for r in rows}


@pytest.fixture(scope="module")
def parity(tmp_path_factory, request):
    interpreter = refenv.python(refenv.RUNRM)
    root = tmp_path_factory.mktemp("parity")
    converted = converted_model(root / "build", "sentencepiece")
    (root / "rmeval-folder").symlink_to(converted, target_is_directory=True)
    easylm_converter_folder(converted, root / "easylm-folder")
    data = parity_data(root / "pairs.jsonl")
    tok, _ = load_tokenizer(converted, root)
    longest = max(
        len(tok(json.loads(x)["chosen"])["input_ids"]) for x in data.read_text().splitlines()
    )
    assert longest > 2048  # the truncation path is really exercised
    runs = {
        "a": (
            _run_rm(interpreter, root, "easylm-folder", data),
            _rmeval(root / "easylm-folder", data, root / "a", scoring_format="run_rm"),
        ),
        "b": (
            _run_rm(interpreter, root, "rmeval-folder", data),
            _rmeval(root / "rmeval-folder", data, root / "b"),
        ),
    }
    table = _table(runs)
    (root / "run_rm_parity.txt").write_text(table + "\n")
    request.config.stash.setdefault(refenv.REPORTS, []).append(table)
    return runs


def _differing(m1: dict, m2: dict) -> list[str]:
    return [s for s in scoring.SUBSETS if m1[s] != m2[s]]


def _max_rel(r1: dict, r2: dict) -> float:
    assert r1.keys() == r2.keys()
    return max(abs(a - b) / max(1.0, abs(b)) for k in r1 for a, b in zip(r1[k], r2[k], strict=True))


def _table(runs: dict) -> str:
    (ra, ra_r), (ma, ma_r) = runs["a"]
    (rb, rb_r), (mb, mb_r) = runs["b"]
    head = ("subset", "run_rm", "rmeval run_rm", "run_rm", "rmeval trained")
    lines = [
        "per-subset accuracy: (a) EasyLM-converter folder, (b) rmeval's converted folder",
        f"{'':<24} {'(a)':>14} {'(a)':>14} {'(b)':>14} {'(b)':>14}",
        f"{head[0]:<24} {head[1]:>14} {head[2]:>14} {head[3]:>14} {head[4]:>14}",
    ]
    for s in scoring.SUBSETS:
        lines.append(f"{s:<24} {ra[s]:>14.4f} {ma[s]:>14.4f} {rb[s]:>14.4f} {mb[s]:>14.4f}")
    lines += [
        f"(a) --scoring run_rm vs run_rm: {len(_differing(ra, ma))} of 23 subsets differ; "
        f"max relative reward difference {_max_rel(ma_r, ra_r):.2e}",
        f"(b) default (trained) vs run_rm on rmeval's folder: {len(_differing(rb, mb))} of 23 "
        f"subsets differ; max relative reward difference {_max_rel(mb_r, rb_r):.2e}",
        f"(for scale) run_rm on the two folders: {len(_differing(ra, rb))} of 23 subsets differ",
    ]
    return "\n".join(lines)


def test_scoring_run_rm_reproduces_run_rm_on_an_easylm_converter_folder(parity):
    (run_rm, run_rm_rewards), (ours, our_rewards) = parity["a"]
    assert run_rm["chat_template"] == ours["chat_template"] == "tulu"
    assert _differing(run_rm, ours) == []
    assert _max_rel(our_rewards, run_rm_rewards) <= REL_TOL


def test_run_rm_on_rmevals_folder_gives_rmevals_default(parity):
    (run_rm, run_rm_rewards), (ours, our_rewards) = parity["b"]
    assert run_rm["chat_template"] == "tokenizer" and ours["chat_template"] == "easylm-trained"
    assert _differing(run_rm, ours) == []
    assert _max_rel(our_rewards, run_rm_rewards) <= REL_TOL
    # and the section scores follow, with the official counts
    mine = scoring.summarize(scoring.subset_accuracies(ours))
    theirs = scoring.summarize(scoring.subset_accuracies(run_rm))
    assert all(math.isclose(mine[k], theirs[k]) for k in mine)
