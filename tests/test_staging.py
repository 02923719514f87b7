"""The one staged-output helper of rmeval.storage (staged_dir, publish_dir, write_together)
and its one guarantee: the old copy survives any failure, and nothing half-built is ever
visible under the final name, locally or on gs://.

The kill -9 matrix publishes version v2 over a whole v1 (or into nothing) in a real
subprocess that sends itself SIGKILL just before one step (tests/kill_at.py: an audit
hook on the real file operation or HTTP request). A reader then must see v1 whole, v2
whole, nothing, or (gs:// only) an incomplete destination it refuses; never a mix. The
next publishing run repairs what the dead one left (an incomplete destination is restored
from its backup) and leaves no staging or backup copy behind."""

from __future__ import annotations

import os

import pytest

from rmeval import storage
from rmeval.errors import AlreadyExistsError, StoreError
from tests.kill_at import MARKER, file_text, run_killed, tree

INCOMPLETE = "incomplete"


def _read(uri: str) -> bytes:
    return storage.read_bytes(uri)


def seen(dest: str) -> str | None:
    """What a reader finds at ``dest``: None (nothing), "incomplete" (gs:// objects without
    the marker, which readers refuse) or the version whose tree lies there whole. Any mix
    of versions, or a local tree without its marker, fails the test."""
    found = {o.name: o.uri for o in storage.list_objects_if_any(dest)}
    if not found:
        return None
    if MARKER not in found:
        assert storage.is_gcs(dest), f"{dest}: a local tree without its marker: {sorted(found)}"
        return INCOMPLETE
    version = _read(found[MARKER]).split(b":", 1)[0].decode()
    assert {n: _read(u) for n, u in found.items()} == tree(version), f"{dest}: a mix"
    return version


def seen_pair(scores: str, metrics: str) -> str | None:
    """The same for a write_together pair: the version of both, None, or "incomplete"
    (scores without metrics: what evaluate replaces); metrics beside other scores fail."""
    if not storage.exists(metrics):
        return INCOMPLETE if storage.exists(scores) else None
    version = _read(metrics).split(b":", 1)[0].decode()
    assert _read(metrics) == file_text(version, metrics)
    assert _read(scores) == file_text(version, scores), "metrics beside another run's scores"
    return version


def leftovers(*uris: str) -> list[str]:
    """Staging and backup copies beside ``uris``."""
    out = []
    for uri in uris:
        name = storage.basename(uri)
        for o in storage.list_objects_if_any(storage.parent(uri)):
            head = o.name.split("/", 1)[0]
            if head.startswith((name + storage.STAGING, name + storage.BACKUP)):
                out.append(head)
    return sorted(set(out))


def publish(dest: str, version: str, overwrite: bool = False) -> None:
    with storage.staged_dir(dest, marker=MARKER, overwrite=overwrite) as build:
        for name, data in tree(version).items():
            (build / name).parent.mkdir(parents=True, exist_ok=True)
            (build / name).write_bytes(data)


def together(version: str, uris: list[str], overwrite: bool = False) -> None:
    storage.write_together([(u, file_text(version, u), overwrite) for u in uris])


@pytest.fixture
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("gcs_bucket") + "/store"


