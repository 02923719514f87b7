"""Run state in the store (rmeval.state): claims raced for locally and on gs:// (the
emulator enforces generation preconditions), takeover of expired claims, failure records,
plan's use of them, `rmeval status`, and notifications to a loopback webhook."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rmeval import plan as planner
from rmeval import state, status, storage
from rmeval import store as store_layout
from rmeval.errors import EvalError
from rmeval.rewardbench import scoring
from tests.fake_beaker import fake_beaker  # noqa: F401

RUN = "t-run"


def _race(n: int, fn) -> list:
    """``fn()`` on ``n`` threads released at once; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # reported by the caller's asserts
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _foreign_claim(store: str, run: str = RUN, *, ttl: float = 600.0) -> str:
    """A claim.json as another host's run-one writes it (its liveness cannot be checked
    here: only its expiry counts)."""
    body = {
        "attempt": "run-one-otherhost.1-4242-abcd0123",
        "number": 1,
        "host": "otherhost",
        "job": {"backend": "github", "id": "run 99/1 job run"},
        "started": "2026-12-01T00:00:00Z",
        "expires": "2026-12-01T00:10:00Z",
        "ttl_s": ttl,
        "gpus": "3",
        "stage": "convert",
    }
    uri = store_layout.run_file(store, run, store_layout.CLAIM_FILE)
    storage.write_text(uri, json.dumps(body), overwrite=True)
    return uri


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize("n", [20])
def test_racing_claims_exactly_one_wins(store_root, n):
    claims = [state.Claim(store_root, RUN, checkpoint="c", gpus=None) for _ in range(n)]
    it = iter(claims)
    lock = threading.Lock()

    def take():
        with lock:
            c = next(it)
        return c, c.acquire()

    results = _race(n, take)
    assert not [r for r in results if isinstance(r, Exception)], results
    winners = [c for c, holder in results if holder is None]
    assert len(winners) == 1
    losers = [holder for c, holder in results if holder is not None]
    assert all(h.attempt == winners[0].attempt for h in losers)
    assert state.read_claim(store_root, RUN).attempt == winners[0].attempt


def test_expired_claim_is_taken_over_by_one_taker(store_root, monkeypatch):
    monkeypatch.setenv(state.SKEW_ENV, "0")
    _foreign_claim(store_root, ttl=0.2)
    time.sleep(0.5)  # past its expiry by the store's own clock
    held = state.read_claim(store_root, RUN)
    assert held is not None and not held.live()
    claims = [state.Claim(store_root, RUN, checkpoint="c", gpus="0") for _ in range(8)]
    it = iter(claims)
    lock = threading.Lock()

    def take():
        with lock:
            c = next(it)
        return c, c.acquire()

    results = _race(8, take)
    assert not [r for r in results if isinstance(r, Exception)], results
    winners = [c for c, holder in results if holder is None]
    assert len(winners) == 1, results
    now = state.read_claim(store_root, RUN)
    assert now.attempt == winners[0].attempt and now.gpus == "0"


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    from tests.run_fixtures import make_material

    return make_material(tmp_path_factory.mktemp("material"), n=1)


def _run_one_cli(material, store: str, *extra: str, env=None) -> list[str]:
    from tests.run_fixtures import HEADS

    return [
        sys.executable, "-m", "rmeval", "run-one", material.checkpoints[0], "--store", store,
        "--prefix", "t", "--tokenizer", material.tokenizer, "--eval-data", material.dataset,
        "--num-heads", str(HEADS), *extra,
    ]  # fmt: skip


