"""reproduce: re-score a published run with its recorded settings and compare.

``reproduce(run, store)`` reads ``<store>/<run>/`` (provenance.json, metrics.json,
scores.jsonl), takes the model from the run's kept model (``--keep-model`` at run time)
or, when none is there, converts the run's checkpoint again with the recorded convert
settings, evaluates it with the recorded evaluation settings (data, subsets, scoring
format, dtype, device, max length, token budget), and compares the new per-subset
accuracies and per-pair rewards with the stored ones: how many decisions (chosen above
rejected) changed and the largest reward difference.

Tolerance: at equal settings no decision may change and no reward may move by more than
``reward_tolerance`` (default :data:`DEFAULT_REWARD_TOLERANCE`, absolute); an override
(``dtype``, ``device``, ``scoring``) that differs from the recorded value measures how
far that setting moves the numbers: decisions may change, the reward tolerance still
applies. :attr:`Reproduction.ok` is the verdict (the CLI exits 1 when it is False).

Missing material is one :class:`~rmeval.errors.ReproduceError` line: a run that is not
published, or that has neither a kept model nor a reachable checkpoint. A provenance file
written before :mod:`rmeval.provenance`'s fields existed is reported as "unknown
provenance" and re-scored with rmeval's defaults where a setting is not recorded.

:func:`pick_new` chooses one random run among the rows a collect added to a table (the
fetch-results workflow reproduces it on a GPU runner).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmeval import provenance, storage
from rmeval import store as store_layout
from rmeval.errors import ReproduceError, StoreError, UsageError
from rmeval.store import METRICS_FILE, PROVENANCE_FILE, SCORES_FILE

log = logging.getLogger(__name__)

DEFAULT_REWARD_TOLERANCE = 1e-4  # absolute, per reward (fp32 re-runs on one machine: 0.0)
WORK_PREFIX = "rmeval-reproduce-"
# torch dtype names (what provenance records) -> the --dtype choices
_DTYPE_OPTION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Reproduction:
    run: str
    source: str  # "kept model <uri>" | "re-converted <checkpoint>"
    settings: dict[str, Any]  # what was used
    recorded: dict[str, Any]  # what the run recorded (None: not recorded)
    overridden: list[str]  # settings given that differ from the recorded ones
    subsets_changed: dict[str, tuple[float | None, float | None]]
    n_subsets: int
    n_pairs: int
    decisions_changed: int
    max_reward_diff: float | None  # None: the run has no scores.jsonl
    reward_tolerance: float
    notes: list[str] = field(default_factory=list)

    @property
    def equal_settings(self) -> bool:
        return not self.overridden

    @property
    def ok(self) -> bool:
        if self.equal_settings and (self.decisions_changed or self.subsets_changed):
            return False
        return self.max_reward_diff is None or self.max_reward_diff <= self.reward_tolerance

    def lines(self) -> list[str]:
        s, r = self.settings, self.recorded

        def setting(k: str) -> str:
            was = r.get(k)
            return f"{k} {s[k]}" + ("" if was == s[k] else f" (recorded {was or 'unknown'})")

        out = [f"reproduce {self.run}: model from {self.source}"]
        out += [f"  note: {n}" for n in self.notes]
        keys = ("scoring", "dtype", "device", "max_length", "max_tokens")
        out.append("  settings: " + ", ".join(setting(k) for k in keys))
        out.append(f"  subsets: {len(self.subsets_changed)} of {self.n_subsets} accuracies changed")
        for name, (old, new) in sorted(self.subsets_changed.items()):
            out.append(f"    {name}: {_pct(old)} -> {_pct(new)}")
        diff = (
            "n/a (no stored scores)"
            if self.max_reward_diff is None
            else f"{self.max_reward_diff:.3g}"
        )
        out.append(
            f"  pairs: {self.n_pairs} compared, {self.decisions_changed} decisions changed, "
            f"max reward diff {diff} (tolerance {self.reward_tolerance:g})"
        )
        if self.ok:
            verdict = "reproduced" if self.equal_settings else "within tolerance"
        elif self.equal_settings:
            verdict = "NOT reproduced at equal settings"
        else:
            verdict = "beyond tolerance under " + ", ".join(self.overridden)
        out.append(f"result: {verdict}")
        return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


# --------------------------------------------------------------------------- reading


def _read_json(uri: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(storage.read_bytes(uri))
    except StoreError as exc:
        raise ReproduceError(f"{uri}: cannot read the run's {what} ({exc})") from None
    except ValueError as exc:
        raise ReproduceError(f"{uri}: the run's {what} is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ReproduceError(f"{uri}: the run's {what} is not a JSON object")
    return obj


def _read_scores(uri: str) -> dict[tuple[str, str], dict[str, Any]] | None:
    if not storage.exists(uri):
        return None
    rows = {}
    for n, line in enumerate(storage.read_text(uri).splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rows[(str(r["subset"]), str(r["id"]))] = r
        except (ValueError, KeyError, TypeError) as exc:
            raise ReproduceError(f"{uri}: line {n} is not a score record ({exc})") from None
    return rows


def recorded_settings(prov: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings a run recorded (None where its provenance lacks one)."""
    from rmeval.rewardbench import formats

    ev = provenance.section(prov, "evaluate")
    dtype = ev.get("dtype")
    return {
        "scoring": ev.get("scoring") or formats.scoring_of_label(metrics.get("chat_template")),
        "dtype": _DTYPE_OPTION.get(dtype, dtype) if dtype else None,
        "device": ev.get("device"),
        "max_length": prov.get("max_length"),
        "max_tokens": ev.get("max_tokens"),
    }


