"""The RewardBench evaluator on a tiny random Llama reward model saved by transformers."""

from __future__ import annotations

import json
import logging
import random

import pytest

from rmeval import storage
from rmeval.errors import AlreadyExistsError, EvalError, UsageError
from rmeval.rewardbench import formats, scoring
from rmeval.rewardbench.data import load_pairs, sample_records, write_sample
from rmeval.rewardbench.evaluate import (
    evaluate,
    format_summary,
    load_reward_model,
    plan_batches,
    score_batches,
)
from tests.rewardbench_helpers import make_reward_model

TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("rm") / "model")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("data") / "sample.jsonl", per_subset=2)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_reward_model(model_dir, "cpu", __import__("torch").float32)


def _hf_reward(model, ids: list[int]) -> float:
    """transformers' own forward and pooling, one unpadded sequence: the oracle."""
    import torch

    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


@pytest.fixture(scope="module")
def seqs(loaded, sample):
    _, tok = loaded
    pairs = load_pairs(str(sample))[:12]
    return formats.encode(tok, pairs, formats.TRAINED, 2048).seqs


def test_reward_is_transformers_reward_alone_and_in_any_batch(loaded, seqs):
    model, tok = loaded
    alone, _ = score_batches(
        model, seqs, [[i] for i in range(len(seqs))], pad_id=tok.pad_token_id, device="cpu"
    )
    for i in range(0, len(seqs), 5):
        assert abs(alone[i] - _hf_reward(model, seqs[i])) <= TOL
    rng = random.Random(0)
    shuffled = list(range(len(seqs)))
    rng.shuffle(shuffled)
    groupings = {
        "planned-small": plan_batches([len(s) for s in seqs], 600),
        "planned-large": plan_batches([len(s) for s in seqs], 100_000, slack=10.0),
        "random-5": [shuffled[k : k + 5] for k in range(0, len(shuffled), 5)],
        "one-batch": [shuffled],
    }
    lengths = {len(s) for s in seqs}
    assert len(lengths) > 10  # the batches really mix lengths, so padding happens
    # pad with eos too: texts end with eos, so pad-id detection would read the wrong spot
    for pad_id in (tok.pad_token_id, tok.eos_token_id):
        for side in ("left", "right"):
            for name, batches in groupings.items():
                got, padded = score_batches(
                    model, seqs, batches, pad_id=pad_id, device="cpu", padding_side=side
                )
                diff = max(abs(a - b) for a, b in zip(got, alone, strict=True))
                assert diff <= TOL, (pad_id, side, name, diff)
                assert padded >= sum(len(s) for s in seqs)


def test_last_layer_shortcut_matches_the_full_forward(loaded, seqs):
    from rmeval.rewardbench.evaluate import _last_layer_shortcut_supported

    model, _ = loaded
    assert _last_layer_shortcut_supported(model)  # Llama: the fast path is the one in use
    batches = plan_batches([len(s) for s in seqs], 4096, slack=0.5)
    for side in ("right", "left"):
        fast, _ = score_batches(
            model, seqs, batches, pad_id=0, device="cpu", shortcut=True, padding_side=side
        )
        full, _ = score_batches(
            model, seqs, batches, pad_id=0, device="cpu", shortcut=False, padding_side=side
        )
        assert max(abs(a - b) for a, b in zip(fast, full, strict=True)) <= TOL, side
    for i in range(0, len(seqs), 4):
        assert abs(fast[i] - _hf_reward(model, seqs[i])) <= TOL
    # the model is left as it was
    assert type(model.base_model.layers[-1]).__name__ == "LlamaDecoderLayer"


