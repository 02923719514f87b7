"""The single source of truth for names.

Everything that knows a name pattern lives here: checkpoint files (``streaming_params`` /
``streaming_params_<step>``), the experiment name derived from a checkpoint's directory,
the data-subset uuid (``ID__<hex>__``), the label budget (``SWAPS_<n>``), the feature hash
(``FEATS_<hash>_SWAPS``), feature-count file names, Beaker-safe names, and the path-safety
rules for anything that becomes part of an output path.

Example (a real checkpoint)::

    gs://ljm-dev/human-preferences/rm_checkpoints/helpsteer2/
      tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026--a6bf226b9e8e43f387810e0da3096526/
      streaming_params_437

    experiment = tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026
    uuid = 07add08aa33a4fa6a5294c7bc41ae1f9, budget = 4026, step = 437
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from rmeval.errors import NamingError

CHECKPOINT_GLOB = "streaming_params*"
CHECKPOINT_RE = re.compile(r"^streaming_params(?:_(?P<step>\d+))?$")
TRAIN_STATE_RE = re.compile(r"^streaming_train_state(?:_\d+)?$")
UUID_RE = re.compile(r"ID__(?P<uuid>[0-9a-fA-F]+)__")
BUDGET_RE = re.compile(r"SWAPS_(?P<budget>\d+)")
FEATURE_HASH_RE = re.compile(r"FEATS_(?P<hash>.+?)_SWAPS")
FEATURE_COUNTS_RE = re.compile(
    r"^regressor_feats_ID__(?P<uuid>[0-9a-fA-F]+)__SWAPS_(?P<budget>\d+)\.json$"
)
EXPERIMENT_SEPARATOR = "--"

DEFAULT_EVAL_EXPERIMENT_PREFIX = "rm-eval-"
RESULTS_BRANCH_PREFIX = "rmeval/results-"  # fetch-results' pull-request branch per dataset
# beaker-py's own validator: ASCII letters, digits, '.', '-', '_', not starting with '-'.
BEAKER_NAME_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
# Beaker does not document a length cap that we could check offline; 128 keeps every name
# we build well inside what the service has accepted in practice.
BEAKER_NAME_MAX = 128
_HASH_LEN = 8


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's path says about the run."""

    uri: str
    directory: str
    experiment: str
    step: int | None
    uuid: str | None
    budget: int | None
    feature_hash: str | None

    @property
    def spelling(self) -> str:
        """The run directory up to ``--`` as spelled (before '.' becomes '-')."""
        return self.directory.split(EXPERIMENT_SEPARATOR, 1)[0]


# --------------------------------------------------------------------------- checkpoints


def is_checkpoint_file(name: str) -> bool:
    """True for ``streaming_params`` and ``streaming_params_<step>`` (base name)."""
    return CHECKPOINT_RE.match(_base(name)) is not None


def is_train_state_file(name: str) -> bool:
    return TRAIN_STATE_RE.match(_base(name)) is not None


def checkpoint_step(name: str) -> int | None:
    m = CHECKPOINT_RE.match(_base(name))
    if m is None:
        raise NamingError(
            f"{name}: not an EasyLM checkpoint file name (expected streaming_params[_<step>])"
        )
    return int(m["step"]) if m["step"] is not None else None


def experiment_from_directory(directory: str) -> str:
    """Directory name up to the first ``--``, with ``.`` replaced by ``-`` (the seed's rule)."""
    return directory.split(EXPERIMENT_SEPARATOR, 1)[0].replace(".", "-")


