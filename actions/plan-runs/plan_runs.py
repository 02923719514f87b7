"""Turn dispatch inputs or the schedule config into job matrices for the workflows.

Wiring only: every checkpoint listing, naming and "already done" decision is made by
``rmeval plan --json``; this script runs it once per entry, merges the run lists into a
matrix, and reports to the log, the job summary and ``$GITHUB_OUTPUT``.

    plan_runs.py runs    --config FILE [--only DATASET] | --preset P --source URI --store URI ...
    plan_runs.py targets --config FILE [--only DATASET]   (split by their `land`)
    plan_runs.py args    run-one|launch     (NUL-separated arguments for the job in $RUN)

An entry has the keys of rmeval's one config schema (``rmeval.options.CONFIG_KEYS``, shared
with pipeline.yml; unknown keys and wrong types fail naming the key; the old dashed
spellings such as ``feature-counts-dir`` or ``eval-dataset`` are accepted with a
deprecation warning). run-one's options (``tokenizer``, ``eval_data``, ``model_size``,
``num_heads`` ...) not set in an entry default to the repository variables the workflow
passes as ``RMEVAL_TOKENIZER``, ``RMEVAL_EVAL_DATA``, ``RMEVAL_MODEL_SIZE``,
``RMEVAL_NUM_HEADS`` ...; plan checks them (a task without a tokenizer fails here, not on a
GPU runner).

A failing ``rmeval plan`` (unknown preset, malformed URI, unreadable bucket, no tokenizer)
ends the step with exit 1 and its one error line as an ``::error::`` annotation and in the
job summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rmeval import options, outcome

KEYS = tuple(options.keys_of(options.SCHEDULE))
RUN_OPTIONS = tuple(o for o in options.TEMPLATE_OPTIONS if o.dest in KEYS)
BACKENDS = options.keys_of(options.SCHEDULE)["backend"].choices_in(options.SCHEDULE)
MATRIX_LIMIT = 256  # GitHub's limit on jobs per matrix
# The repository variables (RMEVAL_<KEY>) that give run-one's options to entries without them.
OLD_VARIABLES = {"eval_data": "RMEVAL_EVAL_DATASET"}


class PlanFailed(Exception):
    """One line that says what went wrong and what to do."""


class _Annotate(logging.Handler):
    """Deprecation notes of the schema check, as workflow warning annotations."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"::warning title=rmeval schedule::{_escape(record.getMessage())}", flush=True)


# ------------------------------------------------------------------------------ entries


