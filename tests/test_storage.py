"""One storage suite, run against a local directory and against the GCS emulator."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from rmeval import storage
from rmeval.errors import AlreadyExistsError, StoreError


def _put(root: str, name: str, data: bytes) -> str:
    uri = storage.join(root, name)
    storage.write_bytes(uri, data)
    return uri


def test_write_read_exists_size_delete(store_root):
    uri = storage.join(store_root, "a", "b.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "héllo")
    assert storage.exists(uri)
    assert storage.read_text(uri) == "héllo"
    assert storage.size(uri) == len("héllo".encode())
    storage.delete(uri)
    assert not storage.exists(uri)


def test_no_clobber_unless_overwrite(store_root):
    uri = _put(store_root, "x/metrics.json", b"first")
    with pytest.raises(AlreadyExistsError) as info:
        storage.write_bytes(uri, b"second")
    # the library names the path only; the command says how to replace it (tests/test_cli.py)
    assert info.value.path == uri and str(info.value) == f"{uri}: already exists"
    assert storage.read_bytes(uri) == b"first"
    storage.write_bytes(uri, b"second", overwrite=True)
    assert storage.read_bytes(uri) == b"second"


def test_no_clobber_large_upload(store_root):
    # Larger than the client's multipart threshold: the resumable path on GCS.
    data = os.urandom(9 * 1024 * 1024)
    uri = _put(store_root, "big.bin", data)
    with pytest.raises(StoreError, match="already exists"):
        storage.write_bytes(uri, b"x" * (9 * 1024 * 1024))
    assert storage.read_range(uri, 0, 64) == data[:64]


def test_failed_write_leaves_nothing(store_root):
    uri = storage.join(store_root, "partial.bin")
    with pytest.raises(RuntimeError), storage.open_writer(uri) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert [o.name for o in storage.list_objects_if_any(store_root)] == []


def test_list_recursive_with_filter(store_root):
    names = [
        "exp_a--1/streaming_params_10",
        "exp_a--1/streaming_params_20",
        "exp_b--2/streaming_params",
        "exp_b--2/notes.txt",
        "deep/er/exp_c--3/streaming_params_5",
    ]
    for i, n in enumerate(names):
        _put(store_root, n, b"x" * (i + 1))
    listed = list(storage.list_objects(store_root))
    assert sorted(o.name for o in listed) == sorted(names)
    by_name = {o.name: o for o in listed}
    assert by_name["exp_b--2/notes.txt"].size == 4
    assert all(o.updated is not None for o in listed)
    ckpts = sorted(o.name for o in storage.list_objects(store_root, match="streaming_params*"))
    assert ckpts == sorted(n for n in names if "streaming_params" in n)
    for o in listed:
        assert storage.read_bytes(o.uri) == b"x" * (names.index(o.name) + 1)


def test_read_range_and_seekable_reader(store_root):
    data = bytes(range(256)) * 4000
    uri = _put(store_root, "blob.bin", data)
    assert storage.read_range(uri, 10, 20) == data[10:20]
    assert storage.read_range(uri, len(data) - 5, len(data) + 100) == data[-5:]
    assert storage.read_range(uri, 7, 7) == b""
    with storage.open_reader(uri, block_size=1024) as f:
        assert f.seekable()
        f.seek(500_000)
        assert f.read(100) == data[500_000:500_100]
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(3)
        assert f.read(3) == data[3:6]


def test_gcs_reader_fetches_ranges_not_the_whole_object(gcs_bucket):
    data = os.urandom(4 * 1024 * 1024)
    uri = _put(gcs_bucket, "big.bin", data)
    raw = storage.RangeReader(uri)
    reader = io.BufferedReader(raw, buffer_size=4096)
    reader.seek(3_000_000)
    assert reader.read(10) == data[3_000_000:3_000_010]
    reader.seek(100)
    assert reader.read(10) == data[100:110]
    assert raw.bytes_fetched <= 2 * 4096
    assert raw.requests == 2


def test_upload_and_download_tree(store_root, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w" * 1000)
    (src / "sub" / "t.txt").write_text("t")
    dest = storage.join(store_root, "models", "run1")
    assert storage.upload_tree(src, dest) == 3
    with pytest.raises(StoreError, match="already exists"):
        storage.upload_tree(src, dest)
    back = storage.download_tree(dest, tmp_path / "back")
    assert (back / "model.safetensors").read_bytes() == b"w" * 1000
    assert (back / "sub" / "t.txt").read_text() == "t"


def test_missing_things_are_clear_errors(store_root):
    missing = storage.join(store_root, "nope", "x.json")
    with pytest.raises(StoreError, match=r"nope/x\.json"):
        storage.read_bytes(missing)
    with pytest.raises(StoreError):
        storage.size(missing)


def test_missing_local_listing_names_the_path(tmp_path):
    with pytest.raises(StoreError, match=r"does-not-exist: no such file or directory"):
        list(storage.list_objects(tmp_path / "does-not-exist"))


def test_missing_bucket(gcs_bucket):
    with pytest.raises(StoreError, match="not found"):
        list(storage.list_objects("gs://no-such-bucket-rmeval/x"))


def test_file_scheme(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("z")
    listed = list(storage.list_objects(f"file://{tmp_path}/d"))
    assert [o.name for o in listed] == ["f.txt"]
    assert listed[0].uri.startswith("file://")
    assert storage.read_text(listed[0].uri) == "z"


# --------------------------------------------------------------------------- faults


@pytest.fixture
def faulty_gcs(gcs_emulator, monkeypatch):
    """The real client talking to the emulator through a proxy that fails every 3rd
    request (alternating 503 and a dropped connection)."""
    from tests.conftest import _point_client_at, make_bucket
    from tests.gcs_emulator import FaultProxy

    _point_client_at(monkeypatch, gcs_emulator.host)
    bucket = make_bucket()
    proxy = FaultProxy(gcs_emulator.port, every=3)
    yield bucket, proxy, monkeypatch
    proxy.stop()


def test_listing_and_ranged_reads_survive_faults(faulty_gcs):
    bucket, proxy, monkeypatch = faulty_gcs
    data = os.urandom(200_000)
    names = [f"runs/exp_{i:03d}--h/streaming_params_{i}" for i in range(40)]
    for n in names:
        storage.write_bytes(storage.join(bucket, n), data[:100])
    storage.write_bytes(storage.join(bucket, "blob.bin"), data)
    clean = [(o.name, o.size) for o in storage.list_objects(bucket + "/runs")]
    clean_ranges = [
        storage.read_range(bucket + "/blob.bin", i * 997, i * 997 + 3000) for i in range(30)
    ]

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.host)
    faulty = [(o.name, o.size) for o in storage.list_objects(bucket + "/runs")]
    faulty_ranges = [
        storage.read_range(bucket + "/blob.bin", i * 997, i * 997 + 3000) for i in range(30)
    ]
    with storage.open_reader(bucket + "/blob.bin", block_size=5000) as f:
        f.seek(123_456)
        chunk = f.read(20_000)

    assert proxy.faults >= 5, "the proxy should have injected faults"
    assert faulty == clean
    assert len(clean) == 40
    assert faulty_ranges == clean_ranges
    assert chunk == data[123_456:143_456]


def test_no_credentials_no_emulator_is_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STORAGE_EMULATOR", "GOOGLE_", "CLOUDSDK"))
    }
    env.update(
        NO_GCE_CHECK="true",
        HOME=str(tmp_path),  # no ~/.config/gcloud ADC
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "ls", "gs://some-bucket/prefix"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "gs://some-bucket/prefix" in lines[0]
    assert "gcloud auth application-default login" in lines[0]
    assert "Traceback" not in proc.stderr


def test_nonexistent_local_path_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rmeval", "ls", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"rmeval: error: {tmp_path / 'missing'}: no such file or directory"
    ]


def test_local_writes_get_the_usual_file_mode(tmp_path):
    """Not mkstemp's 0600: what open() would give under the process umask."""
    storage.write_text(str(tmp_path / "t.csv"), "a,b\n")
    with open(tmp_path / "plain.csv", "w") as f:
        f.write("a,b\n")
    mode = (tmp_path / "t.csv").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.csv").stat().st_mode & 0o777
