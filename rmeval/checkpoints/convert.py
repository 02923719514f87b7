"""Streaming EasyLM -> Hugging Face conversion.

One pass: the index pass (headers only) tells every tensor's shape and dtype, so every
safetensors header and every tensor's place in its shard is known before any data is read.
Each tensor is then read once (ranged, parallel reads for gs://) into one reusable buffer,
transposed / rotary-permuted / cast in cache-sized tiles by a few threads, and written once
with ``os.pwrite`` at its precomputed offset in its shard. Peak memory is about the largest
tensor plus a few tile buffers. Every block is checked for NaN/Inf right where it is
written, still in cache: a broken checkpoint fails naming the tensor, with no second pass.

The output is built by :func:`rmeval.storage.staged_dir` (in ``OUT.partial-<owner>-<pid>-<id>``;
for gs:// outputs a local temporary directory, uploaded under ``OUT.partial-…/`` and copied
into OUT with config.json last) and swapped in only when complete and, with
``verify=True``, verified: an existing OUT survives any failure, and what a ``kill -9``
leaves is repaired by the next conversion to OUT. This module never imports jax or flax;
verification lives in :mod:`rmeval.checkpoints.reference`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rmeval import naming, storage
from rmeval.checkpoints import llama
from rmeval.checkpoints.easylm import CheckpointReader, numpy_dtype
from rmeval.errors import AlreadyExistsError, CheckpointError, ConvertError, UsageError
from rmeval.provenance import ChunkedSha256, file_digest, index_sha256

if TYPE_CHECKING:
    from rmeval.checkpoints.reference import VerifyResult

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
TILE = 128  # transpose tile edge (elements); measured fastest for bf16 on x86
BLOCK_BYTES = 1024 * 1024  # output rows per task: transposed, then written while still in cache
PREFETCH_BYTES = 256 * 1024 * 1024  # the read-ahead buffer (tensors above it are not prefetched)
COPY_BYTES = 4 * 1024 * 1024  # buffer of tensors copied as stored (local sources)
SINGLE_SHARD = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class ConvertResult:
    out: str
    kind: str  # "reward" | "causal"
    config: dict
    bytes_read: int
    bytes_written: int
    seconds: float
    peak_rss_bytes: int
    notes: list[str] = field(default_factory=list)
    verify: VerifyResult | None = None
    # sha256 of the checkpoint's index; chunked sha256 of each written file, computed as
    # it was written (rmeval.provenance.ChunkedSha256)
    index_sha256: str = ""
    weights_sha256: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        mb_s = self.bytes_read / max(self.seconds, 1e-9) / 1e6
        return (
            f"converted {self.kind} model -> {self.out}: read {self.bytes_read / 1e6:.1f} MB, "
            f"wrote {self.bytes_written / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({mb_s:.0f} MB/s), peak RSS {self.peak_rss_bytes / 1e6:.0f} MB"
        )


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, 1000 -> 1000."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"--max-shard-size {text!r}: expected a size like 5GB, 500MB or 2GiB")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}.get(unit)
    if mult is None:
        mult = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise UsageError(f"--max-shard-size {text!r} must be positive")
    return size


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# --------------------------------------------------------------------------- layout


@dataclass
class _Placed:
    plan: llama.TensorPlan
    out_dtype: np.dtype
    shard: int
    offset: int  # absolute byte offset in the shard file
    nbytes: int


@dataclass
class _Out:
    """An open shard file and the digest of what has been written to it."""

    fd: int
    digest: ChunkedSha256


@dataclass
class _Shard:
    name: str
    header: bytes
    size: int
    tensors: list[_Placed]


def _layout(plans: list[llama.TensorPlan], out_dtype: str | None, max_shard: int) -> list[_Shard]:
    groups: list[list[tuple[llama.TensorPlan, np.dtype, int]]] = [[]]
    current = 0
    for p in plans:
        dt = numpy_dtype(out_dtype or p.src.dtype)
        nbytes = math.prod(p.out_shape) * dt.itemsize
        if groups[-1] and current + nbytes > max_shard:
            groups.append([])
            current = 0
        groups[-1].append((p, dt, nbytes))
        current += nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        name = SINGLE_SHARD if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        pos = 0
        rel = []
        for p, dt, nbytes in group:
            header[p.hf_name] = {
                "dtype": SAFETENSORS_DTYPES[dt.name],
                "shape": list(p.out_shape),
                "data_offsets": [pos, pos + nbytes],
            }
            rel.append(pos)
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        start = 8 + len(raw)
        placed = [
            _Placed(p, dt, i, start + r, nb) for (p, dt, nb), r in zip(group, rel, strict=True)
        ]
        shards.append(_Shard(name, len(raw).to_bytes(8, "little") + raw, start + pos, placed))
    return shards


# --------------------------------------------------------------------------- data path


def _pwrite_all(out: _Out, data: memoryview | np.ndarray | bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of the shard and hash it (still in cache)."""
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).view(np.uint8).data
    data = memoryview(data).cast("B")
    out.digest.update(offset, data)
    done = 0
    while done < len(data):
        done += os.pwrite(out.fd, data[done : done + (1 << 30)], offset + done)