# (case, store, v1 there first, event, pattern, nth, no RENAME_EXCHANGE, seen after the
# kill, seen after the next run repaired it)
TREE_KILLS = [
    ("building", "local", True, "open", r"/rm\.partial-[^/]+/sub/", 1, False, "v1", "v1"),
    # the exchange is no audit event: the one listing of the destination just before it
    ("before the exchange", "local", True, "listdir", r"/rm$", 1, False, "v1", "v1"),
    ("after the exchange", "local", True, "rmtree", r"/rm\.partial-", 1, False, "v2", "v2"),
    ("backing up (no exchange)", "local", True, "rename", r"/rm\.old-", 1, True, "v1", "v1"),
    ("moving in (no exchange)", "local", True, "rename", r"/rm$", 1, True, None, "v1"),
    ("dropping the backup (no exchange)", "local", True, "rmtree", r"/rm\.old-", 1, True, "v2", "v2"),
    ("moving in, nothing before", "local", False, "rename", r"/rm$", 1, False, None, None),
    ("uploading the staging", "gcs", True, "http", r"^POST /upload/", 2, False, "v1", "v1"),
    ("copying the backup", "gcs", True, "http", r"/copyTo/b/[^/]+/o/store%2Frm\.old-", 2, False, "v1", "v1"),
    ("removing the marker", "gcs", True, "http", r"^DELETE \S+/o/store%2Frm%2Fconfig\.json", 1, False, "v1", "v1"),
    ("removing an old file", "gcs", True, "http", r"^DELETE \S+/o/store%2Frm%2Fonly-v1", 1, False, INCOMPLETE, "v1"),
    ("copying in", "gcs", True, "http", r"/copyTo/b/[^/]+/o/store%2Frm%2F", 2, False, INCOMPLETE, "v1"),
    ("copying the marker in", "gcs", True, "http", r"/copyTo/b/[^/]+/o/store%2Frm%2Fconfig", 1, False, INCOMPLETE, "v1"),
    ("dropping the staging", "gcs", True, "http", r"^DELETE \S+/o/store%2Frm\.partial-", 1, False, "v2", "v2"),
    ("dropping the backup", "gcs", True, "http", r"^DELETE \S+/o/store%2Frm\.old-", 1, False, "v2", "v2"),
    ("copying in, nothing before", "gcs", False, "http", r"/copyTo/b/[^/]+/o/store%2Frm%2F", 2, False, INCOMPLETE, INCOMPLETE),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, root, before, event, pattern, nth, no_exchange, after_kill, repaired",
    [pytest.param(*c[:1], c[1], *c[2:], id=c[0]) for c in TREE_KILLS],
    indirect=["root"],
)
def test_kill_9_while_publishing_a_tree(
    case, root, before, event, pattern, nth, no_exchange, after_kill, repaired, tmp_path
):
    dest = storage.join(root, "rm")
    if before:
        publish(dest, "v1")
    argv = ("staged", dest, "v2", "--overwrite")
    run_killed(event, pattern, *argv, nth=nth, no_exchange=no_exchange)
    assert seen(dest) == after_kill
    if after_kill == INCOMPLETE:  # readers refuse it
        with pytest.raises(StoreError, match=f"incomplete: no {MARKER}"):
            storage.download_tree(dest, tmp_path / "download", marker=MARKER)
    assert leftovers(dest), "the killed run left nothing to repair: the kill came too late"

    # the next run to publish there repairs first; without overwrite it then refuses a
    # whole copy, and replaces an incomplete one
    notes: list[str] = []
    state = storage.dir_state(dest, marker=MARKER, notes=notes)
    assert state == {None: storage.ABSENT, INCOMPLETE: storage.INCOMPLETE}.get(
        repaired, storage.COMPLETE
    )
    assert seen(dest) == repaired and leftovers(dest) == [], notes
    assert all("left by an interrupted run" in n for n in notes) and notes
    if repaired in ("v1", "v2"):
        with pytest.raises(AlreadyExistsError):
            publish(dest, "v3")
    publish(dest, "v3", overwrite=repaired in ("v1", "v2"))
    assert seen(dest) == "v3" and leftovers(dest) == []


PAIR_KILLS = [
    ("scores moving in", "local", "rename", r"/scores\.jsonl$", INCOMPLETE),
    ("metrics moving in", "local", "link", r"/metrics\.json$", INCOMPLETE),
    ("dropping the backups", "local", "remove", r"/scores\.jsonl\.old-", "v2"),
    ("removing the old metrics", "gcs", "http", r"^DELETE \S+/o/store%2Frun%2Fmetrics\.json\?", "v1"),
    ("copying the metrics in", "gcs", "http", r"/copyTo/b/[^/]+/o/store%2Frun%2Fmetrics\.json\?", INCOMPLETE),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, root, event, pattern, after_kill",
    [pytest.param(c[0], c[1], *c[2:], id=c[0]) for c in PAIR_KILLS],
    indirect=["root"],
)
def test_kill_9_while_writing_files_together(case, root, event, pattern, after_kill):
    pair = [storage.join(root, "run", "scores.jsonl"), storage.join(root, "run", "metrics.json")]
    together("v1", pair)
    run_killed(event, pattern, "together", "v2", "--overwrite", *pair)
    assert seen_pair(*pair) == after_kill
    storage.recover_together(pair)
    assert seen_pair(*pair) == ("v1" if after_kill == INCOMPLETE else after_kill)
    assert leftovers(*pair) == []
    together("v3", pair, overwrite=True)
    assert seen_pair(*pair) == "v3" and leftovers(*pair) == []


