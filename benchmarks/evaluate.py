"""Benchmark: rmeval's RewardBench evaluator vs a run_rm-style baseline, same run.

Model: a random LLaMA reward model (default 4 layers, hidden 256, vocab 32,000; ``--preset
1b`` for a ~1B model on a GPU). Data: the first N pairs of ``rmeval rewardbench-sample``
(all subsets, tens to ~1,500 tokens per text, in dataset order like the real file).

Tokenizer: a byte-level BPE trained on the sample itself (``train_tokenizer``). The
generated text has a small vocabulary, so it uses a few hundred ids of the model's 32,000
embedding rows; for a sequence classifier the vocabulary only costs an embedding lookup,
so this does not change the measured compute. Both sides get the same rendered texts.

Baseline: what RewardBench's run_rm does for a classifier: the transformers
``text-classification`` pipeline, batches of 8 pairs in dataset order, chosen texts then
rejected texts, ``padding=True``, ``function_to_apply="none"``.

Ours: ``rmeval.rewardbench.evaluate.evaluate`` (length-sorted, token-budget packing,
reward at the last real token by attention mask).

Prints seconds, pairs/s, padding ratio (padded tokens / real tokens) for both, the speed-up,
and checks that every decision (chosen > rejected) is the same.

    python benchmarks/evaluate.py            # 600 pairs, CPU fp32 (a few minutes)
    python benchmarks/evaluate.py --quick    # 120 pairs
    python benchmarks/evaluate.py --device cuda --preset 1b --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    # name: (layers, hidden, intermediate, heads, kv heads, vocab)
    "tiny": (4, 256, 688, 8, 8, 32000),
    "1b": (16, 2048, 5632, 32, 8, 32000),
}


def build_model(out: Path, preset: str, texts: list[str]) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rmeval.tokenizer import train_tokenizer

    layers, hidden, inter, heads, kv, vocab = PRESETS[preset]
    train_tokenizer(texts, out, vocab_size=vocab)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # spread the rewards: fewer near-ties
    model.save_pretrained(out)
    return out


class Baseline:
    """run_rm's classifier loop: the text-classification pipeline over batches of 8 pairs
    in dataset order, chosen texts then rejected texts."""

    def __init__(self, model_dir: Path, device: str, dtype):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype)
        model.to(device).eval()
        self.pipe = pipeline(
            "text-classification", model=model, tokenizer=self.tok, device=torch.device(device)
        )
        self.kwargs = {
            "batch_size": 8,
            "truncation": True,
            "padding": True,
            "max_length": 2048,
            "function_to_apply": "none",
        }

    def run(self, texts: list[str]) -> tuple[list[float], float]:
        """Rewards (chosen at 2i, rejected at 2i+1) and seconds."""
        chosen, rejected = texts[0::2], texts[1::2]
        rewards = [0.0] * len(texts)
        t0 = time.perf_counter()
        for start in range(0, len(chosen), 8):
            for offset, group in ((0, chosen), (1, rejected)):
                out = self.pipe(group[start : start + 8], **self.kwargs)
                for k, o in enumerate(out):
                    rewards[2 * (start + k) + offset] = float(o["score"])
        return rewards, time.perf_counter() - t0

    def padded_tokens(self, texts: list[str]) -> int:
        chosen, rejected = texts[0::2], texts[1::2]
        padded = 0
        for start in range(0, len(chosen), 8):
            for group in (chosen, rejected):
                enc = self.tok(group[start : start + 8], truncation=True, max_length=2048)
                lens = [len(x) for x in enc["input_ids"]]
                padded += len(lens) * max(lens)
        return padded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=600)
    p.add_argument("--quick", action="store_true", help="120 pairs, for a fast check")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--max-tokens", type=int, default=None, help="ours: token budget per batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (both sides)")
    p.add_argument(
        "--repeat", type=int, default=2, help="interleaved runs per side; best is reported"
    )
    args = p.parse_args(argv)
    n_pairs = 120 if args.quick else args.pairs

    import torch

    from rmeval.rewardbench import evaluate as ev
    from rmeval.rewardbench.data import load_pairs, sample_records

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    per_subset = -(-n_pairs // 23)
    rows = sample_records(per_subset=per_subset, seed=0)[:n_pairs]
    with tempfile.TemporaryDirectory(prefix="rmeval-bench-") as work:
        work = Path(work)
        data = work / "sample.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        corpus = [
            r[k]
            for r in sample_records(per_subset=4, seed=1)
            for k in ("prompt", "chosen", "rejected")
        ]
        model_dir = build_model(work / "model", args.preset, corpus)

        # the same token ids for both sides: the folder's chat template is the trained
        # format, and the baseline's tokenizer adds the bos in front of it
        from transformers import AutoTokenizer

        from rmeval.rewardbench import formats

        tok = AutoTokenizer.from_pretrained(model_dir)
        pairs = load_pairs(str(data))
        template_name = formats.TRAINED_LABEL
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p in pairs
            for r in (p.chosen, p.rejected)
        ]
        seqs = formats.encode(tok, pairs, formats.TRAINED, ev.DEFAULT_MAX_LENGTH).seqs
        lens = sorted(len(s) for s in seqs)
        real = sum(lens)
        print(
            f"model: {args.preset} LLaMA RM {PRESETS[args.preset]}, {args.device} {args.dtype}, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"data: {n_pairs} pairs / {len(seqs)} texts, tokens per text min {lens[0]} median "
            f"{statistics.median(lens):.0f} max {lens[-1]}, {real} real tokens, chat template {template_name}"
        )

        baseline = Baseline(model_dir, args.device, dtype)
        base_padded = baseline.padded_tokens(texts)
        kwargs = {"max_tokens": args.max_tokens} if args.max_tokens else {}
        base_times, our_times = [], []
        for rep in range(args.repeat):  # interleaved, so both sides see the same machine load
            base_rewards, seconds = baseline.run(texts)
            base_times.append(seconds)
            scores = work / f"scores-{rep}.jsonl"
            result = ev.evaluate(
                str(model_dir),
                str(data),
                device=args.device,
                dtype=args.dtype,
                save_scores=str(scores),
                progress=False,
                **kwargs,
            )
            our_times.append(result.seconds)
            print(
                f"  run {rep + 1}: baseline {seconds:.1f} s, rmeval {result.seconds:.1f} s",
                flush=True,
            )
        ours = [json.loads(line) for line in scores.read_text().splitlines()]

    base_dec = [base_rewards[2 * k] > base_rewards[2 * k + 1] for k in range(n_pairs)]
    our_dec = [r["correct"] for r in ours]
    our_rewards = [x for r in ours for x in (r["chosen_reward"], r["rejected_reward"])]
    max_diff = max(abs(a - b) for a, b in zip(our_rewards, base_rewards, strict=True))
    same = sum(a == b for a, b in zip(base_dec, our_dec, strict=True))

    base_s, our_s = min(base_times), min(our_times)
    print(f"best of {args.repeat} (model loading excluded on both sides):")
    print(f"{'':28}{'seconds':>10}{'pairs/s':>10}{'padding':>10}")
    print(
        f"{'baseline (pipeline, bs 8)':28}{base_s:10.1f}{n_pairs / base_s:10.2f}{base_padded / real:9.3f}x"
    )
    print(
        f"{'rmeval evaluate':28}{our_s:10.1f}{n_pairs / our_s:10.2f}"
        f"{result.padding_ratio:9.3f}x   ({result.n_batches} batches)"
    )
    speedup = base_s / our_s
    print(
        f"speed-up: {speedup:.2f}x pairs/s (target >= 3x); padding {100 * (result.padding_ratio - 1):.1f} % (target <= 5 %)"
    )
    print(f"decisions identical: {same}/{n_pairs}; max |reward difference| {max_diff:.2e}")
    if not args.quick:
        print("(a smaller run: --quick, 120 pairs)")
    ok = same == n_pairs and result.padding_ratio <= 1.05
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