def _same_width_uint(dt: np.dtype) -> np.dtype:
    return np.dtype(f"u{dt.itemsize}")


# A 16-bit float is NaN or Inf iff its bits without the sign are at least those of +Inf.
_HALF_INF_BITS = {"bfloat16": 0x7F80, "float16": 0x7C00}


def _all_finite(block: np.ndarray, dtype: np.dtype) -> bool:
    """True when every value of ``block`` (raw elements of float ``dtype``, any view of the
    same width) is finite. Runs on a block that is still in cache, right where it is
    written: the conversion makes no second pass over the data. 16-bit floats are checked
    on their bits (ml_dtypes' bf16 ufuncs are ~6x slower): NaN and Inf are the patterns
    whose magnitude bits are at least +Inf's."""
    limit = _HALF_INF_BITS.get(dtype.name)
    if limit is not None:
        bits = block.reshape(-1).view(np.uint16)
        # two plain reductions, no temporary: negative NaN/Inf are the largest unsigned
        # patterns, positive ones the largest signed (int16) patterns
        return bits.size == 0 or (
            int(bits.max()) < (limit | 0x8000) and int(bits.view(np.int16).max()) < limit
        )
    if dtype.kind != "f":
        return True
    return bool(np.isfinite(block.reshape(-1).view(dtype)).all())


def _nonfinite_error(placed: _Placed) -> CheckpointError:
    p = placed.plan
    cast = p.src.np_dtype != placed.out_dtype
    where = f" once cast to {placed.out_dtype.name}" if cast else ""
    return CheckpointError(
        f"{p.src.name}: the tensor holds NaN or Inf values{where}; the checkpoint is broken "
        "(a diverged or corrupted training run), so nothing was converted"
        + ("; or choose a wider --dtype" if cast else "")
    )


