"""run-one: convert -> evaluate -> publish, for one checkpoint.

The single command a local worker, a Beaker task and a GitHub runner all execute.

Published under ``<store>/<run>/`` (``run`` = :func:`rmeval.naming.run_name`; the layout
is :mod:`rmeval.store`'s):

- ``scores.jsonl``: the evaluator's per-pair scores;
- ``provenance.json``: checkpoint URI, run name, rmeval version, git sha when known,
  per-stage timings, converter notes, dataset, host name;
- ``metrics.json``: exactly the evaluator's metrics file, written **last**: its presence
  means the run is done. A run whose metrics.json exists is skipped unless ``force``.

Before any work the run is claimed (``claim.json``, renewed by a heartbeat, removed at the
end); a failed attempt leaves ``failed.json`` (:mod:`rmeval.state`). Files of an unfinished
run (no metrics.json: a crash between uploads) are replaced on the next attempt; a finished run is only overwritten with ``force``. The converted model is
kept only with ``keep_model`` (a URI: local dir or gs://). Temporary files live in one
temporary directory that is removed on success, failure and SIGTERM.

Data: ``eval_data`` is whatever :func:`rmeval.rewardbench.evaluate.evaluate` accepts (a
local directory or file of RewardBench pairs, e.g. one written by
``rmeval.rewardbench.data.write_sample``). :data:`rmeval.rewardbench.data.HUB_DATASET`
(the public RewardBench release) is the default; it needs hub access, which CI and the demo do not have, so they pass
a local sample.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from rmeval import preflight, source_root, state, storage, version
from rmeval import store as store_layout
from rmeval.errors import StoreError
from rmeval.procutil import git_head, sigterm_as_exit
from rmeval.rewardbench import formats
from rmeval.store import METRICS_FILE, PROVENANCE_FILE, SCORES_FILE

log = logging.getLogger(__name__)

WORK_PREFIX = "rmeval-run-"


@dataclass
class RunOneResult:
    run: str
    status: str  # "ok" | "skipped" | "claimed" (another runner holds the run)
    result_uri: str
    metrics: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attempt: str | None = None  # the id provenance.json records (published runs)
    detail: str = ""  # why nothing was published (status "skipped")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def git_sha() -> str | None:
    """The commit rmeval runs from: ``RMEVAL_GIT_SHA`` (set by images/CI), else the source
    checkout's HEAD, else None."""
    env = os.environ.get("RMEVAL_GIT_SHA") or os.environ.get("GITHUB_SHA")
    if env:
        return env
    src = source_root()
    return git_head(src) if src is not None and (src / ".git").exists() else None


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def run_one(
    checkpoint: str,
    store: str,
    *,
    prefix: str | None = None,
    run_name: str | None = None,
    tokenizer: str | None = None,
    eval_data: str | None = None,
    model_size: str = "auto",
    num_heads: int | None = None,
    rope_theta: float | None = None,
    rope_scaling: str | None = None,
    keep_model: str | None = None,
    force: bool = False,
    subsets: list[str] | None = None,
    max_length: int = 2048,
    max_tokens: int | None = None,
    scoring: str = formats.DEFAULT_SCORING,
    device: str = "auto",
    dtype: str = "auto",
    verify: bool = False,
    work_dir: str | None = None,
    progress: bool = True,
    checked: preflight.Checked | None = None,
    gpus: str | None = None,
    notify: str | None = None,
) -> RunOneResult:
    """Convert ``checkpoint``, evaluate it on ``eval_data`` and publish under ``store``.
    Every option is checked first (:func:`rmeval.preflight.check_run`: values, device,
    credentials, store, data, checkpoint shapes, tokenizer), before any conversion;
    ``checked`` skips what a caller (launch) checked already. ``scoring``: the evaluator's
    format (:mod:`rmeval.rewardbench.formats`).

    ``run_name`` overrides the name derived from the checkpoint (plan gives one when two
    run directories would otherwise share a name; see :func:`rmeval.naming.run_names`).

    Run state (:mod:`rmeval.state`): the run is claimed before any work; a run another
    runner holds returns status ``claimed`` (detail "claimed by …"); a failure writes
    failed.json and releases the claim. ``gpus`` (else ``$CUDA_VISIBLE_DEVICES``) picks
    and records the GPUs; ``notify`` is a webhook told of a new best Overall."""
    opts = {
        "prefix": prefix,
        "run_name": run_name,
        "tokenizer": tokenizer,
        "model_size": model_size,
        "num_heads": num_heads,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "scoring": scoring,
        "device": device,
        "dtype": dtype,
        "max_length": max_length,
        "max_tokens": max_tokens,
    }
    run = preflight.check_values(checkpoint, store, **opts)
    dest = store_layout.run_dir(store, run)
    if not force and store_layout.is_complete(store, run):
        log.info(
            "%s: already done (%s exists); pass --force to redo it",
            run,
            store_layout.run_file(store, run, METRICS_FILE),
        )
        return RunOneResult(run, "skipped", dest)
    if not eval_data:
        from rmeval.rewardbench.data import HUB_DATASET

        eval_data = HUB_DATASET
    gpus = _select_gpus(gpus)
    # bad input fails here, before the claim: one line, nothing written to the store
    preflight.check_run(
        checkpoint,
        store,
        checked=checked,
        eval_data=eval_data,
        subsets=subsets,
        keep_model=keep_model,
        work_dir=work_dir,
        **opts,
    )
    claim = state.Claim(store, run, checkpoint=checkpoint, gpus=gpus)
    holder = claim.acquire()
    if holder is not None:
        detail = f"claimed by {holder.who()}"
        log.info("%s: %s; nothing to do", run, detail)
        return RunOneResult(run, "claimed", dest, detail=detail)
    with sigterm_as_exit(), state.attempt(claim):
        return _attempt(
            claim,
            checkpoint,
            store,
            dest,
            opts,
            eval_data=eval_data,
            subsets=subsets,
            keep_model=keep_model,
            work_dir=work_dir,
            force=force,
            verify=verify,
            progress=progress,
            notify=notify,
        )


