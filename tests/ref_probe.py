"""Load a model folder with whatever transformers this interpreter has and print what it
sees, as JSON: the tokenizer's class, pad id, token ids of given texts, chat-template output,
and the reward of each text (one unpadded sequence at a time, fp32).

Run by the compatibility tests under transformers 4.43, 4.51 (reference environments) and
5.x (the main one); it imports nothing from rmeval, which those environments do not have.

    python tests/ref_probe.py MODEL_DIR INPUT.json   (INPUT: {"texts": [...], "chats": [...]})
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, input_file: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(input_file, encoding="utf-8") as f:
        spec = json.load(f)
    tok = AutoTokenizer.from_pretrained(model_dir)
    major = int(transformers.__version__.split(".")[0])
    dtype = {"dtype" if major >= 5 else "torch_dtype": torch.float32}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **dtype).eval()
    ids = [list(tok(t)["input_ids"]) for t in spec["texts"]]
    rendered = [tok.apply_chat_template(c, tokenize=False) for c in spec["chats"]]
    with torch.no_grad():
        rewards = [float(model(input_ids=torch.tensor([x])).logits[0, 0]) for x in ids]
    out = {
        "transformers": transformers.__version__,
        "class": type(tok).__name__,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "model_input_names": sorted(tok("a")),
        "model_max_length": tok.model_max_length,
        "ids": ids,
        "rendered": rendered,
        "rendered_ids": [list(tok(r)["input_ids"]) for r in rendered],
        "rewards": rewards,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
