"""Benchmark: `rmeval convert` vs a plain file copy vs the load-everything path.

A ~0.94 GB bf16 reward-model checkpoint (dim 2048, 8 layers, 16 heads, intermediate 5504,
vocab 32000) is written once by flax the way EasyLM's StreamingCheckpointer writes it and
cached outside the repository (RMEVAL_BENCH_CACHE, default ~/.cache/rmeval/bench). In the
same run, each contender runs as its own subprocess so wall time and peak RSS are its own:

- copy:            shutil.copyfile of the checkpoint (the floor: read + write the bytes once);
- startup:         the interpreter importing rmeval's CLI and converter (no data);
- rmeval convert:  the whole command; its data path is the time convert() itself reports;
- load-everything: every tensor unpacked with msgpack + flax into memory, transposed and
                   permuted, a transformers model built, save_pretrained (what EasyLM's
                   converter does, without EasyLM);
- hashing off:     the same command with the weight hashes of provenance.json switched off
                   (rmeval.provenance.ChunkedSha256 made a no-op in that process): what
                   hashing while writing costs;
- hash by reading: hashing off, then the hashes computed by reading the written files back
                   (rmeval.provenance.weights_digests): what a second pass would cost;
- gs:// source:    the same conversion reading from a gcp-storage-emulator on loopback
                   (one request at a time: a correctness/overhead figure, not throughput).

All runs read the checkpoint from the page cache (it is read once before timing). Peak RSS
comes from wait4(); Linux counts the launcher's RSS at spawn in it, so this script keeps
itself small (~20 MB) and the small figures are upper bounds.
Usage: python benchmarks/convert.py [--no-gcs] [--no-baseline] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(dim=2048, n_layers=8, n_heads=16, n_kv_heads=16, intermediate=5504, vocab=32000)
TARGET_WHOLE_S = 3.0
TARGET_DATA_VS_COPY = 4.0
TARGET_RSS_OVER_LARGEST = 0.5e9


def cache_checkpoint() -> Path:
    root = Path(os.environ.get("RMEVAL_BENCH_CACHE", Path.home() / ".cache" / "rmeval" / "bench"))
    tag = "-".join(f"{k}{v}" for k, v in SHAPE.items())
    path = root / f"convert-{tag}" / "streaming_params"
    if not path.exists():
        print(f"writing the benchmark checkpoint with flax -> {path} (once)", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        # in a child process: this one stays small, so the children it starts inherit no
        # large peak RSS (Linux carries the pre-exec RSS into the child's ru_maxrss)
        run([sys.executable, __file__, "--_write", str(path)])
    return path


def write_checkpoint(path: str) -> None:
    import numpy as np

    from rmeval.checkpoints import flaxwriter

    params = flaxwriter.random_llama_params(**SHAPE, head="score", seed=0, dtype=np.float32)
    flaxwriter.write_checkpoint(path, params, float_dtype="bf16")


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes (the child's own), stdout+stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    return wall, usage.ru_maxrss * 1024, out


def best(runs: list[tuple[float, int, str]]) -> tuple[float, int, str]:
    return min(runs, key=lambda r: r[0])


# --------------------------------------------------------------------------- baseline


def load_everything(src: str, out: str) -> None:
    """All tensors in memory, torch model built, save_pretrained (the EasyLM way)."""
    import flax.serialization
    import msgpack
    import numpy as np
    import torch
    import transformers

    params = {}
    with open(src, "rb") as f:
        for key, value in msgpack.Unpacker(f, read_size=83886080, max_buffer_size=0):
            params["/".join(key)] = np.asarray(flax.serialization.from_bytes(None, value))
    dim, heads = SHAPE["dim"], SHAPE["n_heads"]
    hd = dim // heads

    def t(x):
        return torch.from_numpy(np.asarray(x, dtype=np.float32)).to(torch.bfloat16)

    def perm(w, h):  # (out, in), adjacent pairs -> halves
        return w.reshape(h, hd // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    sd = {"model.embed_tokens.weight": t(params["transformer/wte/embedding"])}
    for i in range(SHAPE["n_layers"]):
        p = f"transformer/h/{i}/"
        m = f"model.layers.{i}."
        sd[m + "self_attn.q_proj.weight"] = t(perm(params[p + "attention/wq/kernel"].T, heads))
        sd[m + "self_attn.k_proj.weight"] = t(perm(params[p + "attention/wk/kernel"].T, heads))
        sd[m + "self_attn.v_proj.weight"] = t(params[p + "attention/wv/kernel"].T)
        sd[m + "self_attn.o_proj.weight"] = t(params[p + "attention/wo/kernel"].T)
        sd[m + "mlp.gate_proj.weight"] = t(params[p + "feed_forward/w1/kernel"].T)
        sd[m + "mlp.down_proj.weight"] = t(params[p + "feed_forward/w2/kernel"].T)
        sd[m + "mlp.up_proj.weight"] = t(params[p + "feed_forward/w3/kernel"].T)
        sd[m + "input_layernorm.weight"] = t(params[p + "attention_norm/kernel"])
        sd[m + "post_attention_layernorm.weight"] = t(params[p + "ffn_norm/kernel"])
    sd["model.norm.weight"] = t(params["transformer/ln_f/kernel"])
    sd["score.weight"] = t(params["score/kernel"].T)
    del params
    cfg = transformers.LlamaConfig(
        hidden_size=dim,
        intermediate_size=SHAPE["intermediate"],
        num_hidden_layers=SHAPE["n_layers"],
        num_attention_heads=heads,
        num_key_value_heads=SHAPE["n_kv_heads"],
        vocab_size=SHAPE["vocab"],
        num_labels=1,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model = transformers.LlamaForSequenceClassification(cfg)
    model.load_state_dict(sd, assign=True)
    model.save_pretrained(out)


# --------------------------------------------------------------------------- main


def convert_without_hashing(src: str, out: str, readback: str) -> None:
    """The convert command with ChunkedSha256 a no-op; ``readback`` "1": then hash the
    written files by reading them (the second pass that streaming hashes avoid)."""
    from rmeval import cli, provenance

    provenance.ChunkedSha256.update = lambda self, offset, data: None
    provenance.ChunkedSha256.hexdigest = lambda self: ""
    rc = cli.main(["convert", src, out, "--num-heads", "16"])
    if readback == "1":
        provenance.weights_digests(out)
    raise SystemExit(rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--no-gcs", action="store_true", help="skip the gs:// emulator run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the load-everything run")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per contender (best kept)")
    ap.add_argument("--_load_everything", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_write", help=argparse.SUPPRESS)
    ap.add_argument("--_nohash", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._nohash:
        convert_without_hashing(*args._nohash)
        return
    if args._write:
        write_checkpoint(args._write)
        return
    if args._load_everything:
        load_everything(*args._load_everything)
        return

    py = sys.executable
    src = cache_checkpoint()
    size = src.stat().st_size
    # the index pass in a child, so this process stays small (see cache_checkpoint)
    code = (
        "import sys; from rmeval.checkpoints import easylm; "
        "i = easylm.index_checkpoint(sys.argv[1]); "
        "print(len(i.tensors), max(t.nbytes for t in i.tensors.values()))"
    )
    n_tensors, largest = map(int, run([py, "-c", code, str(src)])[2].split())
    with open(src, "rb") as f:  # warm the page cache (small reads: keep this process small)
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass
    print(
        f"checkpoint: {size / 1e9:.3f} GB bf16, {n_tensors} tensors, largest "
        f"{largest / 1e6:.0f} MB; {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: "
        "other processes share them)",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="rmeval-bench-"))
    results = {}
    try:
        copy_code = f"import shutil; shutil.copyfile({str(src)!r}, {str(work / 'copy')!r})"
        # interleaved, so copy and convert see the same load from other processes
        copies, convs, empties, startups, nohash, readback = [], [], [], [], [], []
        for i in range(args.repeat):
            empties.append(run([py, "-c", "pass"]))
            startups.append(run([py, "-c", "import rmeval.cli, rmeval.checkpoints.convert"]))
            copies.append(run([py, "-c", copy_code]))
            (work / "copy").unlink()
            out = work / f"hf{i}"
            convs.append(
                run([py, "-m", "rmeval", "convert", str(src), str(out), "--num-heads", "16"])
            )
            shutil.rmtree(out)
            for mode, into in (("0", nohash), ("1", readback)):
                into.append(run([py, __file__, "--_nohash", str(src), str(out), mode]))
                shutil.rmtree(out)
        empty, copy, startup = best(empties), best(copies), best(startups)
        results["nohash"], results["readback"] = best(nohash), best(readback)
        results["copy"] = (copy[0] - empty[0], copy[1])
        conv = best(convs)
        data_s = float(re.search(r" in ([\d.]+) s ", conv[2]).group(1))
        results["convert"] = (conv[0], conv[1])

        if not args.no_baseline:
            base = run([py, __file__, "--_load_everything", str(src), str(work / "base")])
            shutil.rmtree(work / "base")
            results["load-everything"] = (base[0], base[1])

        gcs = None
        if not args.no_gcs:
            gcs = gcs_run(py, src, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gb = size / 1e9
    print()
    print(f"{'contender':<34}{'wall s':>9}{'GB/s':>8}{'peak RSS MB':>13}")
    print(
        f"{'copy (shutil.copyfile, data only)':<34}{results['copy'][0]:>9.2f}"
        f"{gb / results['copy'][0]:>8.2f}{results['copy'][1] / 1e6:>13.0f}"
    )
    print(
        f"{'interpreter + imports (startup)':<34}{startup[0]:>9.2f}{'':>8}{startup[1] / 1e6:>13.0f}"
    )
    print(
        f"{'rmeval convert (whole command)':<34}{conv[0]:>9.2f}{gb / conv[0]:>8.2f}{conv[1] / 1e6:>13.0f}"
    )
    print(f"{'rmeval convert (data path)':<34}{data_s:>9.2f}{gb / data_s:>8.2f}{'':>13}")
    for key, label in (
        ("nohash", "convert, hashing off"),
        ("readback", "hashing off + hash by reading"),
    ):
        w, r = results[key][0], results[key][1]
        print(f"{label:<34}{w:>9.2f}{gb / w:>8.2f}{r / 1e6:>13.0f}")
    if "load-everything" in results:
        b = results["load-everything"]
        print(
            f"{'load-everything + save_pretrained':<34}{b[0]:>9.2f}{gb / b[0]:>8.2f}{b[1] / 1e6:>13.0f}"
        )
    if gcs is not None:
        print(
            f"{'rmeval convert, gs:// emulator src':<34}{gcs[0]:>9.2f}{gb / gcs[0]:>8.2f}{gcs[1] / 1e6:>13.0f}"
        )
    print()
    ok = lambda c: "OK " if c else "MISSED"  # noqa: E731
    print("ratios (target):")
    print(
        f"  whole command {conv[0]:.2f} s vs target {TARGET_WHOLE_S:.0f} s: "
        f"{conv[0] / TARGET_WHOLE_S:.2f}x of budget  [{ok(conv[0] <= TARGET_WHOLE_S)}]"
    )
    ratio = data_s / results["copy"][0]
    print(
        f"  data path / copy = {ratio:.2f}x (target <= {TARGET_DATA_VS_COPY:.0f}x, aim 2x)  "
        f"[{ok(ratio <= TARGET_DATA_VS_COPY)}]"
    )
    limit = largest + TARGET_RSS_OVER_LARGEST
    print(
        f"  peak RSS {conv[1] / 1e6:.0f} MB vs largest tensor + 0.5 GB = {limit / 1e6:.0f} MB  "
        f"[{ok(conv[1] <= limit)}]"
    )
    nh, rb = results["nohash"][0], results["readback"][0]
    print(
        f"  weight hashes while writing: convert / hashing off = {conv[0] / nh:.2f}x "
        f"(+{conv[0] - nh:.2f} s); hashing by a second read instead: {rb / nh:.2f}x "
        f"(+{rb - nh:.2f} s)"
    )
    if "load-everything" in results:
        b = results["load-everything"]
        print(
            f"  load-everything / rmeval convert: time {b[0] / conv[0]:.1f}x, "
            f"peak RSS {b[1] / conv[1]:.1f}x"
        )
    if gcs is not None:
        print(
            f"  gs:// emulator / local: {gcs[0] / conv[0]:.1f}x (emulator serves one request "
            "at a time; not a throughput figure)"
        )


def gcs_run(py: str, src: Path, work: Path):
    """Convert from a gcp-storage-emulator (its own process, on loopback); returns
    (wall s, peak RSS) of the conversion, or None when the emulator is not installed."""
    import socket

    exe = Path(py).parent / "gcp-storage-emulator"
    if not exe.exists():
        print("gcp-storage-emulator not installed: skipping the gs:// run")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emu = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}", GOOGLE_CLOUD_PROJECT="bench"
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or emu.poll() is not None:
                print("the emulator did not start: skipping the gs:// run")
                return None
            time.sleep(0.1)
        uri = "gs://bench/run/streaming_params"
        upload = (
            "import sys; from rmeval import storage; "
            "storage.gcs_client().create_bucket('bench'); storage.upload_file(sys.argv[1], sys.argv[2])"
        )
        t = run([py, "-c", upload, str(src), uri], env=env)[0]
        print(f"uploaded to the emulator in {t:.1f} s", flush=True)
        cmd = [py, "-m", "rmeval", "convert", uri, str(work / "hf-gcs"), "--num-heads", "16"]
        return run(cmd, env=env)[:2]
    finally:
        emu.terminate()
        emu.wait(timeout=30)


if __name__ == "__main__":
    main()