def parse_checkpoint(uri: str) -> CheckpointName:
    """Parse a checkpoint path (local or gs://)."""
    parts = [p for p in str(uri).rstrip("/").split("/") if p]
    if not parts or not is_checkpoint_file(parts[-1]):
        raise NamingError(
            f"{uri}: not an EasyLM checkpoint file (expected .../<run dir>/streaming_params[_<step>])"
        )
    if len(parts) < 2 or parts[-2] in ("gs:", "file:"):
        raise NamingError(
            f"{uri}: a checkpoint must sit in a run directory that names the experiment"
        )
    directory = parts[-2]
    experiment = experiment_from_directory(directory)
    if not experiment:
        raise NamingError(f"{uri}: directory {directory!r} gives an empty experiment name")
    return CheckpointName(
        uri=str(uri),
        directory=directory,
        experiment=experiment,
        step=checkpoint_step(parts[-1]),
        uuid=parse_uuid(directory),
        budget=parse_budget(directory),
        feature_hash=parse_feature_hash(directory),
    )


def run_name(uri: str, prefix: str | None = None) -> str:
    """The run's name: ``<prefix>-<experiment>``, Beaker-safe. Used for the store directory
    and (with :func:`eval_experiment_name`) for the Beaker experiment."""
    return run_name_of(parse_checkpoint(uri), prefix)


def run_name_of(parsed: CheckpointName, prefix: str | None = None) -> str:
    """:func:`run_name` of an already parsed checkpoint path."""
    name = f"{prefix}-{parsed.experiment}" if prefix else parsed.experiment
    return safe_component(beaker_safe(name), what=parsed.uri)