# --------------------------------------------------------------------------- the model


def _kept_model(prov: dict[str, Any]) -> str | None:
    from rmeval.checkpoints.llama import CONFIG_FILE

    kept = prov.get("kept_model")
    if not kept:
        return None
    try:
        state = storage.dir_state(kept, marker=CONFIG_FILE)
    except StoreError:
        return None
    return kept if state == storage.COMPLETE else None


def _check_kept(model: str, prov: dict[str, Any]) -> list[str]:
    """A note saying whether a local kept model's weights are the ones the run scored."""
    recorded = (prov.get("convert") or {}).get("weights_sha256")
    if not recorded or storage.is_gcs(model):
        return []
    found = provenance.weights_digests(storage.local_path(model))
    shards = {k: v for k, v in recorded.items() if k.endswith(".safetensors")}
    if found == shards:
        return ["kept model's weights are identical to the recorded sha256"]
    return ["kept model's weights DIFFER from the recorded sha256 (replaced since the run?)"]


def _missing_line(run: str, prov: dict[str, Any], why: str) -> str:
    kept = prov.get("kept_model")
    kept_text = f"its kept model {kept} is not there" if kept else "it kept no model"
    ckpt = prov.get("checkpoint")
    ckpt_text = f"its checkpoint {ckpt} is not reachable ({why})" if ckpt else "no checkpoint"
    return f"{run}: nothing to re-score: {kept_text} and {ckpt_text}"


def _reconvert(prov: dict[str, Any], out: Path, progress: bool) -> tuple[Any, list[str]]:
    from rmeval.checkpoints.convert import convert

    settings = (prov.get("convert") or {}).get("settings") or {}
    result = convert(
        prov["checkpoint"],
        str(out),
        model_size=prov.get("model_size") or "auto",
        num_heads=settings.get("num_heads"),
        rope_theta=settings.get("rope_theta"),
        rope_scaling=settings.get("rope_scaling"),
        tokenizer=prov.get("tokenizer"),
        progress=progress,
    )
    notes = []
    recorded = (prov.get("convert") or {}).get("weights_sha256")
    if recorded:
        same = recorded == result.weights_sha256
        notes.append(
            "re-converted weights are identical to the recorded sha256"
            if same
            else "re-converted weights DIFFER from the recorded sha256"
        )
    return result, notes


# --------------------------------------------------------------------------- reproduce


