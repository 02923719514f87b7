"""transformers 4.43 (the upstream conversion image's) and 4.51 (RewardBench 0.1.4's pin) load
a folder rmeval converted from a real flax-written checkpoint exactly as transformers 5 does:
the same tokenizer class, token ids, pad id, model inputs, chat-template output and reward.

Each version runs the same probe script (tests/ref_probe.py) in its own interpreter; the
4.x ones are the reference environments ``make test`` builds (tests/refenv.py)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests import refenv
from tests.converted_fixtures import CHATS, converted_model

pytestmark = pytest.mark.slow

PROBE = {
    "texts": [
        "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>",
        "  leading and trailing whitespace \n\n",
        "a</s> text after an eos, <s> and a bos",
        "def f(x):\n    return x ** 2  # code\n\tindented\n",
        "Zürich, naïve café, 東京, emoji 😀",
        " ".join(f"word{i % 97} answer" for i in range(1500)),  # over 2048 tokens
    ],
    "chats": CHATS,
}


@pytest.fixture(scope="module", params=[(refenv.TF443, "4.43."), (refenv.RUNRM, "4.51.")])
def older(request):
    """(interpreter, version prefix) of a reference environment; skips without one."""
    var, version = request.param
    return refenv.python(var), version


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    return {kind: converted_model(root, kind) for kind in ("sentencepiece", "bpe")}


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    path.write_text(json.dumps(PROBE))
    return path


def _probe(interpreter: str, model_dir, probe_file, cwd) -> dict:
    out = refenv.run(interpreter, "ref_probe.py", str(model_dir), str(probe_file), cwd=cwd)
    return json.loads(out)


@pytest.fixture(scope="module")
def with_5(models, probe_file, tmp_path_factory):
    """What transformers 5 (this environment) sees, per kind."""
    cwd = tmp_path_factory.mktemp("probe5")
    return {kind: _probe(sys.executable, d, probe_file, cwd) for kind, d in models.items()}


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_transformers_4_loads_the_converted_folder_like_5(
    older, models, probe_file, with_5, kind, tmp_path
):
    interpreter, version = older
    four = _probe(interpreter, models[kind], probe_file, tmp_path)
    five = with_5[kind]
    assert five["transformers"].startswith("5.") and four["transformers"].startswith(version)
    assert four["class"] == "PreTrainedTokenizerFast"
    for key in (
        "ids",
        "pad_token_id",
        "eos_token_id",
        "model_input_names",
        "model_max_length",
        "rendered",
        "rendered_ids",
    ):
        assert four[key] == five[key], key
    assert four["pad_token_id"] is not None and four["pad_token_id"] != four["eos_token_id"]
    assert four["model_input_names"] == ["attention_mask", "input_ids"]  # no token_type_ids
    assert (
        four["model_max_length"]
        == json.loads((models[kind] / "config.json").read_text())["max_position_embeddings"]
    )
    assert four["rendered"][0] == "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>"  # trained
    assert (
        four["rendered"][1] == "<|user|>\npadded prompt\n<|assistant|>\ndef f(x):\n    return x</s>"
    )
    assert max(len(x) for x in four["ids"]) > 2048
    for a, b in zip(four["rewards"], five["rewards"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (a, b)