def load_entries(config: str, only: str = "") -> list[dict[str, Any]]:
    """The schedule config's entries, checked, with defaults filled in."""
    path = Path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFailed(f"{config}: cannot read the schedule config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark else config
        raise PlanFailed(f"{where}: not valid YAML; fix the schedule config") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries") or [], list):
        raise PlanFailed(f"{config}: expected a mapping with an 'entries' list")
    entries = []
    for i, raw in enumerate(data.get("entries") or []):
        entries.append(check_entry(raw, f"{config}: entries[{i}]"))
    names = [e["results_dataset"] for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanFailed(
            f"{config}: results_dataset {dupes[0]!r} is listed twice; datasets must be unique"
        )
    if only:
        entries = [e for e in entries if e["results_dataset"] == only]
        if not entries:
            raise PlanFailed(f"{config}: no entry for dataset {only!r}; known: {', '.join(names)}")
    return entries


def check_entry(raw: Any, where: str) -> dict[str, Any]:
    """One entry checked against the schema, every key present (unset: ""), the run-one
    options not given taken from the ``RMEVAL_<KEY>`` variables."""
    checked = options.check_config(raw, where, options.SCHEDULE, PlanFailed)
    entry: dict[str, Any] = {k: "" if checked.get(k) is None else checked[k] for k in KEYS}
    for o in RUN_OPTIONS:
        if entry[o.dest] in ("", None):
            var = f"RMEVAL_{o.dest.upper()}"
            value = os.environ.get(var) or os.environ.get(OLD_VARIABLES.get(o.dest, ""), "")
            entry[o.dest] = value.strip()
    for key, value in entry.items():
        if isinstance(value, str):
            entry[key] = value.strip()
    entry["backend"] = entry["backend"] or "runners"
    entry["table"] = entry["table"] or "runs"
    entry["land"] = entry["land"] or options.LANDINGS[0]
    return entry


def _flags(entry: dict[str, Any]) -> list[str]:
    """run-one's options of an entry as command-line flags (rmeval plan, launch, run-one)."""
    out: list[str] = []
    for o in RUN_OPTIONS:
        value = entry.get(o.dest)
        if value in ("", None):
            continue
        if isinstance(value, list):
            out += [o.name, *map(str, value)]
        elif isinstance(value, str) and o.nargs:
            out += [o.name, *value.split()]
        else:
            out += [o.name, str(value)]
    return out


# ------------------------------------------------------------------------------ plan


def _error_line(result_json: Path, returncode: int) -> str:
    """What the failed ``rmeval plan`` says in its status file (rmeval/outcome.py)."""
    record = outcome.read(result_json)
    if record is None or record.get("status") != outcome.FAILED:
        return f"rmeval plan exited {returncode} without a status; see its output above"
    return f"rmeval: error: {record.get('message') or record.get('error_type')}"


def plan_entry(
    entry: dict[str, str], template: str, allow_empty: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """Run ``rmeval plan --json`` for one entry and return its run list and how many runs
    it skips as done already. ``allow_empty``
    (the schedule: a source may have no checkpoints yet) passes ``--allow-empty``; a
    dispatch's source without checkpoints fails the step, naming the nearest prefixes."""
    cmd = [sys.executable, "-m", "rmeval", "plan", "--source", entry["source"]]
    cmd += ["--template", entry["template"] or template, "--store", entry["store"], "--json"]
    cmd += _flags(entry)
    if allow_empty:
        cmd.append("--allow-empty")
    if entry["preset"]:
        cmd += ["--preset", entry["preset"]]
    if entry["prefix"]:
        cmd += ["--prefix", entry["prefix"]]
    if entry.get("notify"):  # given-up runs are announced by plan
        cmd += ["--notify", entry["notify"]]
    with tempfile.TemporaryDirectory(prefix="plan-runs-") as tmp:
        result_json = Path(tmp) / "result.json"
        cmd += [outcome.FLAG, str(result_json)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            line = _error_line(result_json, proc.returncode)
            raise PlanFailed(f"{entry['results_dataset']}: {line}")
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise PlanFailed(
            f"{entry['results_dataset']}: rmeval plan --json printed no JSON"
        ) from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise PlanFailed(f"{entry['results_dataset']}: rmeval plan --json printed no run list")
    # The prefix plan named the runs with (from the entry or the preset): run-one must use
    # the same one, or the run would never count as done.
    prefix = data.get("prefix") or entry["prefix"]
    done = data.get("done") if isinstance(data.get("done"), int) else 0
    return [dict(r, prefix=prefix) if isinstance(r, dict) else r for r in runs], done


def matrix_item(run: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """What one runner job needs for ``rmeval run-one`` (a run of ``plan --json``): the
    entry with the run's name, checkpoint and prefix (``args run-one`` makes the flags)."""
    if not isinstance(run, dict) or not run.get("checkpoint") or not run.get("run"):
        raise PlanFailed(
            f"{entry['results_dataset']}: a run in the plan has no checkpoint/run: {run!r}"
        )
    return {
        **entry,
        "name": str(run["run"]),
        "checkpoint": str(run["checkpoint"]),
        # only when plan renamed the run (two experiments would share a name)
        "run_name": str(run["run"]) if run.get("explicit_name") else "",
        "prefix": str(run.get("prefix") or ""),
    }


def job_args(kind: str, job: dict[str, Any]) -> list[str]:
    """The arguments of ``rmeval run-one`` (a runner job) or ``rmeval launch --backend
    beaker`` (a Beaker entry) for one matrix item."""
    if kind == "run-one":
        out = [job["checkpoint"], "--store", job["store"]]
        for key, flag in (
            ("prefix", "--prefix"),
            ("run_name", "--run-name"),
            ("notify", "--notify"),  # a new best Overall is announced by run-one
        ):
            if job.get(key):
                out += [flag, job[key]]
        return out + _flags(job)
    out = ["--backend", "beaker", "--source", job["source"], "--store", job["store"]]
    for key, flag in (("preset", "--preset"), ("prefix", "--prefix"), ("template", "--template")):
        if job.get(key):
            out += [flag, job[key]]
    return out + _flags(job)


def plan(
    entries: list[dict[str, str]], template: str, max_runs: int, allow_empty: bool = False
) -> dict[str, Any]:
    """Plan every entry; runner runs become one matrix, beaker entries another."""
    runs: list[dict[str, str]] = []
    beaker: list[dict[str, str]] = []
    rows = []
    for entry in entries:
        planned, done = plan_entry(entry, template, allow_empty)
        rows.append((entry, len(planned), done))
        if entry["backend"] == "beaker":
            if planned:
                beaker.append(entry)
        else:
            runs.extend(matrix_item(r, entry) for r in planned)
    limit = max(0, min(max_runs, MATRIX_LIMIT))
    return {
        "runs": runs[:limit],
        "deferred": len(runs) - len(runs[:limit]),
        "beaker": beaker,
        "rows": rows,
    }


# ------------------------------------------------------------------------------ output


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def write_outputs(values: dict[str, str]) -> None:
    target = os.environ.get("GITHUB_OUTPUT")
    lines = [f"{k}={v}" for k, v in values.items()]
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))


def write_summary(markdown: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    else:
        print(markdown)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary(result: dict[str, Any]) -> str:
    out = ["### rmeval plan", "", "| dataset | preset | backend | to run | skipped (done) |"]
    out.append("|---|---|---|---|---|")
    for entry, n, done in result["rows"]:
        out.append(
            f"| {_cell(entry['results_dataset'])} | {_cell(entry['preset'] or '-')} | "
            f"{entry['backend']} | {n} | {done} |"
        )
    if result["deferred"]:
        out += ["", f"{result['deferred']} run(s) over --max-runs deferred to the next run."]
    if result["runs"]:
        out += ["", "Runner jobs:", ""]
        out += [f"- `{_cell(r['name'])}`" for r in result["runs"][:100]]
        if len(result["runs"]) > 100:
            out.append(f"- … and {len(result['runs']) - 100} more")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("runs", "targets", "args"))
    p.add_argument("kind", nargs="?", choices=("run-one", "launch"), help="mode args: which")
    p.add_argument("--config", default="", help="schedule config (all its entries)")
    p.add_argument("--only", default="", help="only this dataset of the config")
    p.add_argument("--template", default="rmeval/templates/beaker/convert-and-eval.yml.j2")
    p.add_argument("--max-runs", type=int, default=MATRIX_LIMIT)
    keys = options.keys_of(options.SCHEDULE)
    for key in KEYS:  # dispatch inputs, one flag per schema key
        if key == "template":
            continue  # --template above: the default template of every entry
        flag = "--" + key.replace("_", "-")
        aliases = ["--dataset"] if key == "results_dataset" else []
        p.add_argument(flag, *aliases, dest=key, default="")
    args = p.parse_args(argv)
    logging.getLogger("rmeval").addHandler(_Annotate())
    logging.getLogger("rmeval").propagate = False
    try:
        if args.mode == "args":
            job = json.loads(os.environ.get("RUN") or "{}")
            sys.stdout.write("".join(a + "\0" for a in job_args(args.kind or "run-one", job)))
            return 0
        if args.config:
            entries = load_entries(args.config, args.only)
        else:
            raw: dict[str, Any] = {}
            for key in KEYS:
                value = getattr(args, key, "").strip()
                if not value:
                    continue
                kind = keys[key].kind
                if kind is int:
                    try:
                        raw[key] = int(value)
                    except ValueError:
                        raise PlanFailed(
                            f"dispatch inputs: {key} must be an integer, got {value!r}"
                        ) from None
                elif kind is list:
                    raw[key] = value.split()
                else:
                    raw[key] = value
            raw.setdefault("results_dataset", raw.get("preset") or "dispatch")
            entries = [check_entry(raw, "dispatch inputs")]
        if args.mode == "targets":
            # by landing: the pull-request ones run in a job that may write pull requests
            push = [e for e in entries if e["land"] == "push"]
            pulls = [e for e in entries if e["land"] == "pull-request"]
            write_outputs(
                {
                    "targets": json.dumps(push),
                    "count": str(len(push)),
                    "pr-targets": json.dumps(pulls),
                    "pr-count": str(len(pulls)),
                }
            )
            names = ", ".join(f"{e['results_dataset']} ({e['land']})" for e in entries)
            write_summary(f"### fetch-results targets\n\n{names or 'none'}")
            return 0
        result = plan(entries, args.template, args.max_runs, allow_empty=bool(args.config))
    except PlanFailed as exc:
        line = str(exc)
        print(f"::error title=rmeval plan::{_escape(line)}", flush=True)
        write_summary(f"### rmeval plan failed\n\n```\n{line}\n```")
        return 1
    write_outputs(
        {
            "runs": json.dumps(result["runs"]),
            "count": str(len(result["runs"])),
            "beaker": json.dumps(result["beaker"]),
            "beaker-count": str(len(result["beaker"])),
        }
    )
    write_summary(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
