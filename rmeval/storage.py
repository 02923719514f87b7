"""Local paths, ``file://`` and ``gs://bucket/prefix`` behind one small interface.

Every network call goes through this module: it owns the Google client, the retry policy
(google-cloud-storage's own predicate: 429, 5xx, connection resets) and the translation of
permanent failures into :class:`StoreError` lines that say what to do next.

Writes are atomic: a local file is written to a temporary name in the same directory and
renamed; a GCS object is uploaded in one request with ``if_generation_match=0`` unless
``overwrite`` is asked for, so a reader never sees half an object and nothing is clobbered.

Outputs of several files (a model folder, a fit, figures, scores + metrics) are published
by the one staged-output helper at the end (:func:`staged_dir`, :func:`publish_dir`,
:func:`write_together`): the old copy survives any failure, and nothing half-built is ever
visible under the final name, locally or on gs://.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, BinaryIO

from rmeval.errors import AlreadyExistsError, StoreError
from rmeval.procutil import is_stale, owned_name, remove_stale

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
FILE_SCHEME = "file://"
_AUTH_HINT = (
    "run `gcloud auth application-default login` "
    "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file)"
)
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. ``name`` is relative to the listed root, '/'-separated."""

    uri: str
    name: str
    size: int
    updated: datetime | None
    metadata: dict[str, str] | None = None  # gs:// custom metadata (listed with the object)


# --------------------------------------------------------------------------- OS errors

# Libraries written in Rust (tokenizers) raise a plain Exception that ends "(os error N)".
_RUST_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")
_ERRNO_HINTS = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some space there or write elsewhere",
    errno.EROFS: "write somewhere writable",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
}


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of a library error that reports one in its text."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    m = _RUST_OS_ERROR_RE.search(str(exc))
    return int(m.group(1)) if m else None


def describe_os_error(exc: BaseException) -> str:
    """What the errno means, e.g. ``no space left on device (ENOSPC); free some space...``."""
    code = os_errno(exc)
    if code is None:
        return str(exc).strip() or type(exc).__name__
    text = os.strerror(code)
    name = errno.errorcode.get(code, f"errno {code}")
    hint = _ERRNO_HINTS.get(code)
    return f"{text[:1].lower()}{text[1:]} ({name})" + (f"; {hint}" if hint else "")


def os_error_line(exc: OSError, fallback: str | None = None) -> str:
    """One line for an OSError nobody translated: the path it names (else ``fallback``,
    e.g. the command's output paths), and what the errno means."""
    where = exc.filename if exc.filename is not None else fallback
    return f"{where}: {describe_os_error(exc)}" if where else describe_os_error(exc)


def write_error(
    exc: BaseException, path: str | os.PathLike, what: str = "write", cls: type = StoreError
):
    """The error to raise when writing ``path`` failed with ``exc`` (an OSError or a library
    error carrying an errno): one line naming the path and what the errno means."""
    return cls(f"{os.fspath(path)}: cannot {what}: {describe_os_error(exc)}")


def _local_write_error(exc: OSError, path: Path, tmp: Path | None = None) -> StoreError:
    """The error for a failed write of ``path``: about ``path`` when the OSError names
    nothing, our temporary file or a name we tried to create next to ``path``; else about
    the file it names (e.g. the source of a copy)."""
    name = exc.filename
    if name is None or (tmp is not None and os.fspath(name) == str(tmp)):
        return write_error(exc, path)
    other = Path(os.fspath(name))
    if other.parent == path.parent and other.name.startswith(f".{path.name}."):
        return write_error(exc, path)
    return StoreError(f"{other}: {describe_os_error(exc)}")


# --------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = str(uri)[len(GCS_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StoreError(f"{uri}: not a gs:// URI with a bucket name (expected gs://BUCKET/PREFIX)")
    return bucket, key


def local_path(uri: str | os.PathLike) -> Path:
    """The filesystem path of a local path or ``file://`` URI."""
    s = os.fspath(uri)
    if s.startswith(FILE_SCHEME):
        s = s[len(FILE_SCHEME) :]
    if is_gcs(s):
        raise StoreError(f"{uri}: expected a local path, got a gs:// URI")
    return Path(s)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    out = os.fspath(base)
    for p in parts:
        p = p.strip("/")
        if not p:
            continue
        out = out.rstrip("/") + "/" + p if out else p
    return out


def basename(uri: str | os.PathLike) -> str:
    return os.fspath(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str | os.PathLike) -> str:
    s = os.fspath(uri).rstrip("/")
    head, _, _ = s.rpartition("/")
    return head


# --------------------------------------------------------------------------- GCS client

_client_lock = threading.Lock()
# one client per (emulator, project, service-account email): google.cloud.storage.Client
_clients: dict[tuple[str | None, str | None, str | None], Any] = {}


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    initial = float(os.environ.get("RMEVAL_GCS_RETRY_INITIAL", "1.0"))
    maximum = float(os.environ.get("RMEVAL_GCS_RETRY_MAXIMUM", "32.0"))
    timeout = float(os.environ.get("RMEVAL_GCS_RETRY_TIMEOUT", "300.0"))
    return DEFAULT_RETRY.with_delay(initial=initial, maximum=maximum).with_timeout(timeout)


_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)


def gcs_client(uri: str = "gs://"):
    """The shared google-cloud-storage client: the emulator named by
    ``STORAGE_EMULATOR_HOST`` with anonymous credentials; else the in-memory key of
    ``GOOGLE_SERVICE_ACCOUNT`` (:func:`rmeval.credentials.google_credentials`, never a
    file); else Application Default Credentials.

    This is the credential bridge, for every command and every process alike: the first
    GCS client a process asks for checks ``GOOGLE_SERVICE_ACCOUNT`` (a malformed value is a
    one-line :class:`~rmeval.errors.CredentialsError` before any GCS request), and a process
    that never touches gs:// never reads it."""
    from rmeval import credentials

    emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    info = None if emulator else credentials.service_account_info()
    key = (emulator, project, info["client_email"] if info else None)
    with _client_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        from google.cloud import storage

        if emulator:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project=project or "rmeval", credentials=AnonymousCredentials())
        elif info is not None:
            creds = credentials.google_credentials(scopes=_SCOPES)
            client = storage.Client(project=project or info.get("project_id"), credentials=creds)
        else:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError

            try:
                creds, default_project = google.auth.default(scopes=list(_SCOPES))
            except DefaultCredentialsError as exc:
                raise _credentials_error(uri, exc) from None
            client = storage.Client(project=project or default_project, credentials=creds)
        _clients[key] = client
        return client