def test_other_architectures_use_the_full_forward(tmp_path, sample):
    """GPT-2 has a `score` head but no plain `layers` stack: no shortcut, same contract."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from rmeval.rewardbench.evaluate import _last_layer_shortcut_supported

    d = make_reward_model(tmp_path / "llama", layers=1)  # for its tokenizer
    tok = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,  # learned positions: longer texts must be cut to fit
        n_embd=32,
        n_layer=2,
        n_head=4,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    loaded_model, _ = load_reward_model(tmp_path / "gpt2", "cpu", torch.float32)
    assert not _last_layer_shortcut_supported(loaded_model)
    pairs = load_pairs(str(sample), subsets=["xstest-should-refuse", "hep-js"])
    ids = formats.encode(tok, pairs, formats.TRAINED, 64).seqs
    got, _ = score_batches(
        loaded_model,
        ids,
        plan_batches([len(x) for x in ids], 4096, slack=1.0),
        pad_id=0,
        device="cpu",
        padding_side="left",
    )
    for i in range(len(ids)):
        assert abs(got[i] - _hf_reward(loaded_model, ids[i])) <= TOL
    # the default --max-length 2048 is capped at the model's 64 positions, no traceback
    result = evaluate(str(tmp_path / "gpt2"), str(sample), subsets=["hep-js"], progress=False)
    assert result.n_pairs == 2 and result.n_truncated > 0


def test_plan_batches_properties():
    rng = random.Random(1)
    lengths = [int(rng.lognormvariate(5, 1)) + 1 for _ in range(500)]
    for budget, slack in ((512, 0.03), (4096, 0.03), (8192, 0.0), (8192, 0.5)):
        batches = plan_batches(lengths, budget, slack=slack)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(lengths)))
        for b in batches:
            width = max(lengths[i] for i in b)
            real = sum(lengths[i] for i in b)
            assert len(b) == 1 or len(b) * width <= budget
            assert len(b) * width <= real * (1 + slack) + 1e-9
    # length-sorted packing beats dataset-order batches of 8 on padding
    padded = sum(len(b) * max(lengths[i] for i in b) for b in plan_batches(lengths, 4096))
    fixed = sum(8 * max(lengths[k : k + 8]) for k in range(0, len(lengths), 8))
    assert padded <= 1.03 * sum(lengths) < fixed


def _easylm_ids(tok, prompt: str, response: str) -> list[int]:
    """EasyLM's training ids (EasyLM/data.py, encode_with_messages_format), restated."""
    text = "<|user|>\n" + prompt.strip() + "\n" + "<|assistant|>\n" + response.strip()
    text = tok.bos_token + (text + tok.eos_token + "\n").strip()
    return tok(text, add_special_tokens=False)["input_ids"]


def test_default_scores_easylms_training_text(model_dir, loaded, tmp_path):
    """Texts with leading and trailing whitespace get the reward of EasyLM's stripped
    training text, read at its eos (rmeval used to score them unstripped)."""
    model, tok = loaded
    rows = sample_records(1)[:6]
    for r in rows:
        r["prompt"], r["chosen"], r["rejected"] = (
            f"  {r['prompt']}\n",
            f"\n{r['chosen']} ",
            r["rejected"],
        )
    data = tmp_path / "ws.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = tmp_path / "scores.jsonl"
    result = evaluate(str(model_dir), str(data), save_scores=str(scores), progress=False)
    assert result.metrics["chat_template"] == "easylm-trained"
    for r, got in zip(rows, map(json.loads, scores.read_text().splitlines()), strict=True):
        for key in ("chosen", "rejected"):
            ids = _easylm_ids(tok, r["prompt"], r[key])
            assert ids[-1] == tok.eos_token_id
            assert abs(got[f"{key}_reward"] - _hf_reward(model, ids)) <= TOL, key


def test_evaluate_end_to_end(model_dir, sample, loaded, tmp_path):
    model, tok = loaded
    out, scores = tmp_path / "metrics.json", tmp_path / "scores.jsonl"
    result = evaluate(
        str(model_dir),
        str(sample),
        str(out),
        save_scores=str(scores),
        max_tokens=2048,
        progress=False,
    )
    metrics = json.loads(out.read_text())
    assert metrics == result.metrics
    assert list(metrics)[:3] == ["model", "model_type", "chat_template"]
    assert metrics["model_type"] == "Seq. Classifier"
    assert metrics["chat_template"] == "easylm-trained"
    assert set(metrics) - set(scoring.META_KEYS) == set(scoring.SUBSETS)

    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    pairs = load_pairs(str(sample))
    assert [r["id"] for r in rows] == [p.id for p in pairs]
    # the accuracies are what the per-pair rewards say
    for subset in scoring.SUBSETS:
        mine = [r for r in rows if r["subset"] == subset]
        acc = sum(r["chosen_reward"] > r["rejected_reward"] for r in mine) / len(mine)
        assert metrics[subset] == pytest.approx(acc)
    # and the rewards are transformers' own, sequence by sequence
    ids = [_easylm_ids(tok, p.prompt, r) for p in pairs[:6] for r in (p.chosen, p.rejected)]
    for k in range(6):
        assert abs(rows[k]["chosen_reward"] - _hf_reward(model, ids[2 * k])) <= TOL
        assert abs(rows[k]["rejected_reward"] - _hf_reward(model, ids[2 * k + 1])) <= TOL
    summary = scoring.summarize(scoring.subset_accuracies(metrics))
    assert result.sections == {k: summary[k] for k in scoring.SECTION_NAMES}
    assert result.overall == summary["Overall"]
    assert result.n_pairs == len(pairs)
    assert 1.0 <= result.padding_ratio <= 1.05
    text = format_summary(result)
    for name in (*scoring.SECTION_NAMES, "Overall"):
        assert name in text

    # batch size does not change any decision
    few = ["alpacaeval-easy", "hep-rust", "math-prm"]
    again = evaluate(str(model_dir), str(sample), subsets=few, max_tokens=64, progress=False)
    assert again.metrics == {
        k: v for k, v in result.metrics.items() if k not in scoring.SUBSETS or k in few
    }

    # no clobbering without overwrite; overwrite replaces
    with pytest.raises(AlreadyExistsError, match=r"already exists$"):
        evaluate(str(model_dir), str(sample), str(out), progress=False)
    evaluate(
        str(model_dir),
        str(sample),
        str(out),
        subsets=few,
        overwrite=True,
        scoring_format="run_rm",
        progress=False,
    )
    assert json.loads(out.read_text())["chat_template"] == "tokenizer"  # as run_rm says


