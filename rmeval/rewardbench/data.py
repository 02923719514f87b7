"""RewardBench data: load the preference pairs, and write a synthetic sample of them.

``load_pairs`` reads a local or ``gs://`` ``.json`` / ``.jsonl`` / ``.parquet`` file, or a
hub dataset id (``allenai/reward-bench``, split ``filtered``, through the optional
``datasets`` package). Required columns: ``prompt``, ``chosen``, ``rejected``, ``subset``
(``id`` is used when present).

``write_sample`` writes a deterministic RewardBench-format JSON-lines file covering all 23
subsets with a realistic spread of lengths, made of generated text (no downloads): for the
demo, the tests and the benchmark. Its content is meaningless; only its shape is real.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rmeval import storage
from rmeval.errors import EvalError, StoreError
from rmeval.rewardbench import scoring
from rmeval.store import V1, V2  # the benchmark names, declared with their store files

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected", "subset")
HUB_DATASET = "allenai/reward-bench"
HUB_SPLIT = "filtered"
# RewardBench 2 (allenai/reward-bench-2, split test): one row per prompt, chosen and
# rejected are lists of completions, the correct ones (num_correct) first.
REQUIRED_COLUMNS_V2: tuple[str, ...] = (
    "id",
    "prompt",
    "chosen",
    "rejected",
    "num_correct",
    "total_completions",
    "subset",
)
HUB_DATASET_V2 = "allenai/reward-bench-2"
HUB_SPLIT_V2 = "test"
BENCHMARKS: tuple[str, ...] = (V1, V2)
DEFAULT_BENCHMARK = V1
LOCAL_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet")


def default_dataset(benchmark: str) -> str:
    """The hub dataset of ``benchmark``."""
    return HUB_DATASET_V2 if benchmark == V2 else HUB_DATASET


@dataclass(frozen=True)
class Row:
    """One RewardBench 2 row: a prompt and its completions, the ``num_correct`` correct ones
    first (``chosen`` then ``rejected``, as run_v2 unrolls them)."""

    id: str
    subset: str
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    num_correct: int

    @property
    def completions(self) -> tuple[str, ...]:
        return self.chosen + self.rejected


@dataclass(frozen=True)
class Pair:
    """One preference pair. ``id`` is the dataset's id, or the row number as a string."""

    id: str
    subset: str
    prompt: str
    chosen: str
    rejected: str


# --------------------------------------------------------------------------- loading


def _is_file_source(dataset: str) -> bool:
    if storage.is_gcs(dataset) or dataset.lower().endswith(LOCAL_SUFFIXES):
        return True
    return storage.local_path(dataset).exists()


def _read_json_records(data: bytes, source: str) -> list[dict]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # perhaps JSON lines whose first record is an object
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            values = list(obj.values())
            if values and all(isinstance(v, list) for v in values):  # column-oriented
                n = len(values[0])
                if any(len(v) != n for v in values):
                    raise EvalError(f"{source}: columns have different lengths")
                return [dict(zip(obj, row, strict=True)) for row in zip(*values, strict=True)]
            return [obj]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EvalError(f"{source}: line {lineno} is not valid JSON ({exc.msg})") from exc
    return records


def _read_parquet_records(data: bytes, source: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalError(f"{source}: reading parquet needs pyarrow; `pip install pyarrow`") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise EvalError(f"{source}: not a readable parquet file ({exc})") from exc
    return table.to_pylist()


def _read_hub(dataset: str, split: str = HUB_SPLIT) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise EvalError(
            f"{dataset}: not a local .json/.jsonl/.parquet file; loading a hub dataset needs the "
            "`datasets` package (`pip install rmeval[hub]`), or pass a local file"
        ) from None
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as exc:  # network, auth, missing split
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"{dataset}: cannot load split {split!r} from the hub: {first}") from exc
    return [dict(r) for r in ds]