def reproduce(
    run: str,
    store: str,
    *,
    dtype: str | None = None,
    device: str | None = None,
    scoring: str | None = None,
    reward_tolerance: float = DEFAULT_REWARD_TOLERANCE,
    work_dir: str | None = None,
    progress: bool = True,
) -> Reproduction:
    """Re-score ``run`` of ``store`` and compare (see the module doc). ``dtype``,
    ``device``, ``scoring``: overrides of the recorded settings (None: as recorded)."""
    from rmeval.rewardbench import evaluate as ev_mod
    from rmeval.rewardbench.data import HUB_DATASET, load_pairs

    if not store_layout.is_complete(store, run):
        raise ReproduceError(
            f"{store_layout.run_file(store, run, METRICS_FILE)}: not found; {run} is not a "
            f"published run of {store}"
        )
    metrics = _read_json(store_layout.run_file(store, run, METRICS_FILE), METRICS_FILE)
    prov = _read_json(store_layout.run_file(store, run, PROVENANCE_FILE), PROVENANCE_FILE)
    stored_scores = _read_scores(store_layout.run_file(store, run, SCORES_FILE))
    notes: list[str] = []
    if provenance.is_unknown(prov):
        notes.append(
            "unknown provenance: the run's provenance.json predates the recorded settings; "
            "rmeval's defaults stand in for what it does not say"
        )
    recorded = recorded_settings(prov, metrics)
    given = {"dtype": dtype, "device": device, "scoring": scoring}
    overridden = [f"--{k} {v}" for k, v in given.items() if v is not None and v != recorded.get(k)]
    settings = {
        "scoring": scoring or recorded["scoring"] or "trained",
        "dtype": dtype or recorded["dtype"] or "auto",
        "device": device or recorded["device"] or "auto",
        "max_length": recorded["max_length"] or ev_mod.DEFAULT_MAX_LENGTH,
        "max_tokens": recorded["max_tokens"] or ev_mod.DEFAULT_MAX_TOKENS,
    }
    if stored_scores is None:
        notes.append(f"no {SCORES_FILE}: per-pair rewards not compared")
    # what cannot work fails here, before a conversion: the device and dtype, the data
    dataset = str(prov.get("dataset") or HUB_DATASET)
    ev_mod.dtype_name(str(settings["dtype"]), ev_mod.resolve_device(str(settings["device"])))
    load_pairs(dataset, prov.get("subsets"))

    with storage.owned_tempdir(WORK_PREFIX, work_dir) as tmp:
        model = _kept_model(prov)
        if model is not None:
            source = f"kept model {model}"
            notes += _check_kept(model, prov)
        else:
            ckpt = prov.get("checkpoint")
            why = "not recorded"
            reachable = False
            if ckpt:
                try:
                    reachable = storage.exists(ckpt)
                    why = "no such file"
                except StoreError as exc:
                    why = str(exc)
            if not reachable:
                raise ReproduceError(_missing_line(run, prov, why))
            _, more = _reconvert(prov, tmp / "model", progress)
            notes += more
            model, source = str(tmp / "model"), f"re-converted {ckpt}"
        scores_path = tmp / SCORES_FILE
        result = ev_mod.evaluate(
            model,
            dataset,
            None,
            subsets=prov.get("subsets"),
            scoring_format=str(settings["scoring"]),
            max_length=int(settings["max_length"]),
            max_tokens=int(settings["max_tokens"]),
            device=str(settings["device"]),
            dtype=str(settings["dtype"]),
            save_scores=str(scores_path),
            progress=progress,
            model_name=run,
        )
        new_scores = _read_scores(str(scores_path)) or {}
    settings["device"], settings["dtype"] = (
        result.device,
        _DTYPE_OPTION.get(result.dtype, result.dtype),
    )
    return _compare(
        run, source, settings, recorded, overridden, metrics, result.metrics,
        stored_scores, new_scores, reward_tolerance, notes,
    )  # fmt: skip


def _compare(
    run, source, settings, recorded, overridden, old_metrics, new_metrics,
    old_scores, new_scores, tolerance, notes,
) -> Reproduction:  # fmt: skip
    from rmeval.rewardbench import scoring

    names = [s for s in {**old_metrics, **new_metrics} if s not in scoring.META_KEYS]
    changed = {}
    for s in names:
        a, b = old_metrics.get(s), new_metrics.get(s)
        if a != b:
            changed[s] = (a, b)
    decisions, max_diff, n = 0, None, 0
    if old_scores is not None:
        max_diff = 0.0
        missing = set(old_scores) ^ set(new_scores)
        if missing:
            notes.append(f"{len(missing)} pairs are in only one of the two score files")
        for key in sorted(set(old_scores) & set(new_scores)):
            o, w = old_scores[key], new_scores[key]
            n += 1
            decisions += bool(o["correct"]) != bool(w["correct"])
            for k in ("chosen_reward", "rejected_reward"):
                max_diff = max(max_diff, abs(float(o[k]) - float(w[k])))
    return Reproduction(
        run=run,
        source=source,
        settings=settings,
        recorded=recorded,
        overridden=overridden,
        subsets_changed=changed,
        n_subsets=len(names),
        n_pairs=n,
        decisions_changed=decisions,
        max_reward_diff=max_diff,
        reward_tolerance=tolerance,
        notes=notes,
    )


# --------------------------------------------------------------------------- picking


def _names(csv_path: str) -> set[str]:
    p = Path(csv_path)
    if not p.is_file():
        return set()
    return {row["name"] for row in csv.DictReader(io.StringIO(p.read_text())) if row.get("name")}


def pick_new(before_csv: str, after_csv: str, rng: random.Random | None = None) -> str | None:
    """One run (a ``name`` of ``after_csv``) that ``before_csv`` lacks, chosen at random;
    None when the collect added no row. A missing ``before_csv`` is an empty table."""
    new = sorted(_names(after_csv) - _names(before_csv))
    return (rng or random.Random()).choice(new) if new else None


def choose_run(run: str | None, random_new: list[str] | None, store: str | None) -> str | None:
    """The run the CLI reproduces: ``run``, or one :func:`pick_new` chooses from
    ``random_new`` (``[BEFORE.csv, AFTER.csv]``; None when the table gained no row)."""
    if not store:
        raise UsageError("reproduce: --store is required")
    if random_new:
        if run:
            raise UsageError("reproduce: give RUN or --random-new, not both")
        before, after = random_new
        return pick_new(before, after)
    if not run:
        raise UsageError("reproduce: give RUN (a run of --store) or --random-new")
    return run
