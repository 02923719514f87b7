"""Read EasyLM streaming checkpoints (``streaming_params*``) without EasyLM, JAX or flax.

The file is a plain concatenation of msgpack ``[key, value]`` entries; ``key`` is the path
in the parameter tree and ``value`` is a msgpack *bin* holding ``flax.serialization.to_bytes``
of one array: an ext (type 1 = ndarray, 3 = numpy scalar) whose payload is
``[shape, dtype name, raw C-order bytes]``, or, for arrays above flax's chunk limit, a map
``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": ext, ...}}``.

:func:`index_checkpoint` walks the stream reading only the msgpack headers (a few hundred
bytes per tensor, fetched through small windows, ranged reads for ``gs://``) and records
where each tensor's raw bytes lie. :class:`CheckpointReader` then reads a tensor's bytes by
offset into a caller-supplied buffer, several ranges in parallel for ``gs://``.

Every malformed input raises :class:`CheckpointError` with one line naming the file, the
byte offset and the tensor at fault.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rmeval import storage
from rmeval.errors import CheckpointError, StoreError

log = logging.getLogger(__name__)

# dtype names flax writes (``arr.dtype.name``) that we accept, with their numpy dtypes.
_FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
KNOWN_DTYPES = _FLOAT_DTYPES + _INT_DTYPES

EXT_NDARRAY = 1
EXT_NPSCALAR = 3
CHUNKED_MARKER = "__msgpack_chunked_array__"

# Bytes fetched per header window during the index pass: one window per tensor entry,
# so gs:// indexing costs ~16 KB per tensor (a 13B checkpoint: ~6 MB, one request each).
INDEX_WINDOW = 256 * 1024
GCS_INDEX_WINDOW = 16 * 1024
GCS_PART_SIZE = 16 * 1024 * 1024  # ranged-read size for parallel gs:// reads
GCS_READERS = 8


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a flax dtype name (bf16 through ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's raw bytes lie in the checkpoint file.

    ``pieces`` are ``(offset, nbytes)`` runs of C-order data that concatenate to the
    flattened tensor: one run for a plain array, one per chunk for a flax chunked array.
    """

    key: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[tuple[int, int], ...]
    entry_offset: int

    @property
    def name(self) -> str:
        return "/".join(self.key)

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.pieces)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)


@dataclass(frozen=True)
class CheckpointIndex:
    uri: str
    file_size: int
    tensors: dict[str, TensorInfo]  # by "/".join(key), in file order

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


# --------------------------------------------------------------------------- sources