def load_records(dataset: str, split: str = HUB_SPLIT) -> list[dict]:
    """The raw rows of ``dataset`` (a file, local or gs://, or a hub id: its ``split``)."""
    dataset = os.fspath(dataset)
    if not _is_file_source(dataset):
        if "/" in dataset and not dataset.startswith((".", "/")):
            return _read_hub(dataset, split)
        raise EvalError(f"{dataset}: no such dataset file (expected .json, .jsonl or .parquet)")
    try:
        data = storage.read_bytes(dataset)
    except StoreError as exc:
        raise EvalError(f"cannot read the dataset: {exc}") from exc
    if dataset.lower().endswith(".parquet"):
        return _read_parquet_records(data, dataset)
    return _read_json_records(data, dataset)


def load_pairs(dataset: str, subsets: Sequence[str] | None = None) -> list[Pair]:
    """The pairs of ``dataset``, optionally only those of ``subsets``, in file order.

    Raises :class:`EvalError` for missing columns, non-text values, an empty dataset or a
    requested subset that the dataset does not have."""
    dataset = os.fspath(dataset)
    rows = load_records(dataset)
    if not rows:
        raise EvalError(f"{dataset}: the dataset is empty")
    if not all(isinstance(r, dict) for r in rows):
        raise EvalError(f"{dataset}: expected one JSON object per row")
    columns = set().union(*(r.keys() for r in rows[:1]))
    first = rows[0]
    if "total_completions" in columns or isinstance(first.get("chosen"), list):
        raise EvalError(
            f"{dataset}: a RewardBench 2 file (lists of completions); RewardBench expects one "
            f"pair per row with text columns {', '.join(REQUIRED_COLUMNS)} "
            f"(use --benchmark {V2} for this file)"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise EvalError(
            f"{dataset}: missing column(s) {', '.join(missing)}; a RewardBench dataset needs "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    pairs: list[Pair] = []
    for i, r in enumerate(rows):
        for c in REQUIRED_COLUMNS:
            if not isinstance(r.get(c), str):
                raise EvalError(
                    f"{dataset}: row {i} column {c!r} is {type(r.get(c)).__name__}, expected text"
                )
        rid = r.get("id")
        pairs.append(
            Pair(
                id=str(i) if rid is None else str(rid),
                subset=r["subset"],
                prompt=r["prompt"],
                chosen=r["chosen"],
                rejected=r["rejected"],
            )
        )
    _check_unique_ids(pairs, dataset)
    if subsets:
        wanted = list(dict.fromkeys(subsets))
        present = {p.subset for p in pairs}
        absent = [s for s in wanted if s not in present]
        if absent:
            raise EvalError(
                f"{dataset}: no pairs for subset(s) {', '.join(absent)}; "
                f"it has {', '.join(sorted(present))}"
            )
        keep = set(wanted)
        pairs = [p for p in pairs if p.subset in keep]
    unknown = sorted({p.subset for p in pairs} - set(scoring.EXAMPLE_COUNTS))
    if unknown:
        log.warning(
            "%s: subset(s) %s are not RewardBench subsets: scored, but left out of the "
            "section scores",
            dataset,
            ", ".join(unknown),
        )
    return pairs


def _v2_expected() -> str:
    return (
        f"RewardBench 2 expects columns {', '.join(REQUIRED_COLUMNS_V2)} (chosen and "
        "rejected lists of text)"
    )


def load_rows_v2(dataset: str, subsets: Sequence[str] | None = None) -> list[Row]:
    """The RewardBench 2 rows of ``dataset`` (a file, or a hub id: split ``test``),
    optionally only those of ``subsets``, in file order.

    Raises :class:`EvalError` for a RewardBench (v1) file, missing columns, values of the
    wrong type, ``num_correct`` < 1 or above the completions, ``total_completions`` not
    len(chosen) + len(rejected) (naming the row id), duplicate ids, an empty dataset, or
    a requested subset the dataset does not have."""
    from rmeval.rewardbench import scoring_v2

    dataset = os.fspath(dataset)
    records = load_records(dataset, HUB_SPLIT_V2)
    if not records:
        raise EvalError(f"{dataset}: the dataset is empty")
    if not all(isinstance(r, dict) for r in records):
        raise EvalError(f"{dataset}: expected one JSON object per row")
    first = records[0]
    if isinstance(first.get("chosen"), str) or (
        "total_completions" not in first and "num_correct" not in first
    ):
        raise EvalError(f"{dataset}: a RewardBench (v1) file, not RewardBench 2; {_v2_expected()}")
    missing = [c for c in REQUIRED_COLUMNS_V2 if c not in first]
    if missing:
        raise EvalError(f"{dataset}: missing column(s) {', '.join(missing)}; {_v2_expected()}")
    rows: list[Row] = []
    for i, r in enumerate(records):
        rid = str(r.get("id", i))
        for c in ("prompt", "subset"):
            if not isinstance(r.get(c), str):
                raise EvalError(
                    f"{dataset}: row {rid} column {c!r} is {type(r.get(c)).__name__}, expected text"
                )
        lists = {}
        for c in ("chosen", "rejected"):
            v: object = r.get(c)
            tolist = getattr(v, "tolist", None)
            if callable(tolist):  # parquet/pandas arrays
                v = tolist()
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise EvalError(
                    f"{dataset}: row {rid} column {c!r} must be a list of text; {_v2_expected()}"
                )
            lists[c] = tuple(v)
        n_total = len(lists["chosen"]) + len(lists["rejected"])
        counts: dict[str, int] = {}
        for c in ("num_correct", "total_completions"):
            n = r.get(c)
            if isinstance(n, bool) or not isinstance(n, int):
                raise EvalError(
                    f"{dataset}: row {rid} column {c!r} is {type(n).__name__}, expected a "
                    "whole number"
                )
            counts[c] = n
        nc, tc = counts["num_correct"], counts["total_completions"]
        if tc != n_total:
            raise EvalError(
                f"{dataset}: row {rid} has total_completions {tc} but "
                f"{len(lists['chosen'])} chosen + {len(lists['rejected'])} rejected = {n_total}"
            )
        if not 1 <= nc <= n_total:
            raise EvalError(
                f"{dataset}: row {rid} has num_correct {nc}; it must be between 1 and its "
                f"{n_total} completions (the correct ones come first)"
            )
        if r["subset"].lower() == scoring_v2.TIES.lower():
            scoring_v2.ties_key(rid)  # ref:<n> / tied:<n>, else an error naming the id
        rows.append(Row(rid, r["subset"], r["prompt"], lists["chosen"], lists["rejected"], nc))
    _check_unique_ids(rows, dataset)
    if subsets:
        wanted = list(dict.fromkeys(subsets))
        present = {p.subset for p in rows}
        absent = [s for s in wanted if s not in present]
        if absent:
            raise EvalError(
                f"{dataset}: no rows for subset(s) {', '.join(absent)}; "
                f"it has {', '.join(sorted(present))}"
            )
        rows = [p for p in rows if p.subset in set(wanted)]
    unknown = sorted({p.subset for p in rows} - set(scoring_v2.SUBSETS))
    if unknown:
        log.warning(
            "%s: subset(s) %s are not RewardBench 2 subsets: scored, but left out of Overall",
            dataset,
            ", ".join(unknown),
        )
    return rows


def _check_unique_ids(pairs: Sequence[Pair | Row], dataset: str) -> None:
    """Duplicate ids are an error, not deduplicated: a repeated pair would count twice in
    its subset's accuracy (and RewardBench's section weights assume each pair once), the
    per-pair scores could not be told apart by id, and when the copies differ there is no
    right one to keep. The usual cause is a file concatenated twice."""
    seen: dict[str, int] = {}
    for i, p in enumerate(pairs):
        seen.setdefault(p.id, i)
    if len(seen) == len(pairs):
        return
    counts = Counter(p.id for p in pairs)
    dup = sorted((k for k, n in counts.items() if n > 1), key=lambda k: seen[k])
    shown = ", ".join(dup[:5]) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
    raise EvalError(
        f"{dataset}: {len(dup)} id(s) appear more than once ({shown}; "
        f"{sum(counts[k] for k in dup) - len(dup)} extra row(s)); every pair needs its own id "
        "(was the file concatenated twice?)"
    )


# --------------------------------------------------------------------------- sample

# Word-count ranges (prompt, response), drawn log-uniformly, per family of subsets. With a
# byte-level BPE tokenizer a word is about 1.2 tokens, so formatted pairs range from a few
# tens to about 1,500 tokens (mean about 300), long-tailed like the real data.
_SHAPES: dict[str, tuple[tuple[int, int], tuple[int, int], str]] = {
    "alpacaeval-easy": ((6, 60), (20, 600), "prose"),
    "alpacaeval-length": ((6, 60), (150, 1200), "prose"),
    "alpacaeval-hard": ((6, 60), (20, 600), "prose"),
    "mt-bench": ((10, 150), (30, 900), "prose"),
    "llmbar": ((8, 120), (5, 300), "prose"),
    "refusals": ((6, 40), (10, 220), "refusal"),
    "xstest": ((4, 25), (8, 250), "refusal"),
    "donotanswer": ((4, 25), (15, 300), "refusal"),
    "math-prm": ((15, 120), (40, 1300), "math"),
    "hep": ((40, 300), (20, 450), "code"),
}


def _words(text: str) -> list[str]:
    return text.split()


_PROSE = _words(
    "the a an of to in and or for with on by from as that this these those it is are was "
    "were be been can could should would may might will model answer question example "
    "reason result because however therefore first second finally data system user people "
    "time work make good better best simple clear important number list step idea case "
    "write explain describe compare summary story poem letter email recipe travel plan "
    "history science music health language city river mountain computer network garden"
)
_REFUSAL = _words(
    "sorry I cannot help with that request because it could cause harm please consider "
    "safe legal alternatives here is some general information instead you can contact a "
    "professional who will be able to assist responsibly"
)
_MATH = _words(
    "let x y n k be integer real number sum product equals therefore so we get compute "
    "divide multiply add subtract solve equation step answer is = + - * / ( ) 2 3 5 7 11 "
    "13 17 19 100 1000 squared root prime factor"
)
_CODE = _words(
    "def return if else for while in range len int str list dict None True False import "
    "from class self ( ) [ ] { } : ; , . = == != < > + - * // % i j n x result value "
    "count items key fn main print std vector auto func let mut fn -> => const var"
)
_VOCAB = {"prose": _PROSE, "refusal": _REFUSAL + _PROSE[:40], "math": _MATH, "code": _CODE}
_MODELS = ("model-a", "model-b", "model-c", "model-d", "model-e")


def _shape(subset: str) -> tuple[tuple[int, int], tuple[int, int], str]:
    if subset in _SHAPES:
        return _SHAPES[subset]
    for prefix, shape in _SHAPES.items():
        if subset.startswith(prefix):
            return shape
    return _SHAPES["alpacaeval-easy"]


def _loguniform(rng: random.Random, lo: int, hi: int) -> int:
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _text(rng: random.Random, vocab: list[str], n_words: int, kind: str) -> str:
    words = [rng.choice(vocab) for _ in range(max(1, n_words))]
    if kind == "code":
        lines, i = [], 0
        while i < len(words):
            k = rng.randint(3, 10)
            lines.append("    " * rng.randint(0, 2) + " ".join(words[i : i + k]))
            i += k
        return "\n".join(lines)
    out, i = [], 0
    while i < len(words):
        k = rng.randint(5, 18)
        sentence = " ".join(words[i : i + k])
        out.append(
            sentence[:1].upper() + sentence[1:] + rng.choice(".!?" if kind == "prose" else ".")
        )
        i += k
    paragraphs, j = [], 0
    while j < len(out):
        k = rng.randint(2, 6)
        paragraphs.append(" ".join(out[j : j + k]))
        j += k
    return "\n\n".join(paragraphs)


def sample_records(per_subset: int = 10, seed: int = 0) -> list[dict]:
    """The rows :func:`write_sample` writes: ``per_subset`` pairs for each of the 23
    subsets, in subset order, deterministic in ``seed``."""
    if per_subset < 1:
        raise EvalError(f"--per-subset must be at least 1, got {per_subset}")
    rows: list[dict] = []
    for s_index, subset in enumerate(scoring.SUBSETS):
        rng = random.Random(seed * 1_000_003 + s_index)
        (plo, phi), (rlo, rhi), kind = _shape(subset)
        vocab = _VOCAB[kind]
        prompt_vocab = _CODE if kind == "code" else _PROSE
        for _ in range(per_subset):
            prompt = _text(rng, prompt_vocab, _loguniform(rng, plo, phi), kind)
            chosen = _text(rng, vocab, _loguniform(rng, rlo, rhi), kind)
            rejected = _text(rng, vocab, _loguniform(rng, rlo, rhi), kind)
            a, b = rng.sample(_MODELS, 2)
            rows.append(
                {
                    "id": len(rows),
                    "prompt": prompt,
                    "chosen": chosen,
                    "chosen_model": a,
                    "rejected": rejected,
                    "rejected_model": b,
                    "subset": subset,
                }
            )
    return rows


# RewardBench 2 subsets: (prompt words, response words, vocabulary).
_SHAPES_V2: dict[str, tuple[tuple[int, int], tuple[int, int], str]] = {
    "Factuality": ((8, 80), (20, 500), "prose"),
    "Precise IF": ((10, 60), (20, 300), "prose"),
    "Math": ((15, 120), (40, 900), "math"),
    "Safety": ((6, 40), (10, 220), "refusal"),
    "Focus": ((6, 60), (20, 500), "prose"),
    "Ties": ((4, 20), (1, 12), "prose"),
}


def sample_records_v2(per_subset: int = 10, seed: int = 0) -> list[dict]:
    """The rows :func:`write_sample` writes for RewardBench 2: ``per_subset`` best-of-4 rows
    (1 chosen, 3 rejected) for each of five subsets and, for Ties, ``per_subset`` prompts
    each with a ``ref:<n>`` row (one correct answer) and a ``tied:<n>`` row (2 to 5
    correct), with 3 to 8 incorrect completions; deterministic in ``seed``."""
    from rmeval.rewardbench import scoring_v2

    if per_subset < 1:
        raise EvalError(f"--per-subset must be at least 1, got {per_subset}")
    rows: list[dict] = []

    def add(rid: str, subset: str, prompt: str, chosen: list[str], rejected: list[str]) -> None:
        rows.append(
            {
                "id": rid,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "num_correct": len(chosen),
                "num_rejected": len(rejected),
                "total_completions": len(chosen) + len(rejected),
                "models": [_MODELS[(len(rows) + k) % len(_MODELS)] for k in range(4)],
                "subset": subset,
            }
        )

    for s_index, subset in enumerate(scoring_v2.SUBSETS):
        rng = random.Random(seed * 1_000_003 + 7_919 * (s_index + 1))
        (plo, phi), (rlo, rhi), kind = _SHAPES_V2[subset]
        vocab = _VOCAB[kind]

        def text(lo: int, hi: int) -> str:
            return _text(rng, vocab, _loguniform(rng, lo, hi), kind)  # noqa: B023

        for n in range(per_subset):
            prompt = _text(rng, _PROSE, _loguniform(rng, plo, phi), kind)
            if subset == scoring_v2.TIES:
                wrong = [text(rlo, rhi) for _ in range(rng.randint(3, 8))]
                add(f"ref:{n}", subset, prompt, [text(rlo, rhi)], wrong)
                tied_prompt = _text(rng, _PROSE, _loguniform(rng, plo, phi), kind)
                right = [text(rlo, rhi) for _ in range(rng.randint(2, 5))]
                add(f"tied:{n}", subset, tied_prompt, right, wrong[: rng.randint(3, len(wrong))])
            else:
                add(
                    f"{subset.lower().replace(' ', '-')}-{n}",
                    subset,
                    prompt,
                    [text(rlo, rhi)],
                    [text(rlo, rhi) for _ in range(3)],
                )
    return rows


def write_sample(
    out: str | os.PathLike,
    per_subset: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    benchmark: str = DEFAULT_BENCHMARK,
) -> Path | str:
    """Write a deterministic JSON-lines sample of ``benchmark`` (RewardBench pairs, or
    RewardBench 2 rows) to ``out`` (local or gs://; atomic, no-clobber unless
    ``overwrite``). Returns ``out`` (a Path when local)."""
    if benchmark not in BENCHMARKS:
        raise EvalError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    out = os.fspath(out)
    rows = (sample_records_v2 if benchmark == V2 else sample_records)(per_subset, seed)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    storage.write_text(out, text, overwrite=overwrite)
    log.info(
        "wrote %d %s rows (%d subsets) to %s",
        len(rows),
        benchmark,
        len({r["subset"] for r in rows}),
        out,
    )
    return out if storage.is_gcs(out) else storage.local_path(out)