def _credentials_error(uri: str, exc: Exception) -> StoreError:
    """None found, or found and unusable (a broken key file): say which, and why."""
    from rmeval.credentials import redact

    text = str(exc).strip()
    if not text or text.startswith("Your default credentials were not found"):
        return StoreError(f"{uri}: no Google credentials found: {_AUTH_HINT}")
    reason = redact(text.splitlines()[0])[:200]
    return StoreError(
        f"{uri}: the configured Google credentials are unusable ({reason}); fix or replace "
        "the key file GOOGLE_APPLICATION_CREDENTIALS names (or gcloud's ADC file)"
    )


@contextlib.contextmanager
def _gcs_errors(uri: str, *, writing: bool = False) -> Iterator[None]:
    """Translate google exceptions into one-line StoreErrors naming the URI."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    try:
        yield
    except gexc.NotFound as exc:
        raise StoreError(f"{uri}: not found (check the bucket and prefix)") from exc
    except (gexc.Unauthorized, gexc.Forbidden) as exc:
        raise StoreError(
            f"{uri}: permission denied ({exc.code}): {_AUTH_HINT}, and check the bucket's IAM"
        ) from exc
    except gexc.PreconditionFailed as exc:
        raise AlreadyExistsError(uri) from exc
    except aexc.DefaultCredentialsError as exc:
        raise _credentials_error(uri, exc) from None
    except aexc.RefreshError as exc:  # the key was read but Google refused it
        from rmeval.credentials import redact

        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "refused")
        raise StoreError(
            f"{uri}: cannot authenticate to Google Cloud ({reason[:200]}): {_AUTH_HINT}"
        ) from None
    except gexc.RetryError as exc:
        raise StoreError(f"{uri}: gave up after retries: {exc.cause or exc}") from exc
    except gexc.GoogleAPICallError as exc:
        raise StoreError(f"{uri}: storage error {exc.code}: {exc.message}") from exc
    except Exception as exc:  # InvalidResponse from resumable-media, transport errors
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 412 and writing:
            raise AlreadyExistsError(uri) from exc
        if status in (401, 403):
            raise StoreError(f"{uri}: permission denied ({status}): {_AUTH_HINT}") from exc
        if status == 404:
            raise StoreError(f"{uri}: not found (check the bucket and prefix)") from exc
        if (
            isinstance(exc, (OSError, ValueError))
            or status is not None
            or type(exc).__module__.startswith(("google", "requests", "urllib3"))
        ):
            raise StoreError(f"{uri}: storage error: {exc}") from exc
        raise


def _blob(uri: str):
    bucket, key = split_gcs(uri)
    if not key:
        raise StoreError(f"{uri}: names a bucket, not an object")
    return gcs_client(uri).bucket(bucket).blob(key)


# --------------------------------------------------------------------------- listing


def list_objects(
    uri: str | os.PathLike, match: str | None = None, name_prefix: bool = False
) -> Iterator[ObjectInfo]:
    """Every object under ``uri`` (recursively), optionally only those whose base name
    matches the glob ``match``. Sorted by name for local paths; GCS returns name order.

    With ``name_prefix``, a ``uri`` that is neither a directory nor an object (and does
    not end in ``/``) is a *name prefix*, as the GCS API's ``list_blobs(prefix=...)`` and
    ``gsutil ls PREFIX*`` read it: every object whose path starts with it, e.g.
    ``.../tulu2_13b_rm_counts`` finds ``.../tulu2_13b_rm_counts_7000_ID__…/streaming_params``.
    Names are then relative to the prefix's parent."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        yield from _list_gcs(uri, match, name_prefix)
    else:
        yield from _list_local(uri, match, name_prefix)


def _walk_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(Path(dirpath) / f for f in sorted(filenames))
    return paths


def _list_local(uri: str, match: str | None, name_prefix: bool = False) -> Iterator[ObjectInfo]:
    root = local_path(uri)
    if root.exists():
        base = root.parent if root.is_file() else root
        paths = _walk_files(root)
    elif name_prefix and not uri.endswith("/") and root.parent.is_dir():
        base = root.parent
        paths = [
            p
            for entry in sorted(root.parent.iterdir())
            if entry.name.startswith(root.name)
            for p in _walk_files(entry)
        ]
    else:
        raise StoreError(f"{uri}: no such file or directory")
    for p in paths:
        if match and not fnmatchcase(p.name, match):
            continue
        try:
            st = p.stat()
        except FileNotFoundError:  # vanished while listing
            continue
        yield ObjectInfo(
            uri=str(p) if not uri.startswith(FILE_SCHEME) else FILE_SCHEME + str(p),
            name=p.relative_to(base).as_posix(),
            size=st.st_size,
            updated=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
        )


def _list_gcs(uri: str, match: str | None, name_prefix: bool = False) -> Iterator[ObjectInfo]:
    bucket, key = split_gcs(uri)
    client = gcs_client(uri)
    with _gcs_errors(uri):
        folder = key.rstrip("/") + "/" if key else ""
        found = False
        for info in _list_gcs_prefix(client, bucket, folder, folder, match):
            found = True
            if info is not None:
                yield info
        if found or not key or key.endswith("/"):
            return
        blob = client.bucket(bucket).get_blob(key, retry=_retry())
        if blob is not None:
            if not match or fnmatchcase(basename(key), match):
                yield ObjectInfo(uri, basename(key), int(blob.size or 0), blob.updated)
            return
        if name_prefix:
            base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            for info in _list_gcs_prefix(client, bucket, key, base, match):
                if info is not None:
                    yield info


