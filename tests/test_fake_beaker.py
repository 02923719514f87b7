"""The fake Beaker service answers the real beaker-py client the way the code relies on."""

from __future__ import annotations

import hashlib
import json

import pytest
from beaker import Beaker, BeakerExperimentSpec
from beaker.config import Config
from beaker.exceptions import (
    BeakerChecksumFailedError,
    BeakerExperimentConflict,
    BeakerWorkspaceNotFound,
)


def _metrics(seed: int) -> bytes:
    h = hashlib.sha256(str(seed).encode()).digest()
    return json.dumps({"model": f"m{seed}", "alpacaeval-easy": h[0] / 255}).encode()


def test_workspace_and_listing_pages_with_filters(fake_beaker):
    ws = fake_beaker.add_workspace("ai2/evals")
    other = fake_beaker.add_workspace("ai2/other")
    fake_beaker.page_size_cap = 7  # force several pages
    names = [f"rm-eval-r{i}" for i in range(23)]
    for i, n in enumerate(names):
        fake_beaker.add_experiment(ws, n, files={"metrics.json": _metrics(i)}, created=1000.0 + i)
    fake_beaker.add_experiment(ws, "rm-eval-running", state="running", created=2000.0)
    fake_beaker.add_experiment(ws, "unrelated", created=2001.0)
    fake_beaker.add_experiment(other, "rm-eval-elsewhere", created=2002.0)
    with Beaker.from_env(check_for_upgrades=False) as b:
        w = b.workspace.get("ai2/evals")
        assert w.id == ws and w.name == "ai2/evals"
        listed = [
            x.experiment.name
            for x in b.workload.list(workspace=w, name_or_description="rm-eval-", finalized=True)
        ]
        assert listed == names  # all pages, in creation order, filters kept across pages
        running = [x.experiment.name for x in b.workload.list(workspace=w, finalized=False)]
        assert running == ["rm-eval-running"]
        with pytest.raises(BeakerWorkspaceNotFound):
            b.workspace.get("ai2/missing")
    assert fake_beaker.calls["ListWorkloads"] == 4 + 1  # ceil(23/7) pages + 1


def test_results_stream_and_checksum(fake_beaker):
    ws = fake_beaker.add_workspace("ai2/evals")
    fake_beaker.add_experiment(ws, "good", files={"metrics.json": _metrics(1), "x/y.txt": b"z"})
    fake_beaker.add_experiment(
        ws, "tampered", files={"metrics.json": _metrics(2)}, bad_digest=("metrics.json",)
    )
    fake_beaker.add_experiment(ws, "waiting", state="queued")
    with Beaker.from_env(check_for_upgrades=False) as b:
        by_name = {x.experiment.name: x for x in b.workload.list(workspace="ai2/evals")}
        ds = b.workload.get_results(by_name["good"])
        assert b"".join(b.dataset.stream_file(ds, "metrics.json")) == _metrics(1)
        assert b"".join(b.dataset.stream_file(ds, "x/y.txt")) == b"z"
        with pytest.raises(FileNotFoundError):
            b"".join(b.dataset.stream_file(ds, "absent.json"))
        bad = b.workload.get_results(by_name["tampered"])
        with pytest.raises(BeakerChecksumFailedError):
            b"".join(b.dataset.stream_file(bad, "metrics.json"))
        assert b.workload.get_results(by_name["waiting"]) is None


def test_experiment_create_records_spec_and_conflicts(fake_beaker):
    ws = fake_beaker.add_workspace("ai2/evals")
    spec = BeakerExperimentSpec.new(
        budget="ai2/oe", task_name="eval", beaker_image="ai2/rm-image", result_path="/output"
    )
    with Beaker.from_env(check_for_upgrades=False) as b:
        wl = b.experiment.create(spec=spec, name="rm-eval-new", workspace="ai2/evals")
        assert wl.experiment.name == "rm-eval-new"
        assert [t.name for t in wl.experiment.tasks] == ["eval"]
        with pytest.raises(BeakerExperimentConflict):
            b.experiment.create(spec=spec, name="rm-eval-new", workspace="ai2/evals")
    (created,) = fake_beaker.created_experiments()
    assert created.workspace_id == ws and created.workspace == "ai2/evals"
    assert created.spec["tasks"][0]["image"] == {"beaker": "ai2/rm-image"}
    assert created.spec["budget"] == "ai2/oe"
    assert "rm-eval-new" in fake_beaker.experiment_names("ai2/evals")


def test_wrong_token_is_refused(fake_beaker):
    fake_beaker.add_workspace("ai2/evals")
    cfg = Config(
        user_token="not-the-token",
        agent_address=fake_beaker.http_address,
        rpc_address=fake_beaker.rpc_address,
        default_org="ai2",
    )
    with Beaker(cfg, check_for_upgrades=False) as b, pytest.raises(Exception) as err:
        b.workspace.get("ai2/evals")
    assert "token" in str(err.value)