class _Source:
    """Positional reads from a local file or a gs:// object."""

    def __init__(self, uri: str):
        self.uri = uri
        self.is_gcs = storage.is_gcs(uri)
        self._fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.bytes_read = 0
        if self.is_gcs:
            self.size = storage.size(uri)
        else:
            path = storage.local_path(uri)
            if path.is_dir():
                raise CheckpointError(
                    f"{uri}: is a directory; pass the streaming_params file inside it"
                )
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise CheckpointError(
                    f"{uri}: no such file (check the path to the streaming_params file)"
                ) from None
            self.size = os.fstat(self._fd).st_size

    @property
    def fd(self) -> int:
        """The open file descriptor of a local checkpoint."""
        if self._fd is None:
            raise ValueError(f"{self.uri}: not open (closed, or a gs:// object)")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _read_error(self, exc: OSError, offset: int) -> CheckpointError:
        return CheckpointError(
            f"{self.uri}: cannot read at byte {offset}: {storage.describe_os_error(exc)}"
        )

    def pread(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if self.is_gcs:
            data = storage.read_range(self.uri, offset, offset + n)
        else:
            try:
                data = os.pread(self.fd, n, offset)
            except OSError as exc:
                raise self._read_error(exc, offset) from exc
        self.bytes_read += len(data)
        return data

    def readinto(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``offset`` (exactly ``len(out)`` of them)."""
        n = len(out)
        if offset + n > self.size:
            raise CheckpointError(
                f"{self.uri}: truncated: bytes [{offset}, {offset + n}) lie past the end of "
                f"the file ({self.size} bytes); copy the checkpoint again"
            )
        if not self.is_gcs:
            done = 0
            while done < n:
                try:
                    got = os.preadv(self.fd, [out[done:]], offset + done)
                except OSError as exc:
                    raise self._read_error(exc, offset + done) from exc
                if got <= 0:
                    raise CheckpointError(
                        f"{self.uri}: short read at byte {offset + done}; the file changed "
                        "while reading"
                    )
                done += got
            self.bytes_read += n
            return
        parts = [(s, min(GCS_PART_SIZE, n - s)) for s in range(0, n, GCS_PART_SIZE)]

        def fetch(part: tuple[int, int]) -> int:
            start, length = part
            data = storage.read_range(self.uri, offset + start, offset + start + length)
            if len(data) != length:
                raise CheckpointError(
                    f"{self.uri}: short read at byte {offset + start} ({len(data)} of "
                    f"{length} bytes); the object changed while reading"
                )
            out[start : start + length] = data
            return length

        if len(parts) == 1:
            fetch(parts[0])
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(GCS_READERS, thread_name_prefix="rmeval-read")
            for _ in self._pool.map(fetch, parts):
                pass
        self.bytes_read += n


def _length(value: object) -> int:
    """The value of a str, bin, array or map header (:meth:`_Cursor.header`): a length."""
    if not isinstance(value, int):
        raise TypeError(f"msgpack header value {value!r} is not a length")
    return value


def _ext(value: object) -> tuple[int, int]:
    """The value of an ext header (:meth:`_Cursor.header`): ``(type, length)``."""
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"msgpack header value {value!r} is not an ext header")
    return value[0], value[1]


class _Cursor:
    """Sequential header parsing over a :class:`_Source` through cached windows."""

    def __init__(self, src: _Source, pos: int = 0, window: int | None = None):
        self.src = src
        self.pos = pos
        self.window = window or (GCS_INDEX_WINDOW if src.is_gcs else INDEX_WINDOW)
        self._buf = b""
        self._buf_start = 0
        self.context = ""  # tensor being parsed, for error messages

    def _fail(self, what: str, at: int | None = None) -> CheckpointError:
        at = self.pos if at is None else at
        ctx = f" in tensor {self.context}" if self.context else ""
        return CheckpointError(f"{self.src.uri}: byte {at}{ctx}: {what}")

    def take(self, n: int) -> bytes:
        if self.pos + n > self.src.size:
            raise self._fail(
                f"truncated: need {n} byte(s) but the file ends at byte {self.src.size}; "
                "copy the checkpoint again"
            )
        rel = self.pos - self._buf_start
        if rel < 0 or rel + n > len(self._buf):
            self._buf = self.src.pread(self.pos, max(n, self.window))
            self._buf_start = self.pos
            rel = 0
        out = self._buf[rel : rel + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        if self.pos + n > self.src.size:
            raise self._fail(
                f"truncated: {n} byte(s) of data announced but the file ends at byte "
                f"{self.src.size}; copy the checkpoint again"
            )
        self.pos += n

    # ----------------------------------------------------------- msgpack headers

    def header(self) -> tuple[str, object]:
        """One msgpack header: ``(kind, value)``; for containers and bin/str/ext the
        value is the length (ext: ``(type, length)``); the payload is not consumed."""
        at = self.pos
        b = self.take(1)[0]
        if b <= 0x7F:
            return "int", b
        if b >= 0xE0:
            return "int", b - 0x100
        if 0x80 <= b <= 0x8F:
            return "map", b & 0x0F
        if 0x90 <= b <= 0x9F:
            return "array", b & 0x0F
        if 0xA0 <= b <= 0xBF:
            return "str", b & 0x1F
        if b == 0xC0:
            return "nil", None
        if b == 0xC2:
            return "bool", False
        if b == 0xC3:
            return "bool", True
        if b in (0xC4, 0xC5, 0xC6):
            return "bin", self._uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
        if b in (0xC7, 0xC8, 0xC9):
            n = self._uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
            return "ext", (struct.unpack(">b", self.take(1))[0], n)
        if b == 0xCA:
            return "float", struct.unpack(">f", self.take(4))[0]
        if b == 0xCB:
            return "float", struct.unpack(">d", self.take(8))[0]
        if 0xCC <= b <= 0xCF:
            return "int", self._uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            size = 1 << (b - 0xD0)
            fmt = {1: ">b", 2: ">h", 4: ">i", 8: ">q"}[size]
            return "int", struct.unpack(fmt, self.take(size))[0]
        if 0xD4 <= b <= 0xD8:
            n = 1 << (b - 0xD4)
            return "ext", (struct.unpack(">b", self.take(1))[0], n)
        if b in (0xD9, 0xDA, 0xDB):
            return "str", self._uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[b])
        if b in (0xDC, 0xDD):
            return "array", self._uint(2 if b == 0xDC else 4)
        if b in (0xDE, 0xDF):
            return "map", self._uint(2 if b == 0xDE else 4)
        raise self._fail(f"invalid msgpack byte 0x{b:02x}; the file is corrupted", at)

    def _uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def small_value(self, depth: int = 0) -> object:
        """A whole small msgpack value (ints, strings, bools, nested arrays and maps)."""
        at = self.pos
        kind, v = self.header()
        if kind in ("int", "float", "bool", "nil"):
            return v
        if kind in ("str", "bin"):
            raw = self.take(_length(v))
            if kind == "bin":
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail("string is not valid UTF-8; the file is corrupted", at) from None
        if depth > 8:
            raise self._fail("msgpack nesting too deep for a key or shape", at)
        if kind == "array":
            return [self.small_value(depth + 1) for _ in range(_length(v))]
        if kind == "map":
            out = {}
            for _ in range(_length(v)):
                k = self.small_value(depth + 1)
                out[k] = self.small_value(depth + 1)
            return out
        raise self._fail(f"unexpected msgpack {kind} in a key or shape", at)


# --------------------------------------------------------------------------- index pass


def _check_shape(cur: _Cursor, shape: object, at: int) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise cur._fail(f"array shape {shape!r} is not a list of non-negative ints", at)
    return tuple(shape)


def _parse_ndarray_ext(cur: _Cursor, ext_type: int, length: int) -> tuple[str, tuple, int, int]:
    """Parse a flax ndarray/npscalar ext payload at the cursor.

    Returns ``(dtype, shape, data_offset, data_nbytes)`` and leaves the cursor after it."""
    start = cur.pos
    if ext_type not in (EXT_NDARRAY, EXT_NPSCALAR):
        raise cur._fail(
            f"msgpack ext type {ext_type} is not a flax array (1) or numpy scalar (3)", start
        )
    kind, n = cur.header()
    if kind != "array" or n != 3:
        raise cur._fail("flax array payload is not [shape, dtype, data]", start)
    shape_at = cur.pos
    shape = _check_shape(cur, cur.small_value(), shape_at)
    dtype_at = cur.pos
    dtype = cur.small_value()
    if isinstance(dtype, bytes):
        dtype = dtype.decode("ascii", "replace")
    if not isinstance(dtype, str):
        raise cur._fail(f"dtype {dtype!r} is not a string", dtype_at)
    if dtype not in KNOWN_DTYPES:
        raise cur._fail(
            f"unknown dtype {dtype!r} (expected one of {', '.join(KNOWN_DTYPES)})", dtype_at
        )
    kind, nbytes = cur.header()
    if kind != "bin":
        raise cur._fail("flax array data is not a msgpack bin", dtype_at)
    data_offset = cur.pos
    nbytes = _length(nbytes)
    cur.skip(nbytes)
    if cur.pos - start != length:
        raise cur._fail(
            f"flax array payload is {cur.pos - start} bytes but its ext header says {length}",
            start,
        )
    want = math.prod(shape) * numpy_dtype(dtype).itemsize
    if want != nbytes:
        raise cur._fail(
            f"array of shape {list(shape)} and dtype {dtype} needs {want} bytes, found {nbytes}",
            data_offset,
        )
    return dtype, shape, data_offset, nbytes


def _parse_chunked(cur: _Cursor, n_items: int, at: int) -> tuple[str, tuple, list]:
    marker = False
    shape: tuple[int, ...] | None = None
    chunks: dict[int, tuple[str, tuple, int, int]] = {}
    for _ in range(n_items):
        key = cur.small_value()
        if key == CHUNKED_MARKER:
            marker = cur.small_value() is True
        elif key == "shape":
            sat = cur.pos
            sh = cur.small_value()
            if not isinstance(sh, dict):
                raise cur._fail("chunked array shape is not a map", sat)
            try:
                shape = _check_shape(cur, [sh[str(i)] for i in range(len(sh))], sat)
            except KeyError:
                raise cur._fail(
                    f"chunked array shape keys {sorted(sh)} are not 0..n-1", sat
                ) from None
        elif key == "chunks":
            kind, n = cur.header()
            if kind != "map":
                raise cur._fail("chunked array 'chunks' is not a map")
            for _ in range(_length(n)):
                kat = cur.pos
                k = cur.small_value()
                if not isinstance(k, str) or not k.isdigit():
                    raise cur._fail(f"chunk key {k!r} is not a decimal index", kat)
                kind, ext = cur.header()
                if kind != "ext":
                    raise cur._fail(f"chunk {k} is not a flax array", kat)
                chunks[int(k)] = _parse_ndarray_ext(cur, *_ext(ext))
        else:
            raise cur._fail(f"unexpected key {key!r} in a flax array map", at)
    if not marker or shape is None or not chunks:
        raise cur._fail("a msgpack map that is not a flax chunked array", at)
    if sorted(chunks) != list(range(len(chunks))):
        raise cur._fail(f"chunk indices {sorted(chunks)} are not 0..n-1", at)
    dtypes = {c[0] for c in chunks.values()}
    if len(dtypes) != 1:
        raise cur._fail(f"chunks of one array have different dtypes {sorted(dtypes)}", at)
    dtype = dtypes.pop()
    total = sum(math.prod(chunks[i][1]) for i in chunks)
    if total != math.prod(shape):
        raise cur._fail(
            f"chunks hold {total} elements but the array shape {list(shape)} needs "
            f"{math.prod(shape)}",
            at,
        )
    pieces = [(chunks[i][2], chunks[i][3]) for i in range(len(chunks))]
    return dtype, shape, pieces


def _parse_entry(cur: _Cursor) -> TensorInfo | None:
    """One ``[key, value]`` entry; None for an empty subtree (flax's ``empty_node``, which
    ``flatten_dict(..., keep_empty_nodes=True)`` writes as an empty map)."""
    entry_at = cur.pos
    cur.context = ""
    kind, n = cur.header()
    if kind != "array" or n != 2:
        raise cur._fail(
            "expected a msgpack [key, value] entry; not an EasyLM streaming checkpoint, or "
            "the file is corrupted here",
            entry_at,
        )
    key_at = cur.pos
    key = cur.small_value()
    if (
        not isinstance(key, list)
        or not key
        or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in key)
    ):
        raise cur._fail(f"entry key {key!r} is not a list of names", key_at)
    key_t = tuple(str(k) for k in key)
    cur.context = "/".join(key_t)
    value_at = cur.pos
    kind, vlen = cur.header()
    if kind != "bin":
        raise cur._fail("entry value is not msgpack bin (flax.serialization.to_bytes)", value_at)
    value_start = cur.pos
    value_end = value_start + _length(vlen)
    if value_end > cur.src.size:
        raise cur._fail(
            f"truncated: the value needs bytes up to {value_end} but the file ends at byte "
            f"{cur.src.size}; copy the checkpoint again",
            value_at,
        )
    kind, v = cur.header()
    if kind == "ext":
        dtype, shape, off, nbytes = _parse_ndarray_ext(cur, *_ext(v))
        pieces = [(off, nbytes)]
    elif kind == "map" and v == 0 and cur.pos == value_end:
        return None
    elif kind == "map":
        dtype, shape, pieces = _parse_chunked(cur, _length(v), value_start)
    else:
        raise cur._fail(f"value is a msgpack {kind}, not a flax array", value_start)
    if cur.pos != value_end:
        raise cur._fail(
            f"the flax array ends at byte {cur.pos} but its bin ends at byte {value_end}",
            value_start,
        )
    return TensorInfo(key_t, dtype, shape, tuple(pieces), entry_at)


def iter_entries(src: _Source) -> Iterator[TensorInfo]:
    cur = _Cursor(src)
    while cur.pos < src.size:
        info = _parse_entry(cur)
        if info is not None:
            yield info


def index_checkpoint(uri: str) -> CheckpointIndex:
    """Read only the headers of a streaming checkpoint and return where every tensor is."""
    with CheckpointReader(uri) as reader:
        return reader.index


# --------------------------------------------------------------------------- reader


class CheckpointReader:
    """Open a checkpoint, index it, and read tensors by offset.

    Use as a context manager. ``index`` is built on open (headers only)."""

    def __init__(self, uri: str):
        self.uri = os.fspath(uri)
        try:
            self._src = _Source(self.uri)
        except StoreError as exc:
            raise CheckpointError(str(exc)) from exc
        try:
            tensors: dict[str, TensorInfo] = {}
            for info in iter_entries(self._src):
                if info.name in tensors:
                    raise CheckpointError(
                        f"{self.uri}: byte {info.entry_offset}: tensor {info.name} appears "
                        "twice; the file is corrupted"
                    )
                tensors[info.name] = info
            if not tensors:
                raise CheckpointError(f"{self.uri}: empty file; not an EasyLM checkpoint")
            self.index = CheckpointIndex(self.uri, self._src.size, tensors)
            self.header_bytes_read = self._src.bytes_read
        except BaseException:
            self._src.close()
            raise

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._src.close()

    @property
    def bytes_read(self) -> int:
        return self._src.bytes_read

    @property
    def is_gcs(self) -> bool:
        return self._src.is_gcs

    def read_into(self, info: TensorInfo, out: memoryview | np.ndarray, start: int = 0) -> None:
        """Copy bytes ``[start, start + len(out))`` of the tensor's raw C-order data into
        ``out`` (by default all ``info.nbytes`` of them, from the start)."""
        mv = out.cast("B") if isinstance(out, memoryview) else out.data.cast("B")
        if start < 0 or start + len(mv) > info.nbytes:
            raise ValueError(
                f"bytes [{start}, {start + len(mv)}) of {info.name} ({info.nbytes} bytes)"
            )
        pos = 0  # bytes of ``out`` filled
        base = 0  # tensor byte offset where the current piece starts
        for off, n in info.pieces:
            lo = max(start + pos, base)
            if lo < base + n and pos < len(mv):
                take = min(base + n - lo, len(mv) - pos)
                self._src.readinto(off + (lo - base), mv[pos : pos + take])
                pos += take
            base += n

    def read(self, info: TensorInfo) -> np.ndarray:
        """The tensor as a numpy array in its stored dtype."""
        arr = np.empty(info.shape, dtype=info.np_dtype)
        if info.nbytes:
            self.read_into(info, arr.reshape(-1).view(np.uint8))
        return arr


def load_params(uri: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as numpy arrays, keyed by '/'-joined path (small
    checkpoints: tests and verification)."""
    with CheckpointReader(uri) as reader:
        return {name: reader.read(info) for name, info in reader.index.tensors.items()}