def _attempt(
    claim: state.Claim,
    checkpoint: str,
    store: str,
    dest: str,
    opts: dict[str, Any],
    *,
    eval_data: str,
    subsets: list[str] | None,
    keep_model: str | None,
    work_dir: str | None,
    force: bool,
    verify: bool,
    progress: bool,
    notify: str | None,
) -> RunOneResult:
    """One claimed attempt: convert, evaluate, publish (``claim.stage`` says which, for
    failed.json)."""
    run = claim.run
    model_size, num_heads = opts["model_size"], opts["num_heads"]
    rope_theta, rope_scaling, tokenizer = (
        opts["rope_theta"],
        opts["rope_scaling"],
        opts["tokenizer"],
    )
    scoring, max_length, max_tokens = opts["scoring"], opts["max_length"], opts["max_tokens"]
    device, dtype = opts["device"], opts["dtype"]

    from rmeval.checkpoints.convert import convert
    from rmeval.rewardbench.evaluate import DEFAULT_MAX_TOKENS, evaluate

    timings: dict[str, float] = {}
    started = time.time()
    if work_dir:
        try:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage.write_error(exc, work_dir, "create the work directory") from None
    with storage.owned_tempdir(WORK_PREFIX, work_dir) as tmpdir:
        model_dir = tmpdir / run
        metrics_path = tmpdir / METRICS_FILE
        scores_path = tmpdir / SCORES_FILE

        claim.renew(stage="convert")
        t0 = time.perf_counter()
        log.info("%s: converting %s", run, checkpoint)
        conv = convert(
            checkpoint,
            str(model_dir),
            model_size=model_size,
            num_heads=num_heads,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tokenizer=tokenizer,
            verify=verify,
            progress=progress,
        )
        timings["convert"] = time.perf_counter() - t0

        claim.renew(stage="evaluate")
        t0 = time.perf_counter()
        log.info("%s: evaluating on %s", run, eval_data)
        ev = evaluate(
            str(model_dir),
            eval_data,
            str(metrics_path),
            subsets=subsets,
            scoring_format=scoring,
            max_length=max_length,
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            device=device,
            dtype=dtype,
            save_scores=str(scores_path),
            progress=progress,
            model_name=run,  # metrics.json names the run, not a temporary directory
        )
        timings["evaluate"] = time.perf_counter() - t0

        metrics_bytes = metrics_path.read_bytes()  # exactly the evaluator's file
        timings_s = {k: round(v, 3) for k, v in timings.items()}
        provenance = {
            "run": run,
            "checkpoint": checkpoint,
            "rmeval_version": version(),
            "git_sha": git_sha(),
            "hostname": socket.gethostname(),
            "gpus": claim.gpus,
            "job": claim.job,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "dataset": str(eval_data),
            "subsets": subsets,
            "max_length": max_length,
            "model_size": model_size,
            "tokenizer": tokenizer,
            "kept_model": keep_model,
            "timings_s": timings_s,
            "convert": {
                "kind": conv.kind,
                "bytes_read": conv.bytes_read,
                "bytes_written": conv.bytes_written,
                "peak_rss_bytes": conv.peak_rss_bytes,
                "notes": _plain(conv.notes),
                "verify": _plain(conv.verify),
            },
            "evaluate": {
                "n_pairs": ev.n_pairs,
                "overall": ev.overall,
                "padding_ratio": ev.padding_ratio,
                "device": ev.device,
                "dtype": ev.dtype,
                "scoring": ev.scoring,
                "chat_template": ev.chat_template,
                "seconds": ev.seconds,
            },
        }
        if not claim.renew(stage="publish") or (not force and store_layout.is_complete(store, run)):
            detail = _lost_detail(run, claim.lost_to)
            log.info("%s", detail)
            return RunOneResult(run, "skipped", dest, detail=detail)
        provenance["attempt"] = claim.attempt
        t0 = time.perf_counter()
        if keep_model:
            _keep(model_dir, keep_model, overwrite=force)

        def provenance_json() -> bytes:  # written after the scores: it times them
            timings["publish"] = time.perf_counter() - t0
            timings_s["publish"] = round(timings["publish"], 3)
            text = json.dumps(_plain(provenance), indent=2, sort_keys=True) + "\n"
            return text.encode("utf-8")

        scores: list[tuple[str, store_layout.Content]] = (
            [(SCORES_FILE, scores_path)] if scores_path.exists() else []
        )
        metrics_uri = store_layout.publish(
            store,
            run,
            [*scores, (PROVENANCE_FILE, provenance_json)],
            metrics_bytes,
            replace_metrics=force,
            overall=ev.overall,
        )
    log.info("%s: published %s", run, metrics_uri)
    if notify:
        _notify_if_best(notify, store, run, ev.overall)
    return RunOneResult(run, "ok", dest, json.loads(metrics_bytes), timings, attempt=claim.attempt)