def test_run_rm_without_a_template_needs_a_class_that_appends_eos(tmp_path, sample):
    model_dir = make_reward_model(tmp_path / "m", chat_template=False, layers=1)
    with pytest.raises(EvalError, match="add_eos_token does nothing on PreTrainedTokenizerFast"):
        evaluate(str(model_dir), str(sample), scoring_format="run_rm", progress=False)
    config = model_dir / "tokenizer_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "tokenizer_class": "LlamaTokenizerFast"})
    )
    result = evaluate(
        str(model_dir), str(sample), subsets=["hep-go"], scoring_format="run_rm", progress=False
    )
    assert result.metrics["chat_template"] == "tulu"
    assert set(result.metrics) == {*scoring.META_KEYS, "hep-go"}
    assert result.sections["Reasoning"] == result.metrics["hep-go"]
    assert result.sections["Chat"] is None and result.overall is None


def test_a_tie_is_wrong(tmp_path, sample):
    model_dir = make_reward_model(tmp_path / "m", zero_head=True, layers=1)
    result = evaluate(
        str(model_dir), str(sample), subsets=["hep-go", "donotanswer"], progress=False
    )
    assert result.metrics["hep-go"] == result.metrics["donotanswer"] == 0.0


def test_unknown_subsets_are_scored_but_left_out_of_sections(model_dir, tmp_path, caplog):
    rows = sample_records(2)[:8]
    for r in rows[:3]:
        r["subset"] = "my-new-subset"
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        result = evaluate(str(model_dir), str(data), progress=False)
    assert "my-new-subset" in caplog.text
    assert "my-new-subset" in result.metrics
    assert result.unknown_subsets == ["my-new-subset"]
    known = scoring.subset_accuracies(result.metrics)
    assert "my-new-subset" not in known
    assert result.sections == scoring.section_scores(known)


def test_bad_inputs(model_dir, sample, tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(EvalError, match="no such model directory"):
        evaluate(str(tmp_path / "nope"), str(sample), str(out), progress=False)
    two = make_reward_model(tmp_path / "two", num_labels=2, layers=1)
    with pytest.raises(EvalError, match="num_labels=2"):
        evaluate(str(two), str(sample), str(out), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "id": 1}) + "\n")
    with pytest.raises(EvalError, match=r"missing column.*rejected, subset"):
        evaluate(str(model_dir), str(bad), str(out), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalError, match="empty"):
        evaluate(str(model_dir), str(empty), str(out), progress=False)
    with pytest.raises(EvalError, match="no pairs for subset"):
        evaluate(
            str(model_dir), str(sample), str(out), subsets=["hep-go", "hep-cobol"], progress=False
        )
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in model_dir.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(EvalError, match=r"bare: no tokenizer found \(expected tokenizer.json"):
        evaluate(str(bare), str(sample), str(out), progress=False)
    with pytest.raises(UsageError, match="--scoring must be one of trained, run_rm"):
        evaluate(str(model_dir), str(sample), str(out), scoring_format="tulu", progress=False)
    with pytest.raises(UsageError, match="--chat-template applies to --scoring run_rm"):
        evaluate(str(model_dir), str(sample), str(out), chat_template="tulu", progress=False)
    with pytest.raises(EvalError, match="--dtype fp16 needs a GPU"):
        evaluate(str(model_dir), str(sample), str(out), device="cpu", dtype="fp16", progress=False)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gcs_model_data_and_outputs(model_dir, sample, gcs_bucket):
    storage.upload_tree(model_dir, f"{gcs_bucket}/models/rm")
    storage.upload_file(sample, f"{gcs_bucket}/data/sample.jsonl")
    out = f"{gcs_bucket}/results/metrics.json"
    result = evaluate(
        f"{gcs_bucket}/models/rm",
        f"{gcs_bucket}/data/sample.jsonl",
        out,
        save_scores=f"{gcs_bucket}/results/scores.jsonl",
        subsets=["alpacaeval-easy", "math-prm"],
        progress=False,
    )
    assert json.loads(storage.read_text(out)) == result.metrics
    n = len(load_pairs(str(sample), subsets=["alpacaeval-easy", "math-prm"]))
    assert len(storage.read_text(f"{gcs_bucket}/results/scores.jsonl").splitlines()) == n == 4
    with pytest.raises(AlreadyExistsError, match="already exists"):
        evaluate(f"{gcs_bucket}/models/rm", str(sample), out, progress=False)