def test_a_live_foreign_claim_blocks_and_the_cli_says_claimed_by(material, tmp_path):
    from rmeval import naming

    store = str(tmp_path / "store")
    run = naming.run_name(material.checkpoints[0], "t")
    _foreign_claim(store, run)
    r = subprocess.run(_run_one_cli(material, store), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [
        "claimed by otherhost (run 99/1 job run, GPUs 3) since 2026-12-01T00:00:00Z"
    ]
    assert sorted(o.name for o in storage.list_objects(store)) == [f"{run}/claim.json"]


def test_heartbeat_renews_and_a_lost_claim_is_noticed(store_root, monkeypatch):
    monkeypatch.setenv(state.TTL_ENV, "0.3")
    monkeypatch.setenv(state.SKEW_ENV, "0")
    mine = state.Claim(store_root, RUN, checkpoint="c", gpus=None)
    assert mine.acquire() is None
    first = mine.version
    with mine.heartbeat():
        time.sleep(1.0)  # three TTLs: without the heartbeat it would have expired
        assert state.read_claim(store_root, RUN).live()
        assert mine.version != first
    # a takeover meanwhile (the holder was thought dead): the holder notices, writes nothing
    time.sleep(0.5)
    other = state.Claim(store_root, RUN, checkpoint="c", gpus=None)
    assert other.acquire() is None
    assert mine.renew(stage="publish") is False
    assert mine.lost_to is not None and "since" in mine.lost_to
    mine.release()  # never removes the new holder's claim
    assert state.read_claim(store_root, RUN).attempt == other.attempt


def test_attempt_records_a_failure_and_releases(store_root):
    for n in (1, 2):
        claim = state.Claim(store_root, RUN, checkpoint="c", gpus="1")
        assert claim.acquire() is None
        with pytest.raises(EvalError), state.attempt(claim):
            claim.renew(stage="evaluate")
            raise EvalError("the model gave NaN rewards\nsecond line")
        failure = state.read_failure(store_root, RUN)
        assert (failure.kind, failure.stage, failure.attempts) == ("error", "evaluate", n)
        assert (failure.error_type, failure.error) == ("EvalError", "the model gave NaN rewards")
        assert failure.job["backend"] in ("local", "github", "beaker")
        assert state.read_claim(store_root, RUN) is None  # released
    claim = state.Claim(store_root, RUN, checkpoint="c", gpus=None)
    assert claim.acquire() is None
    with pytest.raises(SystemExit), state.attempt(claim):
        raise SystemExit(143)  # what SIGTERM becomes (procutil.sigterm_as_exit)
    failure = state.read_failure(store_root, RUN)
    assert (failure.kind, failure.attempts, failure.stage) == ("interrupted", 3, "convert")


def test_job_ids_of_each_backend():
    gh = state.job_of({"GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_JOB": "run",
                       "GITHUB_REPOSITORY": "o/r", "GITHUB_SERVER_URL": "https://github.com"})  # fmt: skip
    assert gh == {"backend": "github", "id": "run 7/2 job run",
                  "url": "https://github.com/o/r/actions/runs/7"}  # fmt: skip
    bk = state.job_of({"BEAKER_JOB_ID": "01J", "BEAKER_EXPERIMENT_ID": "01E"})
    assert bk == {"backend": "beaker", "id": "job 01J", "experiment": "01E"}
    assert state.job_of({}) == {"backend": "local", "id": f"pid {os.getpid()}"}


# --------------------------------------------------------------------------- plan, status


def _metrics(value: float) -> bytes:
    return json.dumps({**{s: value for s in scoring.SUBSETS}, "model": "m"}).encode()


def _publish_done(store: str, run: str, value: float) -> None:
    store_layout.publish(store, run, [], _metrics(value), overall=value)


def _fail(store: str, run: str, times: int) -> None:
    for _ in range(times):
        claim = state.Claim(store, run, checkpoint=f"ckpt/{run}", gpus=None)
        assert claim.acquire() is None
        with pytest.raises(EvalError), state.attempt(claim):
            claim.renew(stage="convert")
            raise EvalError("streaming_params_5: truncated at byte 4096")


def _source(tmp_path, names: list[str]) -> str:
    src = tmp_path / "ckpts"
    for n in names:
        (src / n).mkdir(parents=True)
        (src / n / "streaming_params_5").write_bytes(b"x")
    return str(src)


def _demo_store(store: str) -> None:
    for i, run in enumerate(["t-a", "t-b", "t-c"]):
        _publish_done(store, run, 0.6 + i / 10)
    _fail(store, "t-failed", 1)
    _fail(store, "t-gaveup", 3)
    _foreign_claim(store, "t-running")


def test_plan_skips_live_claims_retries_failures_then_gives_up(tmp_path, caplog):
    store = str(tmp_path / "store")
    names = ["a", "b", "c", "failed", "gaveup", "running", "new"]
    src = _source(tmp_path, names)
    _demo_store(store)
    # corrupt state files: reported, treated as absent, never a crash
    storage.write_text(store_layout.run_file(store, "t-new", store_layout.CLAIM_FILE), "{trunc")
    storage.write_text(store_layout.run_file(store, "t-new", store_layout.FAILED_FILE), "[]")
    with caplog.at_level(logging.WARNING):
        p = planner.plan(src, prefix="t", store=store)
    assert "t-new/claim.json: unreadable claim" in caplog.text
    assert "t-new/failed.json: unreadable failure record" in caplog.text
    assert [r.run for r in p.running] == ["t-running"]
    assert [r.run for r in p.given_up] == ["t-gaveup"]
    assert [r.run for r in p.failed] == ["t-failed"]
    assert [r.run for r in p.to_run] == ["t-failed", "t-new"]
    assert p.summary() == (
        "found 7 checkpoint(s): 3 done, 1 running, 1 failed (retried), 1 given up, 2 to run"
    )
    more = planner.plan(src, prefix="t", store=store, max_attempts=4)
    assert [r.run for r in more.to_run] == ["t-failed", "t-gaveup", "t-new"]
    again = planner.plan(src, prefix="t", store=store, retry_failed=True)
    assert [r.run for r in again.to_run] == ["t-failed", "t-gaveup", "t-new"]
    assert json.loads(p.to_json())["given_up"] == 1


def test_status_one_line_per_run_and_counts(tmp_path, store_root):
    _demo_store(store_root)
    st = status.status(store_root)
    table = st.table()
    print(table)  # the closing note's snippet
    lines = table.splitlines()
    assert lines[0].split() == ["state", "run", "detail"]
    by_run = {ln[11:].split()[0]: ln for ln in lines[1:-1]}  # state is 10 wide
    assert by_run["t-running"].startswith("running")
    assert (
        "by otherhost (run 99/1 job run, GPUs 3) since 2026-12-01T00:00:00Z" in by_run["t-running"]
    )
    assert by_run["t-failed"].startswith("failed")
    assert "1/3 attempt(s), last at convert" in by_run["t-failed"]
    assert "EvalError: streaming_params_5: truncated at byte 4096" in by_run["t-failed"]
    assert by_run["t-gaveup"].startswith("given up") and "3/3 attempt(s)" in by_run["t-gaveup"]
    assert by_run["t-c"].startswith("done") and "Overall 0.8000" in by_run["t-c"]
    assert lines[-1] == (
        "1 running, 1 failed, 1 given up, 0 planned, 3 done, 0 superseded (6 runs)"
    )
    only = json.loads(st.to_json("failed"))
    assert [r["run"] for r in only["runs"]] == ["t-failed"]
    assert only["runs"][0]["attempts"] == 1 and only["counts"]["done"] == 3


def test_status_cli_with_source_lists_planned_and_superseded(tmp_path):
    store = str(tmp_path / "store")
    _demo_store(store)
    src = _source(tmp_path, ["a", "new"])
    (tmp_path / "ckpts" / "new" / "streaming_params_3").write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", "status", "--store", store, "--source", src,
         "--prefix", "t", "--only", "planned"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:-1]
    assert [ln.split()[:2] for ln in rows] == [["planned", "t-new"]]
    assert r.stdout.splitlines()[-1].startswith("1 running, 1 failed, 1 given up, 1 planned")
    assert "1 superseded" in r.stdout.splitlines()[-1]


