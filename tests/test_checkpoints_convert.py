"""End-to-end: flax-written EasyLM checkpoints -> rmeval convert -> transformers loads the
result -> the HF outputs equal the JAX forward of the raw checkpoint within tolerance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rmeval import cli, storage
from rmeval.checkpoints import convert as conv
from rmeval.checkpoints import reference
from rmeval.errors import AlreadyExistsError, VerifyError
from tests.checkpoint_fixtures import make_checkpoint

CASES = {
    # name: (fixture kwargs, convert kwargs, expected tolerance)
    "llama2-mha-fp32": (
        dict(heads=4, kv_heads=4, float_dtype="fp32"),
        dict(max_shard_size="60KB"),
        reference.EXACT_TOLERANCE,
    ),
    "gqa-bf16-chunked": (
        dict(heads=8, kv_heads=2, float_dtype="bf16", chunk_size=2048),
        {},
        reference.EXACT_TOLERANCE,
    ),
    "llama31-rope-scaling": (
        dict(dim=128, heads=4, kv_heads=1, float_dtype="bf16"),
        dict(rope_theta=500000.0, rope_scaling="llama3"),
        reference.EXACT_TOLERANCE,
    ),
    "causal-lm-fp32": (
        dict(head="lm_head", heads=4, kv_heads=2, float_dtype="fp32"),
        {},
        reference.EXACT_TOLERANCE,
    ),
    "bf16-to-fp32": (dict(heads=4, kv_heads=2), dict(dtype="fp32"), reference.EXACT_TOLERANCE),
    "fp32-to-bf16": (
        dict(heads=4, kv_heads=4, float_dtype="fp32"),
        dict(dtype="bf16"),
        reference.ROUNDED_TOLERANCE,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_convert_matches_easylm_forward(tmp_path, case):
    fx_kwargs, conv_kwargs, tol = CASES[case]
    fx = make_checkpoint(tmp_path / "ckpt" / "streaming_params", **fx_kwargs)
    out = tmp_path / "hf"
    result = conv.convert(
        fx.path, str(out), num_heads=fx.heads, verify=True, progress=False, **conv_kwargs
    )
    v = result.verify
    assert v is not None and v.ok and v.tolerance == tol and v.max_rel <= tol, v
    # the outputs are not degenerate: different sequences give different rewards/logits
    assert len({round(float(np.ravel(x)[0]), 4) for x in v.hf}) == len(v.hf)
    assert result.kind == ("causal" if fx_kwargs.get("head") == "lm_head" else "reward")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_attention_heads"] == fx.heads and cfg["num_key_value_heads"] == fx.kv_heads
    assert not list(tmp_path.glob("hf.partial-*"))
    if case == "llama2-mha-fp32":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1  # really sharded


def test_config_defaults_and_transformers_reading(tmp_path):
    import transformers

    fx = make_checkpoint(tmp_path / "streaming_params", heads=4, kv_heads=2)
    result = conv.convert(fx.path, str(tmp_path / "hf"), num_heads=4, progress=False)
    cfg = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert cfg.rope_parameters["rope_theta"] == 10000.0  # EasyLM's default, not 100000
    assert cfg.rope_parameters["rope_type"] == "default"
    assert cfg.num_labels == 1 and cfg.pad_token_id == 0 and cfg.eos_token_id != cfg.pad_token_id
    assert cfg.architectures == ["LlamaForSequenceClassification"]
    assert str(cfg.dtype).endswith("bfloat16")
    assert result.bytes_written > 0 and result.bytes_read >= sum(
        v.size * 2 for v in fx.flat.values()
    )


def test_rope_scaling_is_exercised_and_read_by_transformers(tmp_path):
    import transformers

    # the llama3 scaling changes the low frequencies of a head_dim-32, theta-500000 rotary
    plain = reference._rope_inv_freq(32, 500000.0, None)
    from tests.test_checkpoints_llama import LLAMA31_ROPE_SCALING  # the published values

    scaled = reference._rope_inv_freq(32, 500000.0, LLAMA31_ROPE_SCALING)
    assert not np.allclose(plain, scaled)
    fx = make_checkpoint(tmp_path / "streaming_params", dim=128, heads=4, kv_heads=1)
    conv.convert(fx.path, str(tmp_path / "hf"), num_heads=4, rope_scaling="llama3", progress=False)
    cfg = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    rp = cfg.rope_parameters
    assert rp["rope_type"] == "llama3" and rp["factor"] == 8.0
    assert rp["low_freq_factor"] == 1.0 and rp["high_freq_factor"] == 4.0
    assert rp["original_max_position_embeddings"] == 8192 and rp["rope_theta"] == 10000.0


def test_llama3_vocab_auto_assumes_llama31_and_says_so(tmp_path, capsys):
    fx = make_checkpoint(tmp_path / "streaming_params", dim=64, heads=4, kv_heads=2, vocab=128256)
    rc = cli.main(["convert", fx.path, str(tmp_path / "hf"), "--num-heads", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "assuming Llama-3.1 settings" in printed
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["pad_token_id"] == 128255 and cfg["rope_parameters"]["rope_theta"] == 500000.0
    assert cfg["rope_parameters"]["rope_type"] == "llama3"


def test_verify_catches_unpermuted_rotary(tmp_path, capsys):
    fx = make_checkpoint(tmp_path / "streaming_params", heads=4, kv_heads=4, float_dtype="fp32")
    out = tmp_path / "hf"
    conv.convert(fx.path, str(out), num_heads=4, progress=False)
    shard = out / "model.safetensors"
    tensors = load_file(str(shard))
    # what a converter that forgets the rotary permutation would write
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.ascontiguousarray(
        fx.flat["transformer/h/0/attention/wq/kernel"].T
    )
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.ascontiguousarray(
        fx.flat["transformer/h/0/attention/wk/kernel"].T
    )
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(VerifyError, match="does not reproduce"):
        reference.verify(fx.path, str(out), raise_on_fail=True)
    assert cli.main(["verify", fx.path, str(out)]) == 1
    assert "rmeval: error:" in capsys.readouterr().err


def test_verify_reads_the_checkpoint_once(tmp_path, monkeypatch):
    from rmeval.checkpoints import easylm

    fx = make_checkpoint(tmp_path / "streaming_params", heads=4, kv_heads=2, float_dtype="fp32")
    conv.convert(fx.path, str(tmp_path / "hf"), num_heads=4, dtype="bf16", progress=False)
    opened = []
    real_init = easylm.CheckpointReader.__init__

    def counting_init(self, uri):
        opened.append(uri)
        real_init(self, uri)

    monkeypatch.setattr(easylm.CheckpointReader, "__init__", counting_init)
    v = reference.verify(fx.path, str(tmp_path / "hf"))
    assert opened == [fx.path]  # one index pass, not a second one for the stored dtypes
    assert v.ok and v.tolerance == reference.ROUNDED_TOLERANCE  # fp32 rounded to bf16


def test_gcs_source_and_output(tmp_path, gcs_bucket):
    fx = make_checkpoint(tmp_path / "streaming_params", heads=4, kv_heads=2, chunk_size=4096)
    src = f"{gcs_bucket}/runs/rm1/streaming_params"
    storage.upload_file(fx.path, src)
    out = f"{gcs_bucket}/models/rm1"
    result = conv.convert(src, out, num_heads=4, progress=False)
    names = {o.name for o in storage.list_objects(out)}
    assert names == {"model.safetensors", "config.json"}
    assert result.bytes_read >= sum(v.size * 2 for v in fx.flat.values())
    v = reference.verify(fx.path, out)
    assert v.ok and v.tolerance == reference.EXACT_TOLERANCE
    # an existing gs:// OUT is refused, --overwrite replaces it
    with pytest.raises(AlreadyExistsError, match="already exists"):
        conv.convert(src, out, num_heads=4, progress=False)
    conv.convert(src, out, num_heads=4, progress=False, overwrite=True, max_shard_size="50KB")
    names = {o.name for o in storage.list_objects(out)}
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert reference.verify(src, out).ok


def test_tokenizer_is_saved_and_pad_id_written(tmp_path):
    from rmeval.tokenizer import train_tokenizer

    texts = [f"the reward for answer {i} is {i * 7 % 13}" for i in range(200)]
    tok_dir = train_tokenizer(texts, tmp_path / "tok", vocab_size=300)
    fx = make_checkpoint(tmp_path / "streaming_params", heads=4, kv_heads=2, vocab=320)
    result = conv.convert(
        fx.path, str(tmp_path / "hf"), num_heads=4, tokenizer=str(tok_dir), progress=False
    )
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["pad_token_id"] == tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template and any("tokenizer" in n for n in result.notes)


# --------------------------------------------------------------------------- bad input


def _run_cli(capsys, *args) -> tuple[int, str]:
    rc = cli.main(["convert", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return rc, err


def _assert_one_line_error(rc: int, err: str, out: Path, *needles: str) -> None:
    assert rc == 1, err
    assert err.startswith("rmeval: error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.partial-*"))


def _drop(name):
    def mutate(params):
        node = params
        *path, leaf = name.split("/")  # deleting a leaf leaves an empty node, as in flax
        for k in path:
            node = node[k]
        del node[leaf]

    return mutate


def _add_extra(params):
    params["transformer"]["h"]["0"]["attention"]["wx"] = {"kernel": np.ones((64, 8), np.float32)}


def _bad_shape(params):
    params["transformer"]["h"]["1"]["feed_forward"]["w1"]["kernel"] = np.ones((64, 80), np.float32)


@pytest.mark.parametrize(
    "mutate, needles",
    [
        (
            _drop("transformer/h/1/attention/wv/kernel"),
            ["missing tensor transformer/h/1/attention/wv/kernel"],
        ),
        (_drop("score"), ["missing tensor score/kernel"]),
        (_add_extra, ["unexpected tensor transformer/h/0/attention/wx/kernel", "byte "]),
        (_bad_shape, ["tensor transformer/h/1/feed_forward/w1/kernel has shape [64, 80]", "byte "]),
    ],
    ids=["missing-layer-tensor", "missing-head", "extra-tensor", "contradicting-shape"],
)
def test_bad_tree_is_one_error_and_no_out(tmp_path, capsys, mutate, needles):
    fx = make_checkpoint(tmp_path / "streaming_params", mutate=mutate)
    out = tmp_path / "hf"
    rc, err = _run_cli(capsys, fx.path, out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, *needles)


def test_bad_files_are_one_error_and_no_out(tmp_path, capsys):
    fx = make_checkpoint(tmp_path / "good" / "streaming_params")
    data = Path(fx.path).read_bytes()
    out = tmp_path / "hf"
    cases = {
        "truncated": (data[: len(data) * 2 // 3], ["truncated", "byte "]),
        "garbage": (np.random.default_rng(3).bytes(4096), ["byte 0"]),
        "empty": (b"", ["empty file"]),
    }
    for name, (payload, needles) in cases.items():
        src = tmp_path / name / "streaming_params"
        src.parent.mkdir()
        src.write_bytes(payload)
        rc, err = _run_cli(capsys, src, out, "--num-heads", 4)
        _assert_one_line_error(rc, err, out, str(src), *needles)


def test_unknown_dtype_train_state_missing_source_existing_out(tmp_path, capsys):
    from rmeval.checkpoints import flaxwriter

    out = tmp_path / "hf"
    odd = tmp_path / "odd" / "streaming_params"
    fx = make_checkpoint(tmp_path / "good" / "streaming_params")
    tree = dict(fx.params)
    tree["transformer"] = dict(tree["transformer"], odd={"kernel": np.ones(4, np.complex64)})
    flaxwriter.write_checkpoint(odd, tree, float_dtype=None)
    rc, err = _run_cli(capsys, odd, out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, "tensor transformer/odd/kernel: unknown dtype 'complex64'")

    # a train state: by its name, and by its content under a params name
    state = {
        "params": {"params": fx.params},
        "opt_state": {"mu": np.zeros(3, np.float32)},
        "step": np.int32(3),
    }
    ts = tmp_path / "ts" / "streaming_train_state_100"
    flaxwriter.write_checkpoint(ts, state)
    rc, err = _run_cli(capsys, ts, out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, "streaming_train_state", "streaming_params file")
    disguised = tmp_path / "ts2" / "streaming_params"
    flaxwriter.write_checkpoint(disguised, state)
    rc, err = _run_cli(capsys, disguised, out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, "streaming_train_state", "byte 0")

    rc, err = _run_cli(capsys, tmp_path / "nope" / "streaming_params", out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, "no such file")

    out.mkdir()
    (out / "keep.txt").write_text("precious")
    rc, err = _run_cli(capsys, fx.path, out, "--num-heads", 4)
    assert rc == 1 and "already exists; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    assert _run_cli(capsys, fx.path, out, "--num-heads", 4, "--overwrite")[0] == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_cli_subprocess_exit_code_and_single_line(tmp_path):
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "convert", str(tmp_path / "missing"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rmeval: error:") and "no such file" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_kill_9_mid_convert_leaves_no_out_and_rerun_succeeds(tmp_path):
    # ~200 MB of fp32 weights converted to bf16: long enough to be killed mid-way
    fx = make_checkpoint(
        tmp_path / "streaming_params",
        dim=1024,
        layers=4,
        heads=8,
        kv_heads=8,
        inter=2816,
        vocab=8192,
        float_dtype="fp32",
    )
    out = tmp_path / "hf"
    cmd = [sys.executable, "-m", "rmeval", "convert", fx.path, str(out), "--num-heads", "8"]
    proc = subprocess.Popen([*cmd, "--dtype", "bf16"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.glob("hf.partial-*") if any(p.glob("*.safetensors"))]
        if found:
            partial = found[0]
            break
        time.sleep(0.005)
    assert partial is not None, "the conversion ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "config.json").exists() and "interrupted run" in rerun.stdout
    assert not partial.exists()  # the dead run's partial build is removed, not just named
    assert list(tmp_path.glob("hf.partial-*")) == []
    assert reference.verify(fx.path, str(out), lengths=(2, 5)).ok


def test_bad_source_to_gcs_output_leaves_nothing(tmp_path, gcs_bucket, capsys):
    fx = make_checkpoint(tmp_path / "good" / "streaming_params")
    data = Path(fx.path).read_bytes()
    src = f"{gcs_bucket}/runs/rm/streaming_params"
    storage.write_bytes(src, data[: len(data) // 2])
    out = f"{gcs_bucket}/models/rm"
    rc = cli.main(["convert", src, out, "--num-heads", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("rmeval: error:") and "truncated" in err and "\n" not in err
    assert list(storage.list_objects_if_any(out)) == []


def test_converter_does_not_import_jax_flax_or_torch():
    code = (
        "import sys, rmeval.cli, rmeval.checkpoints.convert, rmeval.checkpoints.flaxwriter; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'torch', "
        "'transformers'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- NaN / Inf


def _poison(name, value, where=(0, 0)):
    """Put one NaN/Inf (or an fp16-overflowing value) into tensor ``name``."""

    def mutate(params):
        node = params
        *path, leaf = name.split("/")
        for k in path:
            node = node[k]
        arr = np.array(node[leaf], dtype=np.float32)
        arr[where if arr.ndim == 2 else where[:1]] = value
        node[leaf] = arr

    return mutate


@pytest.mark.parametrize(
    "tensor, value, fx_kwargs, extra",
    [
        ("transformer/h/1/attention/wq/kernel", np.nan, {}, []),  # rotary-permuted, bf16
        ("transformer/h/0/feed_forward/w2/kernel", np.inf, {"float_dtype": "fp32"}, []),
        ("transformer/wte/embedding", -np.inf, {}, []),  # copied as stored
        ("transformer/ln_f/kernel", np.nan, {"float_dtype": "fp32"}, ["--dtype", "bf16"]),
        ("score/kernel", 1e6, {"float_dtype": "fp32"}, ["--dtype", "fp16"]),  # overflows
    ],
    ids=["wq-nan", "w2-inf-fp32", "embedding-inf", "norm-nan-cast", "fp16-overflow"],
)
def test_non_finite_tensor_fails_the_conversion_naming_it(
    tmp_path, capsys, tensor, value, fx_kwargs, extra
):
    fx = make_checkpoint(tmp_path / "streaming_params", mutate=_poison(tensor, value), **fx_kwargs)
    out = tmp_path / "hf"
    rc, err = _run_cli(capsys, fx.path, out, "--num-heads", 4, *extra)
    needles = [f"{tensor}: the tensor holds NaN or Inf values", "nothing was converted"]
    if value == 1e6:
        needles.append("once cast to float16")
    _assert_one_line_error(rc, err, out, *needles)


def test_non_finite_gcs_source_fails_too(tmp_path, gcs_bucket, capsys):
    fx = make_checkpoint(
        tmp_path / "streaming_params", mutate=_poison("transformer/wte/embedding", np.nan)
    )
    src = f"{gcs_bucket}/ckpt/streaming_params"
    storage.upload_file(fx.path, src)
    out = tmp_path / "hf"
    rc, err = _run_cli(capsys, src, out, "--num-heads", 4)
    _assert_one_line_error(rc, err, out, "transformer/wte/embedding: the tensor holds NaN")


def test_verify_says_the_checkpoint_holds_non_finite_values(tmp_path, capsys):
    good = make_checkpoint(tmp_path / "good" / "streaming_params")
    bad = make_checkpoint(
        tmp_path / "bad" / "streaming_params",
        mutate=_poison("transformer/h/0/attention/wq/kernel", np.nan),
    )
    out = tmp_path / "hf"
    assert _run_cli(capsys, good.path, out, "--num-heads", 4)[0] == 0
    rc = cli.main(["verify", bad.path, str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err, err
    assert "the checkpoint holds non-finite values" in err
    assert "tensor transformer/h/0/attention/wq/kernel has 1 NaN or Inf" in err
    assert "--model-size" not in err
    # convert --verify on it stops at the conversion's own check, with the same diagnosis
    rc, err = _run_cli(capsys, bad.path, tmp_path / "hf2", "--num-heads", 4, "--verify")
    _assert_one_line_error(rc, err, tmp_path / "hf2", "holds NaN or Inf values")


# --------------------------------------------------------------------------- gs:// publish


def test_gcs_output_without_config_is_incomplete_and_replaced(tmp_path, gcs_bucket, capsys):
    fx = make_checkpoint(tmp_path / "streaming_params")
    out = f"{gcs_bucket}/models/rm"
    # what a run killed while copying into place leaves: shards, no config.json
    storage.write_bytes(f"{out}/model.safetensors", b"half")
    storage.write_bytes(f"{out}/stale-extra.bin", b"old")
    rc, err = _run_cli(capsys, fx.path, out, "--num-heads", 4)
    assert rc == 0, err
    names = sorted(o.name for o in storage.list_objects(out))
    assert "config.json" in names and "stale-extra.bin" not in names
    assert storage.read_bytes(f"{out}/model.safetensors") != b"half"
    # no staging prefix is left next to it
    assert [o.name for o in storage.list_objects(f"{gcs_bucket}/models")] == [
        f"rm/{n}" for n in names
    ]
    # a complete model is refused without --overwrite
    rc, err = _run_cli(capsys, fx.path, out, "--num-heads", 4)
    assert rc == 1 and "already exists; pass --overwrite" in err


@pytest.mark.slow
def test_kill_9_mid_gcs_upload_leaves_out_untouched_and_rerun_cleans_up(tmp_path, gcs_bucket):
    fx = make_checkpoint(
        tmp_path / "streaming_params", dim=256, layers=4, heads=4, kv_heads=4, inter=512, vocab=4096
    )
    out = f"{gcs_bucket}/models/rm"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "rmeval", "convert", fx.path, out, "--num-heads", "4"]
    proc = subprocess.Popen([*cmd, "--max-shard-size", "200KB"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staged = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = list(storage.list_objects_if_any(f"{gcs_bucket}/models"))
        if len(staged) >= 2:  # two shards uploaded, more to come
            break
        time.sleep(0.01)
    assert len(staged) >= 2, "the upload ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(storage.list_objects_if_any(out)) == []  # nothing visible at OUT
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by an interrupted run" in rerun.stdout
    left = [o.name for o in storage.list_objects(f"{gcs_bucket}/models")]
    assert left and all(n.startswith("rm/") for n in left), left
    assert storage.exists(f"{out}/config.json")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_finite_check_agrees_with_numpy_on_every_16_bit_pattern(dtype):
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if dt.itemsize == 2:
        values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dt)
    else:
        values = np.array([0, 1, -1, 3e38, -3e38, np.inf, -np.inf, np.nan], np.float32)
    finite = np.isfinite(values.astype(np.float32))
    for v, ok in zip(values, finite, strict=True):
        assert conv._all_finite(np.array([v], dt).view(np.uint8), dt) == bool(ok), v
    assert conv._all_finite(values[finite].view(np.uint8), dt)


def test_kill_9_while_replacing_a_gcs_model_keeps_the_old_one(tmp_path, gcs_bucket, capsys):
    """--overwrite of a gs:// model, killed while the new files are copied in: OUT is never
    a mix of two models beside a config.json, and the next conversion to OUT puts the old
    model back first (then, without --overwrite, refuses to replace it)."""
    from tests.kill_at import run_killed

    shards = ("--num-heads", "4", "--max-shard-size", "20KB")  # several shards per model
    models = {}
    for seed in (1, 2):
        fx = make_checkpoint(tmp_path / f"s{seed}" / "streaming_params", seed=seed)
        assert cli.main(["convert", fx.path, str(tmp_path / f"hf{seed}"), *shards]) == 0
        files = {p.name: p.read_bytes() for p in (tmp_path / f"hf{seed}").iterdir()}
        models[seed] = (fx.path, files)
    out = f"{gcs_bucket}/models/rm"

    def there() -> dict[str, bytes]:
        return {o.name: storage.read_bytes(o.uri) for o in storage.list_objects_if_any(out)}

    assert cli.main(["convert", models[1][0], out, *shards]) == 0 and there() == models[1][1]
    copy_in = r"/copyTo/b/[^/]+/o/models%2Frm%2F"  # a file copied into OUT
    run_killed("http", copy_in, "rmeval", "convert", models[2][0], out, *shards, "--overwrite",
               nth=3)  # fmt: skip
    now = there()
    assert "config.json" not in now or now in (models[1][1], models[2][1]), "a mixed model"
    capsys.readouterr()
    rc, err = _run_cli(capsys, models[2][0], out, *shards)
    assert rc == 1 and "already exists; pass --overwrite" in err
    assert there() == models[1][1]
    assert [o.name for o in storage.list_objects(f"{gcs_bucket}/models")] == [
        f"rm/{n}" for n in sorted(models[1][1])
    ]