@pytest.mark.parametrize("root", ["local", "gcs"], indirect=True)
def test_a_repair_cut_short_is_done_again(root):
    """kill -9 in the middle of restoring a backup, too: the backup stays until the
    whole unit is back."""
    if storage.is_gcs(root):
        dest = storage.join(root, "rm")
        publish(dest, "v1")
        run_killed("http", r"/copyTo/b/[^/]+/o/store%2Frm%2F", "staged", dest, "v2",
                        "--overwrite", nth=2)  # fmt: skip
        assert seen(dest) == INCOMPLETE
        # the repairing run dies after restoring one file of two, before the marker
        run_killed("http", r"/o/store%2Frm\.old-\S+/copyTo/", "staged", dest, "v3", nth=2)
        assert seen(dest) == INCOMPLETE
        assert storage.dir_state(dest, marker=MARKER) == storage.COMPLETE
        assert seen(dest) == "v1" and leftovers(dest) == []
        return
    pair = [storage.join(root, "run", "scores.jsonl"), storage.join(root, "run", "metrics.json")]
    together("v1", pair)
    run_killed("link", r"/metrics\.json$", "together", "v2", "--overwrite", *pair)
    # the repairing run dies after putting the old scores back, before the old metrics
    run_killed("rename", r"/metrics\.json$", "together", "v3", *pair)
    assert seen_pair(*pair) == INCOMPLETE
    storage.recover_together(pair)
    assert seen_pair(*pair) == "v1" and leftovers(*pair) == []


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("root", ["local", "gcs"], indirect=True)
def test_a_failing_build_or_publish_keeps_the_old_copy(root):
    dest = storage.join(root, "rm")
    publish(dest, "v1")
    with pytest.raises(RuntimeError), storage.staged_dir(dest, marker=MARKER, overwrite=True) as b:
        (b / MARKER).write_bytes(b"half")
        raise RuntimeError("the build failed")
    assert seen(dest) == "v1" and leftovers(dest) == []

    # the publish itself fails once the old copy is partly replaced: it is put back
    real, calls = storage.copy_object, []

    def failing_copy(src, dst, overwrite=True):
        calls.append(dst)
        if storage.STAGING in src and dst.endswith(MARKER):  # the new marker moving in
            raise StoreError(f"{dst}: storage error 503: injected")
        return real(src, dst, overwrite=overwrite)

    def failing_rename(src, dst):  # local: the new tree cannot move in
        raise OSError(28, os.strerror(28), os.fspath(src))

    with pytest.MonkeyPatch.context() as patch:
        if storage.is_gcs(root):
            patch.setattr(storage, "copy_object", failing_copy)
        else:  # without RENAME_EXCHANGE: the two-rename path, whose second rename fails
            patch.setattr(storage, "_exchange", lambda a, b: False)
            patch.setattr(storage, "_rename_dir", failing_rename)
        with pytest.raises(StoreError):
            publish(dest, "v2", overwrite=True)
    assert seen(dest) == "v1" and leftovers(dest) == []


def test_local_swap_is_one_exchange_and_an_empty_dir_is_free(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "name").write_text(d.name)
    # the file system here exchanges directories: the cases above test that path
    assert storage._exchange(a, b) and (a / "name").read_text() == "b"
    dest = tmp_path / "rm"
    dest.mkdir()  # empty: free, as if absent
    publish(str(dest), "v1")
    inode = dest.stat().st_ino
    publish(str(dest), "v2", overwrite=True)
    assert seen(str(dest)) == "v2" and dest.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "rm"]


def test_publish_dir_moves_a_finished_tree(store_root, tmp_path):
    src = tmp_path / "built"
    for name, data in tree("v1").items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    dest = storage.join(store_root, "kept")
    storage.publish_dir(src, dest, marker=MARKER)
    assert seen(dest) == "v1" and leftovers(dest) == []
    assert not src.exists() or storage.is_gcs(dest)  # local: moved, not copied
    with pytest.raises(AlreadyExistsError):
        storage.publish_dir(tmp_path, dest, marker=MARKER)


def test_live_runs_copies_are_left_alone(store_root):
    """A staging copy whose process still runs (here: this one) is not removed."""
    dest = storage.join(store_root, "rm")
    from rmeval.procutil import owned_name

    live = storage.join(store_root, owned_name("rm" + storage.STAGING))
    storage.write_bytes(storage.join(live, "a.bin"), b"in progress")
    notes: list[str] = []
    assert storage.dir_state(dest, marker=MARKER, notes=notes) == storage.ABSENT
    assert storage.exists(storage.join(live, "a.bin"))
    assert notes and "another run's copy" in notes[0]


def test_gcs_tree_needs_a_marker(gcs_bucket):
    with (
        pytest.raises(ValueError, match="completion marker"),
        storage.staged_dir(gcs_bucket + "/rm"),
    ):
        pass
