"""run-one: convert -> evaluate -> publish, for one checkpoint.

The single command a local worker, a Beaker task and a GitHub runner all execute.

Published under ``<store>/<run>/`` (``run`` = :func:`rmeval.naming.run_name`; the layout
is :mod:`rmeval.store`'s):

- ``scores.jsonl``: the evaluator's per-pair scores;
- ``provenance.json``: checkpoint URI, run name, rmeval version, git sha when known,
  per-stage timings, converter notes, dataset, host name, and what
  :func:`rmeval.provenance.run_fields` records (library versions, lock hash, device,
  dtype, attention, scoring, max length, token budget, checkpoint index and weight hashes);
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
from rmeval import provenance as run_provenance
from rmeval import store as store_layout
from rmeval.errors import AlreadyExistsError, StoreError
from rmeval.procutil import git_head, sigterm_as_exit
from rmeval.rewardbench import formats
from rmeval.store import CLAIM_FILE, METRICS_FILE, PROVENANCE_FILE, SCORES_FILE  # noqa: F401 (re-exported)

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
    detail: str = ""  # why nothing was published (status "skipped"), or how the model was got
    benchmarks: list[str] = field(default_factory=list)  # those evaluated and published
    metrics_by_benchmark: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.record(), indent=2, default=str)

    def record(self) -> dict[str, Any]:
        """The fields of run-one's status file (:mod:`rmeval.outcome`)."""
        return asdict(self)


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
    benchmarks: list[str] | None = None,
    eval_data_v2: str | None = None,
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

    ``benchmarks`` (default: RewardBench alone): one conversion is scored on each benchmark
    not done yet (``eval_data`` for RewardBench, ``eval_data_v2`` for RewardBench 2), each
    published as its own files (:data:`rmeval.store.FILES`). When only benchmarks other
    than a done RewardBench remain, the kept model (``keep_model``) is evaluated as it is;
    with none kept the checkpoint is converted again, and the result's ``detail`` says so.

    Run state (:mod:`rmeval.state`): the run is claimed before any work; a run another
    runner holds returns status ``claimed`` (detail "claimed by …"); a failure writes
    failed.json and releases the claim. ``gpus`` (else ``$CUDA_VISIBLE_DEVICES``) picks
    and records the GPUs; ``notify`` is a webhook told of a new best Overall."""
    opts: dict[str, Any] = {  # the options check_values and check_run take by keyword
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
    wanted = list(dict.fromkeys(benchmarks or [store_layout.V1]))
    for b in wanted:
        store_layout.files_of(b)
    todo = [b for b in wanted if force or not store_layout.is_complete(store, run, b)]
    if not todo:
        log.info(
            "%s: already done (%s exists); pass --force to redo it",
            run,
            ", ".join(
                store_layout.run_file(store, run, store_layout.files_of(b).metrics) for b in wanted
            ),
        )
        return RunOneResult(run, "skipped", dest)
    from rmeval.rewardbench.data import HUB_DATASET, HUB_DATASET_V2

    eval_data = eval_data or HUB_DATASET
    eval_data_v2 = eval_data_v2 or HUB_DATASET_V2
    data_of = {store_layout.V1: eval_data, store_layout.V2: eval_data_v2}
    gpus = _select_gpus(gpus)
    # bad input fails here, before the claim: one line, nothing written to the store
    preflight.check_run(
        checkpoint,
        store,
        checked=checked,
        eval_data=eval_data,
        eval_data_v2=eval_data_v2,
        benchmarks=todo,
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
            data_of=data_of,
            todo=todo,
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
    data_of: dict[str, str],
    todo: list[str],
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
    from rmeval.checkpoints.llama import CONFIG_FILE
    from rmeval.rewardbench.evaluate import DEFAULT_MAX_TOKENS, evaluate

    reuse = (
        keep_model
        if keep_model
        and store_layout.V1 not in todo
        and storage.dir_state(keep_model, marker=CONFIG_FILE) == storage.COMPLETE
        else None
    )
    detail = ""
    if store_layout.V1 not in todo:
        detail = (
            f"{run}: evaluating the kept model {reuse} (no conversion)"
            if reuse
            else f"{run}: converting again for {', '.join(todo)}: no kept model"
            + (f" at {keep_model}" if keep_model else " (run without --keep-model)")
        )
        log.info("%s", detail)
    timings: dict[str, float] = {}
    started = time.time()
    if work_dir:
        try:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage.write_error(exc, work_dir, "create the work directory") from exc
    with storage.owned_tempdir(WORK_PREFIX, work_dir) as tmpdir:
        model_dir = str(tmpdir / run)
        conv = None
        if reuse:
            model_dir = reuse
        else:
            claim.renew(stage="convert")
            t0 = time.perf_counter()
            log.info("%s: converting %s", run, checkpoint)
            conv = convert(
                checkpoint,
                model_dir,
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
        evals = {}
        for bench in todo:
            names = store_layout.files_of(bench)
            t0 = time.perf_counter()
            log.info("%s: evaluating on %s (%s)", run, data_of[bench], bench)
            evals[bench] = evaluate(
                model_dir,
                data_of[bench],
                str(tmpdir / names.metrics),
                benchmark=bench,
                subsets=subsets,
                scoring_format=scoring,
                max_length=max_length,
                max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                device=device,
                dtype=dtype,
                save_scores=str(tmpdir / names.scores),
                progress=progress,
                model_name=run,  # metrics.json names the run, not a temporary directory
            )
            timings["evaluate" if bench == store_layout.V1 else f"evaluate_{bench}"] = (
                time.perf_counter() - t0
            )

        timings_s = {k: round(v, 3) for k, v in timings.items()}
        base = {
            "run": run,
            "checkpoint": checkpoint,
            "rmeval_version": version(),
            "git_sha": git_sha(),
            "hostname": socket.gethostname(),
            "gpus": claim.gpus,
            "job": claim.job,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "subsets": subsets,
            "max_length": max_length,
            "model_size": model_size,
            "tokenizer": tokenizer,
            "kept_model": keep_model,
            "evaluated_kept_model": reuse,
            "timings_s": timings_s,
            "convert": None
            if conv is None
            else {
                "kind": conv.kind,
                "bytes_read": conv.bytes_read,
                "bytes_written": conv.bytes_written,
                "peak_rss_bytes": conv.peak_rss_bytes,
                "notes": _plain(conv.notes),
                "verify": _plain(conv.verify),
            },
        }

        def provenance_of(bench: str) -> dict[str, Any]:
            ev = evals[bench]
            recorded = {
                **base,
                "benchmark": bench,
                "dataset": str(data_of[bench]),
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
            settings = dict(num_heads=num_heads, rope_theta=rope_theta, rope_scaling=rope_scaling)
            fields = run_provenance.run_fields(
                conv, ev, **settings, max_tokens=max_tokens or DEFAULT_MAX_TOKENS
            )
            run_provenance.merge(recorded, fields)
            return recorded

        if not claim.renew(stage="publish") or (
            not force and all(store_layout.is_complete(store, run, b) for b in todo)
        ):
            detail = _lost_detail(run, claim.lost_to)
            log.info("%s", detail)
            return RunOneResult(run, "skipped", dest, detail=detail)
        t0 = time.perf_counter()
        if keep_model and not reuse:
            _keep(Path(model_dir), keep_model, overwrite=force)
        # RewardBench last: its metrics.json is what older readers take as "done"
        for bench in sorted(todo, key=lambda b: b == store_layout.V1):
            names = store_layout.files_of(bench)
            provenance = provenance_of(bench)
            provenance["attempt"] = claim.attempt

            def provenance_json(provenance=provenance) -> bytes:  # after the scores
                timings["publish"] = time.perf_counter() - t0
                timings_s["publish"] = round(timings["publish"], 3)
                text = json.dumps(_plain(provenance), indent=2, sort_keys=True) + "\n"
                return text.encode("utf-8")

            scores_path = tmpdir / names.scores
            scores: list[tuple[str, store_layout.Content]] = (
                [(names.scores, scores_path)] if scores_path.exists() else []
            )
            metrics_uri = store_layout.publish(
                store,
                run,
                [*scores, (names.provenance, provenance_json)],
                (tmpdir / names.metrics).read_bytes(),  # exactly the evaluator's file
                replace_metrics=force,
                metrics_name=names.metrics,
                overall=evals[bench].overall if bench == store_layout.V1 else None,
            )
            log.info("%s: published %s", run, metrics_uri)
    if notify and store_layout.V1 in evals:
        _notify_if_best(notify, store, run, evals[store_layout.V1].overall)
    first = todo[0]
    metrics = json.loads(json.dumps(evals[first].metrics))
    return RunOneResult(
        run, "ok", dest, metrics, timings, attempt=claim.attempt, detail=detail, benchmarks=todo,
        metrics_by_benchmark={b: evals[b].metrics for b in todo},
    )  # fmt: skip


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

    if storage.dir_state(keep_model, marker=CONFIG_FILE) == storage.COMPLETE and not overwrite:
        what = "holds a model" if storage.is_gcs(keep_model) else "exists"
        raise AlreadyExistsError(keep_model, f"already {what}")  # the CLI says how to replace it
    try:
        storage.publish_dir(model_dir, keep_model, marker=CONFIG_FILE, overwrite=True)
    except StoreError as exc:
        raise StoreError(f"--keep-model: {exc}") from exc