def _list_gcs_prefix(client, bucket: str, prefix: str, base: str, match: str | None):
    """Objects whose names start with ``prefix``, named relative to ``base``; None for an
    object that exists but does not match (so the caller knows something is there)."""
    pages = client.list_blobs(bucket, prefix=prefix, page_size=1000, retry=_retry()).pages
    for page in pages:
        for blob in page:
            if blob.name.endswith("/"):  # "directory" placeholder objects
                continue
            name = blob.name[len(base) :]
            if match and not fnmatchcase(name.rsplit("/", 1)[-1], match):
                yield None
                continue
            yield ObjectInfo(
                f"{GCS_SCHEME}{bucket}/{blob.name}",
                name,
                int(blob.size or 0),
                blob.updated,
                blob.metadata or None,
            )


def nearest_prefixes(uri: str | os.PathLike, n: int = 3) -> list[str]:
    """The entries next to ``uri`` (in its parent directory or GCS "folder") whose names
    are closest to its last part: for an error that says what the user may have meant."""
    import difflib

    uri = os.fspath(uri).rstrip("/")
    head, _, last = uri.rpartition("/")
    names: list[str] = []
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        with _gcs_errors(uri):
            it = gcs_client(uri).list_blobs(
                bucket, prefix=folder, delimiter="/", page_size=1000, retry=_retry()
            )
            for page in it.pages:
                names += [b.name[len(folder) :] for b in page]
                names += [p[len(folder) :].rstrip("/") for p in page.prefixes]
    else:
        parent_dir = local_path(uri).parent
        if parent_dir.is_dir():
            names = [p.name for p in parent_dir.iterdir()]
    names = sorted({x for x in names if x})
    close = difflib.get_close_matches(last, names, n=n, cutoff=0.0)
    return [f"{head}/{x}" for x in close]


# --------------------------------------------------------------------------- metadata


def exists(uri: str | os.PathLike) -> bool:
    uri = os.fspath(uri)
    if not is_gcs(uri):
        return local_path(uri).exists()
    with _gcs_errors(uri):
        return _blob(uri).exists(retry=_retry())


def size(uri: str | os.PathLike) -> int:
    uri = os.fspath(uri)
    if not is_gcs(uri):
        p = local_path(uri)
        try:
            return p.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{uri}: no such file") from None
    bucket, key = split_gcs(uri)
    with _gcs_errors(uri):
        blob = gcs_client(uri).bucket(bucket).get_blob(key, retry=_retry())
    if blob is None:
        raise StoreError(f"{uri}: not found (check the bucket and prefix)")
    return int(blob.size or 0)


def delete(uri: str | os.PathLike, missing_ok: bool = True) -> None:
    uri = os.fspath(uri)
    if not is_gcs(uri):
        p = local_path(uri)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or not missing_ok:
            p.unlink()
        return
    from google.api_core.exceptions import NotFound

    try:
        with _gcs_errors(uri, writing=True):
            try:
                _blob(uri).delete(retry=_retry())
            except NotFound:
                if not missing_ok:
                    raise
    except StoreError:
        if not missing_ok:
            raise