class _Writer:
    """Transforms tensors from a source buffer and writes them at their shard offsets."""

    def __init__(self, threads: int):
        self.threads = max(1, threads)
        self.pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="rmeval-tr")
            if self.threads > 1
            else None
        )
        self._local = threading.local()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def _buffer(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(max(nbytes, BLOCK_BYTES), dtype=np.uint8)
            self._local.buf = buf
        return buf

    def _run(self, jobs: list) -> None:
        if self.pool is None or len(jobs) == 1:
            for j in jobs:
                j()
        else:
            for f in [self.pool.submit(j) for j in jobs]:
                f.result()

    def write(self, shard: _Out, placed: _Placed, src_bytes: np.ndarray) -> None:
        p = placed.plan
        src_dt, dst_dt = p.src.np_dtype, placed.out_dtype
        same = src_dt == dst_dt
        if same:  # move raw bits: integer copies are faster than ml_dtypes' bf16 loops
            src_dt = dst_dt = _same_width_uint(dst_dt)
        src = src_bytes.view(src_dt)
        if not p.transform.transposes:
            if same:
                _write_checked(shard, placed, src_bytes, placed.offset)
                return
            flat = src.reshape(-1)
            step = max(1, BLOCK_BYTES // dst_dt.itemsize)

            def cast(s: int) -> None:
                e = min(flat.size, s + step)
                out = self._buffer((e - s) * dst_dt.itemsize)[: (e - s) * dst_dt.itemsize]
                with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                    np.copyto(out.view(dst_dt), flat[s:e], casting="unsafe")
                if not _all_finite(out, placed.out_dtype):
                    raise _nonfinite_error(placed)
                _pwrite_all(shard, out, placed.offset + s * dst_dt.itemsize)

            self._run([lambda s=s: cast(s) for s in range(0, flat.size, step)])
            return
        n_in, n_out = p.src.shape  # flax kernel (in, out); HF weight (out, in)
        kernel = src.reshape(n_in, n_out)
        row_bytes = n_in * dst_dt.itemsize
        rows_per_block = max(TILE, (BLOCK_BYTES // row_bytes) // TILE * TILE)
        jobs = []
        for dst0, col0, count, step in p.row_segments():
            for r in range(0, count, rows_per_block):
                n = min(rows_per_block, count - r)
                jobs.append(
                    lambda d=dst0 + r, c=col0 + r * step, n=n, s=step: self._block(
                        shard, placed, kernel, dst_dt, d, c, n, s
                    )
                )
        self._run(jobs)

    def _block(self, shard, placed: _Placed, kernel, dst_dt, dst_row, src_col, n, step) -> None:
        n_in = kernel.shape[0]
        nbytes = n * n_in * dst_dt.itemsize
        out = self._buffer(nbytes)[:nbytes].view(dst_dt).reshape(n, n_in)
        cols = kernel[:, src_col : src_col + (n - 1) * step + 1 : step]  # (n_in, n)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is checked below
            for r in range(0, n, TILE):
                for c in range(0, n_in, TILE):
                    np.copyto(
                        out[r : r + TILE, c : c + TILE],
                        cols[c : c + TILE, r : r + TILE].T,
                        casting="unsafe",
                    )
        if not _all_finite(out, placed.out_dtype):
            raise _nonfinite_error(placed)
        _pwrite_all(shard, out, placed.offset + dst_row * n_in * dst_dt.itemsize)


def _write_checked(shard: _Out, placed: _Placed, data: np.ndarray, offset: int) -> None:
    """Write raw bytes stored exactly as they are written (no transform, no cast), block
    by block, each checked while it is in cache."""
    for s in range(0, data.size, BLOCK_BYTES):
        block = data[s : s + BLOCK_BYTES]
        if not _all_finite(block, placed.out_dtype):
            raise _nonfinite_error(placed)
        _pwrite_all(shard, block, offset + s)


def _copy_plain(reader: CheckpointReader, placed: _Placed, shard: _Out, buf: np.ndarray) -> None:
    """A tensor stored exactly as written (embedding, norms), from a local source: read,
    checked and written block by block through one small buffer, never whole in memory."""
    info = placed.plan.src
    for start in range(0, info.nbytes, buf.nbytes):
        view = buf[: min(buf.nbytes, info.nbytes - start)]
        reader.read_into(info, view, start=start)
        _write_checked(shard, placed, view, placed.offset + start)


# --------------------------------------------------------------------------- output dir


def _check_out_free(out: str, overwrite: bool, notes: list[str]) -> None:
    """Refuse an existing OUT unless ``overwrite``, after repairing what an interrupted
    conversion to OUT left (:func:`rmeval.storage.dir_state`). A gs:// OUT without
    config.json (copied into place last) is what an interrupted publish left: replaced."""
    state = storage.dir_state(out, marker=llama.CONFIG_FILE, notes=notes)
    if state == storage.INCOMPLETE:
        notes.append(f"replacing {out}: incomplete (no {llama.CONFIG_FILE}; an interrupted run)")
    elif state == storage.COMPLETE and not overwrite:
        raise AlreadyExistsError(out)


# --------------------------------------------------------------------------- convert


def convert(
    src: str,
    out: str,
    *,
    model_size: str = "auto",
    num_heads: int | None = None,
    rope_theta: float | None = None,
    rope_scaling: str | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    verify: bool = False,
    progress: bool = True,
) -> ConvertResult:
    """Convert the EasyLM streaming checkpoint ``src`` into a Hugging Face directory ``out``
    (local or gs://). See the module docstring for the guarantees."""
    t0 = time.perf_counter()
    src, out = os.fspath(src), os.fspath(out).rstrip("/")
    if naming.is_train_state_file(storage.basename(src)):
        raise CheckpointError(
            f"{src}: is a streaming_train_state file (optimizer state included); convert the "
            "streaming_params file next to it"
        )
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    max_shard = parse_size(max_shard_size)
    notes: list[str] = []
    _check_out_free(out, overwrite, notes)

    with CheckpointReader(src) as reader:
        index = reader.index
        spec, spec_notes = llama.infer_spec(index, model_size, num_heads, rope_theta, rope_scaling)
        notes += spec_notes
        plans = llama.plan(index, spec)
        stored = {p.src.dtype for p in plans}
        out_dtype = DTYPES[dtype] if dtype else (stored.pop() if len(stored) == 1 else "float32")
        if not dtype and len(stored) > 1:
            notes.append(f"mixed stored dtypes {sorted(stored)}; writing float32")

        with storage.staged_dir(out, marker=llama.CONFIG_FILE, overwrite=overwrite) as build:
            try:
                result = _build(
                    reader, plans, spec, out_dtype, max_shard, build, tokenizer, progress
                )
            except OSError as exc:
                where = out if not storage.is_gcs(out) else tempfile.gettempdir()
                raise storage.write_error(
                    exc, where, "write the converted model", ConvertError
                ) from exc
            result.out = out
            result.notes[:0] = notes
            if verify:
                from rmeval.checkpoints.reference import verify as run_verify

                result.verify = run_verify(src, str(build), raise_on_fail=True)
    result.seconds = time.perf_counter() - t0
    result.peak_rss_bytes = peak_rss_bytes()
    for n in result.notes:
        log.debug("note: %s", n)
    return result


def _build(
    reader: CheckpointReader,
    plans: list[llama.TensorPlan],
    spec: llama.LlamaSpec,
    out_dtype: str,
    max_shard: int,
    build: Path,
    tokenizer: str | None,
    progress: bool,
) -> ConvertResult:
    """Write the model (shards, index, tokenizer, config.json) into ``build``."""
    notes: list[str] = []
    written, digests = _write_model(reader, plans, out_dtype, max_shard, build, progress)
    pad_id = None
    if tokenizer:
        from rmeval.tokenizer import prepare_tokenizer

        info = prepare_tokenizer(
            tokenizer,
            build,
            vocab_size=spec.vocab_size,
            model_max_length=spec.max_position_embeddings,
        )
        pad_id = info.pad_token_id
        notes.append(
            f"tokenizer ({info.kind}): chat template {info.chat_template}, pad "
            f"{info.pad_token!r} (id {pad_id})"
        )
    else:
        notes.append(
            "no --tokenizer: model only; pass --tokenizer to save one with the chat "
            "template and pad token"
        )
    config = llama.hf_config(spec, out_dtype, pad_id)
    (build / llama.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    written += (build / llama.CONFIG_FILE).stat().st_size
    return ConvertResult(
        out=str(build),
        kind=spec.kind,
        config=config,
        bytes_read=reader.bytes_read,
        bytes_written=written,
        seconds=0.0,
        peak_rss_bytes=0,
        notes=notes,
        index_sha256=index_sha256(reader.index),
        weights_sha256=digests,
    )


def _allocate(fd: int, size: int) -> None:
    """Reserve the shard's blocks up front (much faster page-cache writes on ext4/xfs than
    filling a sparse file); plain truncate where the filesystem cannot."""
    os.ftruncate(fd, size)
    if hasattr(os, "posix_fallocate") and size:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


def _is_plain_copy(t: _Placed) -> bool:
    return not t.plan.transform.transposes and t.plan.src.np_dtype == t.out_dtype


def _prefetched(reader: CheckpointReader, placed: list[_Placed]):
    """Yield ``(tensor, raw bytes)`` in order, reading the next tensor in a background
    thread while the caller transforms the current one. Two buffers: one the size of the
    largest tensor, one of at most PREFETCH_BYTES; a tensor larger than the free buffer is
    read when its turn comes, so peak memory stays ~largest tensor + PREFETCH_BYTES."""
    if not placed:
        return
    sizes = [t.plan.src.nbytes for t in placed]
    big = np.empty(max(sizes), dtype=np.uint8)
    small_size = max((n for n in sizes if n <= PREFETCH_BYTES), default=0)
    small = np.empty(small_size, dtype=np.uint8) if small_size else None
    pool = ThreadPoolExecutor(1, thread_name_prefix="rmeval-prefetch")

    def read(i: int, buf: np.ndarray) -> np.ndarray:
        view = buf[: sizes[i]]
        reader.read_into(placed[i].plan.src, view)
        return view

    try:
        pending = None  # (index, future, buffer)
        for i, t in enumerate(placed):
            if pending is not None and pending[0] == i:
                data, in_use = pending[1].result(), pending[2]
            else:
                data, in_use = read(i, big), big
            pending = None
            nxt = i + 1
            if nxt < len(placed):
                free = small if in_use is big else big
                if free is not None and sizes[nxt] <= free.nbytes:
                    pending = (nxt, pool.submit(read, nxt, free), free)
            yield t, data
        if pending is not None:
            pending[1].result()
    finally:
        pool.shutdown(wait=True)


def _write_model(
    reader: CheckpointReader,
    plans: list[llama.TensorPlan],
    out_dtype: str,
    max_shard: int,
    build: Path,
    progress: bool,
) -> tuple[int, dict[str, str]]:
    """Write the shards (and their index); returns the bytes written and the chunked
    sha256 of each file written."""
    from tqdm.auto import tqdm

    shards = _layout(plans, out_dtype, max_shard)
    fds: list[_Out] = []
    writer = _Writer(threads=min(4, os.cpu_count() or 1))
    total = sum(p.src.nbytes for p in plans)
    try:
        for sh in shards:
            fd = os.open(build / sh.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fds.append(_Out(fd, ChunkedSha256(sh.size)))
            _allocate(fd, sh.size)
            _pwrite_all(fds[-1], sh.header, 0)
        placed = sorted(
            (t for sh in shards for t in sh.tensors), key=lambda t: t.plan.src.pieces[0][0]
        )
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="convert",
            disable=None if progress else True,
        ) as bar:
            # tensors stored exactly as written (embedding, norms) of a local checkpoint
            # stream through one small buffer; the rest through the prefetching reader and
            # the tiled writer. Every block is checked for NaN/Inf where it is written.
            direct = [t for t in placed if _is_plain_copy(t)] if not reader.is_gcs else []
            if direct:
                buf = np.empty(min(COPY_BYTES, max(t.plan.src.nbytes for t in direct)), np.uint8)
                for t in direct:
                    _copy_plain(reader, t, fds[t.shard], buf)
                    bar.update(t.plan.src.nbytes)
            copied = {id(t) for t in direct}
            rest = [t for t in placed if id(t) not in copied]
            for t, data in _prefetched(reader, rest):
                writer.write(fds[t.shard], t, data)
                bar.update(t.plan.src.nbytes)
    finally:
        writer.close()
        for o in fds:
            with contextlib.suppress(OSError):
                os.close(o.fd)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for sh in shards for t in sh.tensors)},
            "weight_map": {t.plan.hf_name: sh.name for sh in shards for t in sh.tensors},
        }
        (build / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    digests = {sh.name: o.digest.hexdigest() for sh, o in zip(shards, fds, strict=True)}
    if len(shards) > 1:
        digests[INDEX_NAME] = file_digest(build / INDEX_NAME)  # a few KB
    return sum(sh.size for sh in shards) + (
        (build / INDEX_NAME).stat().st_size if len(shards) > 1 else 0
    ), digests