def _lost_detail(run: str, lost_to: str | None) -> str:
    if lost_to is not None:
        return f"{run}: the claim was taken over by {lost_to}; nothing written"
    return f"{run}: another run published it first; nothing written (pass --force to replace)"


# --------------------------------------------------------------------------- GPUs, notices


def _select_gpus(gpus: str | None) -> str | None:
    """``--gpus`` becomes CUDA_VISIBLE_DEVICES (before torch starts); without it, the
    inherited CUDA_VISIBLE_DEVICES. Either way, what the claim records."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        return gpus
    return os.environ.get("CUDA_VISIBLE_DEVICES") or None


def _notify_if_best(url: str, store: str, run: str, overall: float | None) -> None:
    """Post one notice when ``run``'s Overall is the best of the store's finished runs."""
    from rmeval import notify, status

    if overall is None:
        return
    try:
        best = status.best_overall(store, exclude=run)
    except StoreError as exc:
        log.warning("%s: cannot compare with the store's best Overall: %s", run, exc)
        return
    if best is None or overall > best:
        before = f" (previous best {best:.4f})" if best is not None else ""
        notify.post(url, f"rmeval: new best Overall {overall:.4f} in {store}: {run}{before}")


def _keep(model_dir: Path, keep_model: str, overwrite: bool) -> None:
    """Keep the converted model at ``keep_model`` (local or gs://) with
    :func:`rmeval.storage.publish_dir`: moved there (a Beaker task's /output/model costs
    no copy) or uploaded, config.json last; a model already there survives any failure.
    A gs:// folder without config.json is a preempted attempt's upload: replaced."""
    from rmeval.checkpoints.llama import CONFIG_FILE

    try:
        if storage.dir_state(keep_model, marker=CONFIG_FILE) == storage.COMPLETE and not overwrite:
            what = "holds a model" if storage.is_gcs(keep_model) else "exists"
            raise StoreError(f"{keep_model}: already {what}; pass --force to replace it")
        storage.publish_dir(model_dir, keep_model, marker=CONFIG_FILE, overwrite=True)
    except StoreError as exc:
        raise StoreError(f"--keep-model: {exc}") from None


def write_result_json(result: RunOneResult, path: str | os.PathLike) -> None:
    """The small status file the local backend reads (ok / skipped)."""
    storage.write_text(os.fspath(path), result.to_json() + "\n", overwrite=True)