def test_status_of_a_missing_store_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rmeval", "status", "--store", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nope" in r.stderr


# --------------------------------------------------------------------------- notifications


class Receiver:
    """A loopback webhook that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/T000/B000/secret"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_plan_notifies_each_given_up_run_once(tmp_path, receiver):
    store = str(tmp_path / "store")
    src = _source(tmp_path, ["a", "gaveup", "failed"])
    _demo_store(store)
    for _ in range(2):  # the second plan posts nothing new
        planner.make_plan(src, prefix="t", store=store, render=False, notify=receiver.url)
    assert len(receiver.bodies) == 1
    (body,) = receiver.bodies
    assert set(body) == {"text"}
    assert body["text"].startswith("rmeval: gave up on t-gaveup after 3 failed attempt(s)")
    assert "convert: EvalError: streaming_params_5: truncated" in body["text"]


def test_a_failing_webhook_is_logged_and_never_fatal(tmp_path, caplog):
    from rmeval import notify
    from tests.gcs_emulator import free_port

    url = f"http://127.0.0.1:{free_port()}/services/T/B/secret-path"
    with caplog.at_level(logging.WARNING):
        assert notify.post(url, "hello", timeout=2) is False
    assert "did not take the message" in caplog.text
    assert "secret-path" not in caplog.text  # webhook paths are secrets
    store = str(tmp_path / "store")
    src = _source(tmp_path, ["gaveup"])
    _fail(store, "t-gaveup", 3)
    p, _ = planner.make_plan(src, prefix="t", store=store, render=False, notify=url)
    assert [r.run for r in p.given_up] == ["t-gaveup"]


# --------------------------------------------------------------------------- crashes


def _wait_converting(proc, tmpdir) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(tmpdir.glob("rmeval-run-*")):  # claimed, past the preflight: converting
            return
        time.sleep(0.005)
    raise AssertionError("run-one finished (or never started converting) before the signal")


@pytest.mark.slow  # a killed run-one and its rerun, each an interpreter with torch
def test_kill_9_mid_convert_expires_and_the_next_plan_takes_over(material, tmp_path):
    import signal

    from rmeval import naming
    from tests.run_fixtures import HEADS

    store, ref_store = str(tmp_path / "store"), str(tmp_path / "ref")
    run = naming.run_name(material.checkpoints[0], "t")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # a short expiry, as for a claim of another host whose liveness nobody can check
    env = dict(os.environ, TMPDIR=str(tmpdir), **{state.TTL_ENV: "1", state.SKEW_ENV: "0"})
    proc = subprocess.Popen(_run_one_cli(material, store), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_converting(proc, tmpdir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    held = state.read_claim(store, run)
    assert held is not None and held.stage in ("convert", "evaluate")  # left by the kill
    assert not storage.exists(store_layout.run_file(store, run, store_layout.FAILED_FILE))
    time.sleep(1.5)  # past its expiry even without the dead-pid rule
    src = storage.parent(storage.parent(material.checkpoints[0]))
    p = planner.plan(src, prefix="t", store=store)
    assert [r.run for r in p.to_run] == [run] and p.running == []
    again = subprocess.run(_run_one_cli(material, store), env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "taking over the expired claim" in again.stderr
    from rmeval import run as run_mod

    ref = run_mod.run_one(material.checkpoints[0], ref_store, prefix="t", num_heads=HEADS,
                          tokenizer=material.tokenizer, eval_data=material.dataset,
                          progress=False)  # fmt: skip
    got = json.loads(storage.read_text(store_layout.run_file(store, run, "metrics.json")))
    assert got == ref.metrics  # identical metrics
    assert state.read_claim(store, run) is None


@pytest.mark.slow  # a run-one stopped by SIGTERM, in its own interpreter
def test_sigterm_is_an_interrupted_failure_and_releases_the_claim(material, tmp_path):
    import signal

    from rmeval import naming

    store = str(tmp_path / "store")
    run = naming.run_name(material.checkpoints[0], "t")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(_run_one_cli(material, store, "--gpus", "5"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_converting(proc, tmpdir)
    assert state.read_claim(store, run).gpus == "5"  # the claim records the GPUs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "recorded in" in err and "failed.json" in err
    failure = state.read_failure(store, run)
    assert (failure.kind, failure.attempts) == ("interrupted", 1)
    assert failure.stage in ("convert", "evaluate")
    assert failure.raw["gpus"] == "5"
    assert state.read_claim(store, run) is None
    assert not list(tmpdir.glob("rmeval-run-*"))  # temporary files removed too


def test_run_one_notifies_a_new_best_overall_only(material, tmp_path, receiver):
    from rmeval import run as run_mod
    from tests.run_fixtures import HEADS

    def go(store):
        return run_mod.run_one(material.checkpoints[0], store, prefix="t", num_heads=HEADS,
                               tokenizer=material.tokenizer, eval_data=material.dataset,
                               progress=False, notify=receiver.url)  # fmt: skip

    beaten = str(tmp_path / "beaten")
    _publish_done(beaten, "t-best", 0.999)  # a better run is already there: no message
    assert go(beaten).status == "ok"
    assert receiver.bodies == []
    first = str(tmp_path / "first")
    res = go(first)
    (body,) = receiver.bodies
    overall = status.status(first).rows[0].overall
    assert body == {"text": f"rmeval: new best Overall {overall:.4f} in {first}: {res.run}"}


def test_status_shows_the_beaker_experiment_state(fake_beaker, tmp_path):  # noqa: F811
    store = str(tmp_path / "store")
    _demo_store(store)
    ws = fake_beaker.add_workspace("ai2/hp-evals")
    fake_beaker.add_experiment(ws, "rm-eval-t-running", state="running")
    fake_beaker.add_experiment(ws, "rm-eval-t-a", state="finalized")
    st = status.status(store, workspace="ai2/hp-evals", beaker_timeout=30)
    by_run = {r.run: r for r in st.rows}
    assert by_run["t-running"].beaker == "running"
    assert by_run["t-a"].beaker == "succeeded"
    assert by_run["t-failed"].beaker is None  # no experiment of that name
    assert "[beaker: running]" in st.table()


@pytest.mark.slow  # 20 interpreters at once (each stops at the claim but one)
def test_20_concurrent_run_one_processes_on_the_emulator_one_converts(material, gcs_bucket):
    """The CLI as runners start it, 20 processes on one run against gs://: exactly one
    converts and publishes, the 19 others print one "claimed by" line (or, started after the
    winner finished, "skipped") and exit 0."""
    store = f"{gcs_bucket}/store"
    cmd = _run_one_cli(material, store)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(cmd, **pipes) for _ in range(20)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [e[-300:] for _, e in outs]
    firsts = [o.strip().splitlines()[0].split()[0] for o, _ in outs]
    assert firsts.count("ok") == 1, firsts
    assert set(firsts) <= {"ok", "claimed", "skipped"} and "claimed" in firsts
    converted = [e for _, e in outs if ": converting " in e]
    assert len(converted) == 1
    names = sorted(o.name for o in storage.list_objects(store))
    assert [n.split("/", 1)[1] for n in names] == ["metrics.json", "provenance.json",
                                                   "scores.jsonl"]  # fmt: skip