def delete_prefix(uri: str | os.PathLike) -> int:
    """Delete every object under ``uri`` (a local directory: the tree). Returns a count."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        p = local_path(uri)
        if p.is_dir():
            n = len(_walk_files(p))
            shutil.rmtree(p)
            return n
        return 0
    n = 0
    for obj in list_objects(uri.rstrip("/") + "/"):
        delete(obj.uri)
        n += 1
    return n


def copy_object(src: str, dst: str, overwrite: bool = True) -> None:
    """Copy one object to another name in the same store (server-side for gs://)."""
    if not is_gcs(src) or not is_gcs(dst):
        upload_file(local_path(src), dst, overwrite=overwrite)
        return
    kwargs = {} if overwrite else {"if_generation_match": 0}
    dst_bucket, dst_key = split_gcs(dst)
    with _gcs_errors(dst, writing=True):
        source = _blob(src)
        client = gcs_client(src)
        source.bucket.copy_blob(
            source, client.bucket(dst_bucket), dst_key, retry=_retry(), **kwargs
        )


# --------------------------------------------------------------------------- reading


def read_range(uri: str | os.PathLike, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an object (fewer at end of file)."""
    uri = os.fspath(uri)
    if start < 0 or end < start:
        raise ValueError(f"bad byte range [{start}, {end}) for {uri}")
    if end == start:
        return b""
    if not is_gcs(uri):
        try:
            with open(local_path(uri), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise StoreError(f"{uri}: no such file") from None
    from google.api_core.exceptions import RequestRangeNotSatisfiable

    try:
        with _gcs_errors(uri):
            # GCS ranges are inclusive at the end.
            return _blob(uri).download_as_bytes(
                start=start, end=end - 1, checksum=None, retry=_retry()
            )
    except StoreError as exc:
        if isinstance(exc.__cause__, RequestRangeNotSatisfiable):
            return b""
        raise


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = os.fspath(uri)
    if not is_gcs(uri):
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{uri}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"{uri}: is a directory, expected a file") from None
    with _gcs_errors(uri):
        return _blob(uri).download_as_bytes(retry=_retry())


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    try:
        return read_bytes(uri).decode(encoding)
    except UnicodeDecodeError as exc:
        raise StoreError(f"{os.fspath(uri)}: not valid {encoding} text (byte {exc.start})") from exc


class RangeReader(io.RawIOBase):
    """A seekable raw reader that fetches byte ranges on demand through :func:`read_range`."""

    def __init__(self, uri: str, total_size: int | None = None):
        super().__init__()
        self.uri = uri
        self._size = size(uri) if total_size is None else total_size
        self._pos = 0
        self.bytes_fetched = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        want = min(len(b), max(0, self._size - self._pos))
        if want == 0:
            return 0
        data = read_range(self.uri, self._pos, self._pos + want)
        n = len(data)
        b[:n] = data
        self._pos += n
        self.bytes_fetched += n
        self.requests += 1
        return n


def open_reader(uri: str | os.PathLike, block_size: int = DEFAULT_BLOCK_SIZE) -> BinaryIO:
    """A seekable binary reader. Local: the file itself. GCS: ranged reads of ``block_size``
    bytes on demand, never the whole object."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        p = local_path(uri)
        try:
            return open(p, "rb")
        except FileNotFoundError:
            raise StoreError(f"{uri}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"{uri}: is a directory, expected a file") from None
    return io.BufferedReader(RangeReader(uri), buffer_size=block_size)


def download_file(uri: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy one object to a local file (atomically)."""
    uri = os.fspath(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_local_file(dest, overwrite=True) as tmp:
        if is_gcs(uri):
            with _gcs_errors(uri):
                _blob(uri).download_to_filename(str(tmp), retry=_retry())
        else:
            try:
                shutil.copyfile(local_path(uri), tmp)
            except FileNotFoundError:
                raise StoreError(f"{uri}: no such file") from None
    return dest


def download_tree(
    uri: str | os.PathLike, dest: str | os.PathLike, marker: str | None = None
) -> Path:
    """Copy every object under ``uri`` into the local directory ``dest``. With ``marker``
    (a staged output's completion marker, e.g. a model's config.json), a tree without it
    is refused before anything is downloaded: it is incomplete (see :func:`staged_dir`)."""
    uri, dest = os.fspath(uri), Path(dest)
    if marker is not None and is_gcs(uri) and _gcs_any(uri) and not exists(join(uri, marker)):
        raise StoreError(
            f"{uri}: incomplete: no {marker} (an interrupted publish); publish it again"
        )
    n = 0
    for obj in list_objects(uri):
        target = dest / safe_relative(obj.name, what=obj.uri)
        download_file(obj.uri, target)
        n += 1
    if n == 0:
        raise StoreError(f"{os.fspath(uri)}: nothing to download (empty or missing)")
    return dest


def safe_relative(name: str, what: str = "name") -> Path:
    """A relative path that cannot escape its root (no '..', no absolute parts, no NUL)."""
    from rmeval.naming import safe_relpath

    return Path(safe_relpath(name, what=what))


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_local_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the same directory as ``path``; on success move it into
    place (no-clobber unless ``overwrite``); on failure remove it. An OSError of the write
    (read-only or full disk, permissions) becomes a :class:`StoreError` naming ``path``."""
    path = Path(path)
    tmp = _make_temp(path, overwrite)
    try:
        yield tmp
        _commit_local(tmp, path, overwrite)
    except OSError as exc:
        raise _local_write_error(exc, path, tmp) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _make_temp(path: Path, overwrite: bool) -> Path:
    """An empty temporary file next to ``path`` (its directory created if needed), with
    the mode a plain ``open`` would give it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, exc.filename or path.parent, "create the directory") from exc
    if not overwrite and path.exists():
        raise AlreadyExistsError(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _local_write_error(exc, path) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
    return tmp


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def _commit_local(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if path exists
    except FileExistsError:
        raise AlreadyExistsError(path) from None
    except OSError:  # filesystem without hard links
        if path.exists():
            raise AlreadyExistsError(path) from None
        os.replace(tmp, path)


@contextlib.contextmanager
def open_writer(
    uri: str | os.PathLike, overwrite: bool = False, metadata: dict[str, str] | None = None
) -> Iterator[IO[bytes]]:
    """A binary file to write; it becomes visible at ``uri`` only when the block ends
    without error. GCS: one upload with ``if_generation_match=0`` unless ``overwrite``;
    ``metadata`` becomes the object's custom metadata (listed with it; ignored locally)."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        with atomic_local_file(local_path(uri), overwrite=overwrite) as tmp, open(tmp, "wb") as f:
            yield f
        return
    try:
        with tempfile.NamedTemporaryFile(prefix="rmeval-upload-", delete=False) as f:
            tmp = Path(f.name)
    except OSError as exc:
        raise write_error(exc, tempfile.gettempdir(), f"stage the upload of {uri}") from exc
    try:
        try:
            with open(tmp, "wb") as f:
                yield f
        except OSError as exc:
            raise write_error(exc, tmp.parent, f"stage the upload of {uri}") from exc
        upload_file(tmp, uri, overwrite=overwrite, metadata=metadata)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(
    uri: str | os.PathLike,
    data: bytes,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    with open_writer(uri, overwrite=overwrite, metadata=metadata) as f:
        f.write(data)


def write_text(uri: str | os.PathLike, text: str, overwrite: bool = False) -> None:
    write_bytes(uri, text.encode("utf-8"), overwrite=overwrite)


def create_exclusive(uri: str | os.PathLike, data: bytes) -> bool:
    """Create ``uri`` with ``data`` unless it exists (atomically: one of several concurrent
    creators wins). True when this call created it."""
    try:
        write_bytes(uri, data, overwrite=False)
    except AlreadyExistsError:
        return False
    return True


# --------------------------------------------------------------------------- versions
# Compare-and-swap on one small object (the run state of :mod:`rmeval.state`): read it with
# its version, then replace or delete it only if it is still that version. gs:// uses the
# object generation (``if_generation_match``); a local file uses (inode, mtime_ns, size)
# checked and replaced under an advisory lock (``fcntl.flock``) on its directory, which
# every reader and writer of this module takes.


@dataclass(frozen=True)
class Versioned:
    """An object's bytes, its version token and the store's own time of its last write."""

    data: bytes
    version: str
    updated: datetime


@contextlib.contextmanager
def _local_lock(path: Path) -> Iterator[None]:
    import fcntl

    try:  # the directory itself is the lock: no lock file to leave behind
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local_version(path: Path) -> tuple[str, datetime] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return f"{st.st_ino}.{st.st_mtime_ns}.{st.st_size}", datetime.fromtimestamp(
        st.st_mtime, tz=timezone.utc
    )


def read_versioned(uri: str | os.PathLike) -> Versioned | None:
    """``uri``'s bytes with their version, or None when it does not exist."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        path = local_path(uri)
        if not path.parent.is_dir():
            return None
        with _local_lock(path):
            found = _local_version(path)
            if found is None:
                return None
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        return Versioned(data, found[0], found[1])
    bucket, key = split_gcs(uri)
    with _gcs_errors(uri):
        blob = gcs_client(uri).bucket(bucket).get_blob(key, retry=_retry())
        if blob is None:
            return None
        from google.api_core.exceptions import NotFound, PreconditionFailed

        generation, updated = blob.generation, blob.updated  # a download may reset them
        try:
            data = blob.download_as_bytes(if_generation_match=generation, retry=_retry())
        except (NotFound, PreconditionFailed):  # replaced or removed meanwhile: read again
            return read_versioned(uri)
    return Versioned(data, str(generation), updated)


def replace_if(uri: str | os.PathLike, data: bytes, version: str | None) -> str | None:
    """Write ``data`` at ``uri`` only if it is still at ``version`` (None: only if it does
    not exist). Returns the new version, or None when another writer came first."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _local_lock(path):
            found = _local_version(path)
            if (found[0] if found else None) != version:
                return None
            tmp = _make_temp(path, overwrite=True)
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as exc:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise write_error(exc, path) from None
            return _local_version(path)[0]  # type: ignore[index]
    blob = _blob(uri)
    try:
        with _gcs_errors(uri, writing=True):
            blob.upload_from_string(data, if_generation_match=int(version or 0), retry=_retry())
        if blob.generation is None:  # an answer without the new generation: ask for it
            blob.reload(retry=_retry())
    except AlreadyExistsError:
        return None
    return str(blob.generation)


def delete_if(uri: str | os.PathLike, version: str) -> bool:
    """Delete ``uri`` only if it is still at ``version``. True when this call deleted it."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        path = local_path(uri)
        if not path.parent.is_dir():
            return False
        with _local_lock(path):
            found = _local_version(path)
            if found is None or found[0] != version:
                return False
            path.unlink()
            return True
    from google.api_core.exceptions import NotFound, PreconditionFailed

    try:
        with _gcs_errors(uri, writing=True):
            try:
                _blob(uri).delete(if_generation_match=int(version), retry=_retry())
            except (NotFound, PreconditionFailed):
                return False
    except AlreadyExistsError:
        return False
    return True


PROBE_PREFIX = ".rmeval-probe-"


def check_writable(uri: str | os.PathLike) -> None:
    """Fail now, with one line, if a file could not be written at ``uri``: a real probe (a
    small file written, flushed and deleted next to where ``uri`` will go; for gs://, an
    object uploaded and deleted), not a permission check. Creates no directories."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        probe = join(parent(uri), PROBE_PREFIX + unique_suffix())
        with _gcs_errors(uri, writing=True):
            blob = _blob(probe)
            blob.upload_from_string(b"probe", retry=_retry(), if_generation_match=0)
            blob.delete(retry=_retry())
        return
    path = local_path(uri)
    if path.is_dir():
        raise StoreError(f"{uri}: is a directory, expected a file name")
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise StoreError(f"{uri}: cannot write: {where} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=where)
    except OSError as exc:
        raise write_error(exc, uri) from exc
    try:
        os.write(fd, b"\0" * 4096)  # a whole block: a full disk refuses it
        os.fsync(fd)
    except OSError as exc:
        raise write_error(exc, uri) from exc
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def upload_file(
    src: str | os.PathLike,
    uri: str | os.PathLike,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Copy a local file to ``uri`` (local or gs://), atomically and without clobbering."""
    uri = os.fspath(uri)
    src = Path(src)
    if not is_gcs(uri):
        with atomic_local_file(local_path(uri), overwrite=overwrite) as tmp:
            shutil.copyfile(src, tmp)
        return
    kwargs = {} if overwrite else {"if_generation_match": 0}
    with _gcs_errors(uri, writing=True):
        blob = _blob(uri)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_filename(str(src), retry=_retry(), **kwargs)


def upload_tree(src_dir: str | os.PathLike, uri: str | os.PathLike, overwrite: bool = False) -> int:
    """Copy a local directory under ``uri``, file by file (not atomic as a whole: the
    staged outputs below build on it). Refuses to write into a non-empty destination
    unless ``overwrite``. Returns the file count."""
    uri = os.fspath(uri)
    src_dir = Path(src_dir)
    if not overwrite and next(iter(list_objects_if_any(uri)), None) is not None:
        raise AlreadyExistsError(uri)
    files = sorted(p for p in src_dir.rglob("*") if p.is_file())
    for p in files:
        upload_file(p, join(uri, p.relative_to(src_dir).as_posix()), overwrite=overwrite)
    return len(files)


def list_objects_if_any(uri: str | os.PathLike) -> Iterator[ObjectInfo]:
    """Like :func:`list_objects`, but a missing local directory lists as empty."""
    uri = os.fspath(uri)
    if not is_gcs(uri) and not local_path(uri).exists():
        return iter(())
    return list_objects(uri)


def unique_suffix() -> str:
    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def owned_tempdir(prefix: str, dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Like :class:`tempfile.TemporaryDirectory`, with an owned name
    (:func:`rmeval.procutil.owned_name`); first removes the directories of the same prefix
    that dead processes of this host left in ``dir``."""
    where = Path(dir) if dir is not None else Path(tempfile.gettempdir())
    for stale in remove_stale(where, prefix):
        log.info("removed %s, left by an interrupted run (its process is gone)", stale)
    try:
        path = Path(tempfile.mkdtemp(prefix=owned_name(prefix) + "-", dir=where))
    except OSError as exc:
        raise write_error(exc, where, "create a temporary directory") from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- staged outputs
#
# Every output that is built beside its destination and swapped in (a converted or kept
# model, a fit directory, report figures, files written as one unit) is published here,
# with one guarantee: the old copy survives any failure (an exception, a full disk, a
# kill -9 at any instant), and nothing half-built is ever visible under the final name.
#
# - The new copy is built or staged at ``<name>.partial-<token>`` (the token is an owned
#   name: host, pid namespace, pid, random). Local: next to the destination, so that it
#   moves in by a rename. gs://: uploaded under that prefix, then copied in server-side.
# - One local directory is swapped in by one atomic renameat2(RENAME_EXCHANGE); the old
#   copy then lies at the staging name until it is deleted.
# - Otherwise (gs://, several files, a file system without RENAME_EXCHANGE): when the
#   destination is complete, its old copy is first kept at ``<name>.old-<token>`` (the
#   completion marker's copy last, so a backup with its marker is whole), the marker is
#   removed, the new copy moves in and its marker comes last. A destination without its
#   marker is incomplete, and readers refuse it (:func:`download_tree` with ``marker``).
# - The next run that publishes to the same destination first repairs what a dead run
#   left (:func:`_recover`): an incomplete destination whose whole backup lies beside it
#   is restored from it; the other staging and backup copies of dead runs are deleted.

STAGING = ".partial-"  # <name>.partial-<token>: the new copy, being built or staged
BACKUP = ".old-"  # <name>.old-<token>: the old copy, kept until the new one is complete
REMOTE_STALE_S = 24 * 3600  # another host's gs:// staging or backup idle this long is dead
COMPLETE, INCOMPLETE, ABSENT = "complete", "incomplete", "absent"  # what dir_state says

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a libc without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _rename_dir(src: Path, dst: Path) -> None:
    """rename(2) the directory ``src`` onto a free name: absent, or an empty directory
    (which rename replaces atomically). A taken name (a non-empty directory, a file) is
    refused by rename itself, so there is no window for a clobber."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise AlreadyExistsError(dst) from exc
        raise


def _remove_local(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A second name for the file ``src`` (a copy where the file system has no links)."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        shutil.copy2(src, dst)


def _gcs_any(uri: str) -> bool:
    """Whether any object lies under the gs:// prefix ``uri``."""
    bucket, key = split_gcs(uri)
    with _gcs_errors(uri):
        blobs = gcs_client(uri).list_blobs(
            bucket, prefix=key.rstrip("/") + "/", max_results=1, retry=_retry()
        )
        return any(True for _ in blobs)


@contextlib.contextmanager
def _os_errors_as(where: str | os.PathLike, what: str = "write") -> Iterator[None]:
    """An OSError inside the block is one line naming ``where``."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, where, what) from exc


@dataclass(eq=False)  # outputs are told apart by identity
class _Output:
    """One output of a unit published together: a file or a directory tree, local or
    gs://. The unit's ``last`` output holds its completion marker: ``marker`` inside it
    for a gs:// tree, else the output itself."""

    uri: str
    tree: bool
    overwrite: bool = False
    marker: str | None = None
    last: bool = True
    remote: bool = field(init=False)

    def __post_init__(self) -> None:
        self.uri = os.fspath(self.uri).rstrip("/")
        self.remote = is_gcs(self.uri)
        if self.remote and self.tree and self.last and not self.marker:
            raise ValueError(f"{self.uri}: a gs:// tree needs a completion marker")

    def at(self, kind: str, token: str) -> str:
        """This output's staging (:data:`STAGING`) or backup (:data:`BACKUP`) name."""
        return self.uri + kind + token

    def errors(self):
        """A local step's OS errors as one line naming the destination (gs:// steps
        raise StoreErrors already)."""
        return contextlib.nullcontext() if self.remote else _os_errors_as(self.uri)

    # ---------------------------------------------------------------- what is there

    def present(self, uri: str | None = None) -> bool:
        uri = uri or self.uri
        if self.remote:
            return _gcs_any(uri) if self.tree else exists(uri)
        p = local_path(uri)
        return p.is_file() or p.is_symlink() or (p.is_dir() and any(p.iterdir()))

    def complete(self, uri: str | None = None) -> bool:
        """Whether ``uri`` (default: the destination) holds a whole copy: its marker is
        there. A local tree is swapped in whole, so any content is a whole copy."""
        uri = uri or self.uri
        if self.remote and self.tree and self.marker:
            return exists(join(uri, self.marker))
        return self.present(uri)

    def taken(self) -> bool:
        """Whether a no-clobber publish must refuse the destination (an incomplete gs://
        tree is what an interrupted publish left: it is replaced)."""
        return self.complete() if self.remote and self.tree else self.present()

    def _names(self, uri: str) -> list[str]:
        """The objects of a gs:// copy, relative to it ('' for a file), marker last."""
        if not self.tree:
            return [""] if exists(uri) else []
        bucket, key = split_gcs(uri)
        with _gcs_errors(uri):
            found = _list_gcs_prefix(gcs_client(uri), bucket, key + "/", key + "/", None)
            names = [o.name for o in found if o is not None]
        return sorted(names, key=lambda n: (n == self.marker, n))

    def _obj(self, uri: str, name: str) -> str:
        return join(uri, name) if name else uri

    def _copy_over(self, src: str, *, guard_marker: bool) -> None:
        """Make this gs:// output a copy of ``src``: its objects that ``src`` lacks
        deleted first, then ``src``'s copied, the marker last (no-clobber with
        ``guard_marker``: a publisher never replaces a marker it did not remove)."""
        names = self._names(src)
        mark = (self.marker if self.tree else "") if self.last and guard_marker else None
        for name in sorted(set(self._names(self.uri)) - set(names)):
            delete(self._obj(self.uri, name))
        for name in names:
            copy_object(self._obj(src, name), self._obj(self.uri, name), overwrite=name != mark)

    # ---------------------------------------------------------------- the steps

    def swap(self, token: str) -> bool:
        """Move a staged local tree in by one atomic rename; False where the file system
        cannot exchange two directories. An exchanged old copy is then at the staging
        name, deleted with it."""
        stage, final = local_path(self.at(STAGING, token)), local_path(self.uri)
        if not self.present():  # absent, or an empty directory: free
            _rename_dir(stage, final)
            return True
        return _exchange(stage, final)

    def save(self, token: str) -> None:
        """Keep the old copy at its backup name (a local tree is moved there)."""
        backup = self.at(BACKUP, token)
        if self.remote:
            for name in self._names(self.uri):
                copy_object(self._obj(self.uri, name), self._obj(backup, name))
        elif self.tree:
            os.rename(local_path(self.uri), local_path(backup))
        else:
            _link_or_copy(local_path(self.uri), local_path(backup))

    def unmark(self) -> None:
        """Remove the completion marker (a local tree's left with :meth:`save`)."""
        if self.remote:
            delete(join(self.uri, self.marker) if self.tree and self.marker else self.uri)
        elif not self.tree:
            local_path(self.uri).unlink()

    def put(self, token: str) -> None:
        """Move the staged copy in; the last output's marker never clobbers."""
        stage = self.at(STAGING, token)
        if self.remote:
            self._copy_over(stage, guard_marker=True)
        elif self.tree:
            _rename_dir(local_path(stage), local_path(self.uri))
        else:
            _commit_local(local_path(stage), local_path(self.uri), overwrite=not self.last)

    def restore(self, token: str) -> None:
        """Put the backup ``token`` back in place of whatever is at the destination. The
        backup stays until the whole unit is back (a restore cut short is done again); a
        local tree is the unit's only output, and moves back in one rename."""
        backup = self.at(BACKUP, token)
        if self.remote:
            self._copy_over(backup, guard_marker=False)
            return
        final = local_path(self.uri)
        if self.tree:
            _remove_local(final)
            os.rename(local_path(backup), final)
            return
        if final.exists() and os.path.samefile(final, local_path(backup)):
            return  # put back already (rename would do nothing, and keep both names)
        via = local_path(self.at(STAGING, token))  # a dead run's name: removed if left
        _remove_local(via)
        _link_or_copy(local_path(backup), via)
        os.replace(via, final)

    def drop(self, uri: str) -> None:
        """Delete a copy of this output (missing: nothing to do)."""
        if not self.remote:
            _remove_local(local_path(uri))
        elif self.tree:
            delete_prefix(uri)
        else:
            delete(uri)

    # ---------------------------------------------------------------- leftovers

    def leftovers(self) -> Iterator[tuple[str, str, str, bool]]:
        """``(kind, token, uri, stale)`` of every staging and backup copy beside the
        destination. Stale: made by a dead process of this host, or (gs://) untouched
        for :data:`REMOTE_STALE_S`."""
        name = basename(self.uri)
        if not self.remote:
            where = local_path(self.uri).parent
            heads = (
                [(p.name, 0.0) for p in sorted(where.glob(glob.escape(name) + ".*"))]
                if where.is_dir()
                else []
            )
        else:
            bucket, key = split_gcs(self.uri)
            folder = key[: len(key) - len(name)]
            newest: dict[str, float] = {}
            with _gcs_errors(self.uri):
                pages = (
                    gcs_client(self.uri)
                    .list_blobs(bucket, prefix=key + ".", page_size=1000, retry=_retry())
                    .pages
                )
                for page in pages:
                    for blob in page:
                        head = blob.name[len(folder) :].split("/", 1)[0]
                        t = blob.updated.timestamp() if blob.updated else 0.0
                        newest[head] = max(newest.get(head, 0.0), t)
            heads = sorted(newest.items())
        now = time.time()
        for head, t in heads:
            for kind in (STAGING, BACKUP):
                prefix = name + kind
                if head.startswith(prefix):
                    idle = self.remote and now - t > REMOTE_STALE_S
                    stale = is_stale(head, prefix) or idle
                    yield kind, head[len(prefix) :], join(parent(self.uri), head), stale


def _note(notes: list[str] | None, text: str) -> None:
    log.info("%s", text)
    if notes is not None:
        notes.append(text)


def _recover(outputs: list[_Output], notes: list[str] | None) -> None:
    """Repair what dead runs left beside the unit ``outputs``: an incomplete unit whose
    whole backup lies beside it is restored from it (outputs the backup lacks did not
    exist then, and are removed); every other staging or backup copy of a dead run is
    deleted. Copies of live runs are left alone, and named."""
    found: dict[tuple[str, str], dict[int, str]] = {}
    for i, o in enumerate(outputs):
        for kind, token, uri, stale in o.leftovers():
            if stale:
                found.setdefault((kind, token), {})[i] = uri
            else:
                _note(notes, f"{uri}: another run's copy (still running, or of another host)")
    last = outputs[-1]
    if any(kind == BACKUP for kind, _ in found) and not last.complete():
        for kind, token in sorted(found):
            if kind == BACKUP and last.complete(last.at(BACKUP, token)):
                copies = found[kind, token]
                _restore(outputs, token, copies)
                where = copies[len(outputs) - 1]
                _note(notes, f"restored {last.uri} from {where}, left by an interrupted run")
                break
    for copies in found.values():
        for i, uri in copies.items():
            with outputs[i].errors():
                outputs[i].drop(uri)
            _note(notes, f"removed {uri}, left by an interrupted run")


def _restore(outputs: list[_Output], token: str, backed_up: Collection[int]) -> None:
    """Put the unit's backup ``token`` back: the outputs with a copy in it (``backed_up``:
    their indices) restored, the others removed (they did not exist then), the last one
    (its marker) last. The backups themselves are dropped afterwards by the caller."""
    for i, o in enumerate(outputs):
        with o.errors():
            if i in backed_up:
                o.restore(token)
            elif o.present():
                o.drop(o.uri)


def _prepare(outputs: list[_Output], notes: list[str] | None) -> str:
    """Repair the unit, refuse a taken destination that may not be overwritten (before
    anything is built), and return a fresh token for its staging and backup names."""
    _recover(outputs, notes)
    for o in outputs:
        if not o.overwrite and o.taken():
            raise AlreadyExistsError(o.uri)
    return owned_name("")


def _commit(outputs: list[_Output], token: str) -> None:
    """Move every staged output of the unit in (see the section comment)."""
    last = outputs[-1]
    saved: list[_Output] = []
    try:
        if len(outputs) == 1 and last.tree and not last.remote:
            with last.errors():
                if last.swap(token):
                    return
        if last.complete():
            for o in outputs:  # the last one's backup last: it makes the backup whole
                if o.present():
                    with o.errors():
                        o.save(token)
                    saved.append(o)
            with last.errors():
                last.unmark()
        for o in outputs:
            with o.errors():
                o.put(token)
    except BaseException:
        if saved:  # put the old unit back; if that fails too, the next run does
            try:
                _restore(outputs, token, {i for i, o in enumerate(outputs) if o in saved})
            except Exception as exc:
                log.warning("%s: the old copy is not back yet (%s)", last.uri, exc)
            else:
                _drop_all(saved, BACKUP, token)
        raise
    finally:
        _drop_all(outputs, STAGING, token)
    _drop_all(saved, BACKUP, token)


def _drop_all(outputs: list[_Output], kind: str, token: str) -> None:
    for o in outputs:
        with contextlib.suppress(OSError, StoreError):
            o.drop(o.at(kind, token))


def dir_state(
    uri: str | os.PathLike, *, marker: str | None = None, notes: list[str] | None = None
) -> str:
    """What the destination of a staged directory holds, after repairing what interrupted
    publishes left: :data:`COMPLETE`, :data:`INCOMPLETE` (gs:// only: objects without
    ``marker``) or :data:`ABSENT` (an empty local directory too)."""
    o = _Output(os.fspath(uri), tree=True, marker=marker)
    _recover([o], notes)
    return COMPLETE if o.complete() else INCOMPLETE if o.present() else ABSENT


@contextlib.contextmanager
def staged_dir(
    uri: str | os.PathLike,
    *,
    marker: str | None = None,
    overwrite: bool = False,
    notes: list[str] | None = None,
) -> Iterator[Path]:
    """Yield an empty local directory to build an output in; when the block ends without
    error it becomes ``uri`` (local or gs://), with the guarantee of this section.
    ``marker``: the file whose presence means complete (required for gs://). A complete
    destination is refused unless ``overwrite``. An OS error is one line naming ``uri``
    (or, for gs://, the local directory the output is staged in)."""
    o = _Output(os.fspath(uri), tree=True, overwrite=overwrite, marker=marker)
    token = _prepare([o], notes)
    if o.remote:
        with owned_tempdir("rmeval-stage-") as tmp:
            build = tmp / basename(o.uri)
            with _os_errors_as(tmp, f"stage {o.uri}"):
                build.mkdir()
                yield build
            _stage_remote(o, build, token)
        return
    build = local_path(o.at(STAGING, token))
    try:
        with _os_errors_as(o.uri):
            build.parent.mkdir(parents=True, exist_ok=True)
            build.mkdir()
            yield build
        _commit([o], token)
    finally:
        with contextlib.suppress(OSError):
            _remove_local(build)


def publish_dir(
    src: str | os.PathLike,
    uri: str | os.PathLike,
    *,
    marker: str | None = None,
    overwrite: bool = False,
    notes: list[str] | None = None,
) -> None:
    """Publish the finished local directory ``src`` at ``uri`` as :func:`staged_dir`
    does; to a local ``uri`` it is moved (a rename on one file system), not copied."""
    o = _Output(os.fspath(uri), tree=True, overwrite=overwrite, marker=marker)
    token = _prepare([o], notes)
    if o.remote:
        _stage_remote(o, Path(src), token)
        return
    stage = local_path(o.at(STAGING, token))
    try:
        with _os_errors_as(o.uri):
            stage.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(os.fspath(src), stage)
        _commit([o], token)
    finally:
        with contextlib.suppress(OSError):
            _remove_local(stage)


def _stage_remote(o: _Output, build: Path, token: str) -> None:
    """Upload ``build`` under the gs:// staging prefix of ``o``, then commit it."""
    try:
        upload_tree(build, o.at(STAGING, token), overwrite=True)
    except BaseException:
        _drop_all([o], STAGING, token)
        raise
    _commit([o], token)


def write_together(files: list[tuple[str, bytes, bool]], notes: list[str] | None = None) -> None:
    """Write ``(uri, data, overwrite)`` files (local or gs://) as one unit whose **last**
    file is the commit mark: a reader that sees it may read the others, and they belong
    with it. Everything is staged first (a full or read-only disk fails before any final
    name changes), then committed with the guarantee of this section."""
    n = len(files)
    outputs = [
        _Output(u, tree=False, overwrite=ow, last=i == n - 1) for i, (u, _, ow) in enumerate(files)
    ]
    if not outputs:
        return
    token = _prepare(outputs, notes)
    if n == 1:  # one file or object is replaced atomically by itself
        write_bytes(outputs[0].uri, files[0][1], overwrite=outputs[0].overwrite)
        return
    try:
        for o, (_, data, _) in zip(outputs, files, strict=True):
            if o.remote:
                write_bytes(o.at(STAGING, token), data, overwrite=True)
                continue
            with o.errors():
                local_path(o.uri).parent.mkdir(parents=True, exist_ok=True)
                with open(local_path(o.at(STAGING, token)), "xb") as f:
                    f.write(data)
    except BaseException:
        _drop_all(outputs, STAGING, token)
        raise
    _commit(outputs, token)


def recover_together(uris: list[str], notes: list[str] | None = None) -> None:
    """Repair what an interrupted :func:`write_together` of ``uris`` left (for a command
    that checks its outputs before it does the work)."""
    if uris:
        n = len(uris)
        _recover([_Output(u, tree=False, last=i == n - 1) for i, u in enumerate(uris)], notes)