def run_names(
    checkpoints: Iterable[CheckpointName],
    prefix: str | None = None,
    owners: Callable[[list[str]], Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """The run name of every checkpoint, distinct for distinct experiments.

    :func:`run_name` turns '.' into '-', so ``a.b`` and ``a-b`` would share one name. In
    such a group the plain name stays with the experiment that published it (``owners``,
    called with the colliding names only: run name -> the spelling of the experiment whose
    results the store holds under it),
    else with the one spelled exactly so (no '.'); each other experiment of the group gets
    ``<name>-<hash of its spelling>``. A name without a collision is exactly
    :func:`run_name`'s, so published names never change. Keyed by checkpoint URI."""
    parsed = list(checkpoints)
    uris = [c.uri for c in parsed]
    plain = {c.uri: run_name_of(c, prefix) for c in parsed}
    spelled = {c.uri: c.spelling for c in parsed}
    groups: dict[str, set[str]] = {}
    for u in uris:
        groups.setdefault(plain[u], set()).add(spelled[u])
    colliding = sorted(n for n, g in groups.items() if len(g) > 1)
    published = owners(colliding) if owners is not None and colliding else {}
    out = {}
    for u in uris:
        name, spelling = plain[u], spelled[u]
        group = groups[name]
        if len(group) == 1:
            out[u] = name
            continue
        owner = published.get(name)
        if owner not in group:
            bare = name.removeprefix(f"{prefix}-") if prefix else name
            owner = bare if bare in group else None
        if spelling == owner:
            out[u] = name
        else:
            out[u] = safe_component(beaker_safe(f"{name}-{_short_hash(spelling)}"), what=u)
    return out


def check_run_name(name: str) -> str:
    """``name`` if it can be a run name (a Beaker-safe single path component)."""
    if beaker_safe(name) != name:
        raise NamingError(
            f"run name {name!r}: use letters, digits, '.', '-' and '_' only, at most "
            f"{BEAKER_NAME_MAX} characters, not starting with '-'"
        )
    return safe_component(name, what="run name")


def eval_experiment_name(run: str, experiment_prefix: str = DEFAULT_EVAL_EXPERIMENT_PREFIX) -> str:
    """Beaker experiment name of a run (the seed's ``rm-eval-<prefix>-<experiment>``)."""
    return beaker_safe(f"{experiment_prefix}{run}")


def checkpoint_run_dir(uri: str) -> str:
    """The checkpoint's run directory (everything before the file name)."""
    return str(uri).rstrip("/").rsplit("/", 1)[0]


# --------------------------------------------------------------------------- name fields


def parse_uuid(name: str) -> str | None:
    m = UUID_RE.search(name)
    return m["uuid"].lower() if m else None


def parse_budget(name: str) -> int | None:
    m = BUDGET_RE.search(name)
    return int(m["budget"]) if m else None


def parse_feature_hash(name: str) -> str | None:
    m = FEATURE_HASH_RE.search(name)
    return m["hash"] if m else None


def run_label(name: str, uuid_chars: int = 8) -> str | None:
    """The parts of a run's name that tell it from the others, for plots and tables:
    ``ID 07add08a · SWAPS 4026`` (with ``FEATS <hash>`` when the name has one; the uuid
    cut to ``uuid_chars``). ``None`` when the name has none of these fields."""
    parts = []
    uuid = parse_uuid(name)
    if uuid:
        parts.append(f"ID {uuid[:uuid_chars]}")
    feats = parse_feature_hash(name)
    if feats:
        parts.append(f"FEATS {feats}")
    budget = parse_budget(name)
    if budget is not None:
        parts.append(f"SWAPS {budget}")
    return " · ".join(parts) or None


def results_branch(dataset: str) -> str:
    """The branch fetch-results lands a results dataset on in pull-request mode (one per
    dataset, so one pull request per dataset): ``rmeval/results-<dataset>``."""
    return RESULTS_BRANCH_PREFIX + safe_component(dataset, what="results dataset")


def rescale_budget(budget: int, dataset_total_size: int, reference_size: int = 7000) -> int:
    """The seed's rescaling of a budget to a 7,000-example dataset."""
    if dataset_total_size <= 0:
        raise NamingError(f"dataset total size must be positive, got {dataset_total_size}")
    return int(budget * reference_size / dataset_total_size)


def feature_counts_filename(uuid: str, budget: int) -> str:
    return f"regressor_feats_ID__{uuid}__SWAPS_{budget}.json"


def parse_feature_counts_filename(name: str) -> tuple[str, int] | None:
    """``regressor_feats_ID__<uuid>__SWAPS_<n>.json`` -> (uuid, n); None if it is not one."""
    m = FEATURE_COUNTS_RE.match(_base(name))
    return (m["uuid"].lower(), int(m["budget"])) if m else None


def experiments_file_feature(name: str) -> str:
    """Feature names in an experiments file use ``-`` where the column uses ``=``."""
    return name.replace("-", "=")


# --------------------------------------------------------------------------- safety


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


def beaker_safe(name: str, max_len: int = BEAKER_NAME_MAX) -> str:
    """A name Beaker accepts. Safe names are returned unchanged; anything else has its
    disallowed characters replaced by ``-``, is cut to fit, and gets a hash suffix of
    the original, so distinct inputs stay distinct and the result is deterministic."""
    if max_len < 2 * _HASH_LEN:
        raise ValueError("max_len too small")
    if BEAKER_NAME_RE.match(name) and len(name) <= max_len:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"
    suffix = "-" + _short_hash(name)
    return cleaned[: max_len - len(suffix)].rstrip("-") + suffix


def safe_component(name: str, what: str = "name") -> str:
    """One path component that cannot escape its parent directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise NamingError(
            f"{what}: {name!r} is not a safe file name (no '/', '\\\\', NUL, '.' or '..')"
        )
    return name


def safe_relpath(name: str, what: str = "name") -> str:
    """A relative '/'-separated path that stays inside its root: no absolute parts, no
    '..', no NUL, no backslashes. Returns it normalised (no '.' or empty parts)."""
    if not name or "\x00" in name or "\\" in name:
        raise NamingError(f"{what}: {name!r} is not a safe relative path")
    p = PurePosixPath(name)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise NamingError(f"{what}: {name!r} is absolute; expected a relative path")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts or any(x == ".." for x in parts):
        raise NamingError(f"{what}: {name!r} escapes its directory ('..')")
    return "/".join(parts)


def _base(name: str) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1]
