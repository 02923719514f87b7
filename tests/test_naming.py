"""naming.py: every pattern of reference/seed-pipeline.md, plus property-based safety."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmeval import naming
from rmeval.errors import NamingError

REAL = (
    "gs://ljm-dev/human-preferences/rm_checkpoints/helpsteer2/"
    "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026"
    "--a6bf226b9e8e43f387810e0da3096526/streaming_params_437"
)


def test_real_checkpoint_path():
    c = naming.parse_checkpoint(REAL)
    assert (
        c.experiment
        == "tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026"
    )
    assert c.uuid == "07add08aa33a4fa6a5294c7bc41ae1f9"
    assert c.budget == 4026
    assert c.step == 437
    assert c.feature_hash is None
    assert c.directory.endswith("--a6bf226b9e8e43f387810e0da3096526")


def test_run_and_beaker_experiment_names_follow_the_seed():
    run = naming.run_name(REAL, prefix="helpsteer2-counts")
    assert (
        run
        == "helpsteer2-counts-tulu2_13b_rm_human_datamodel_counts_7000_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026"
    )
    exp = naming.eval_experiment_name(run)
    # the seed's fetch script selects experiments by the prefix rm-eval-<dataset>-count
    assert exp.startswith("rm-eval-helpsteer2-count")
    assert naming.BEAKER_NAME_RE.match(exp) and len(exp) <= naming.BEAKER_NAME_MAX
    assert naming.run_name(REAL) == naming.parse_checkpoint(REAL).experiment


def test_dots_become_dashes_and_cut_at_double_dash():
    c = naming.parse_checkpoint("/ckpts/llama3.1_8b_rm--abc--def/streaming_params")
    assert c.experiment == "llama3-1_8b_rm"
    assert c.step is None


def test_feature_hash_and_experiments_file_features():
    c = naming.parse_checkpoint("gs://b/p/tulu_FEATS_3f2a9c_SWAPS_512--x/streaming_params_9")
    assert c.feature_hash == "3f2a9c"
    assert c.budget == 512
    assert naming.experiments_file_feature("token_len_diff::min_val-0.0|max_val-0.33") == (
        "token_len_diff::min_val=0.0|max_val=0.33"
    )


def test_run_label_keeps_what_tells_runs_apart():
    run = naming.run_name(REAL, prefix="helpsteer2-counts")
    assert naming.run_label(run) == "ID 07add08a · SWAPS 4026"
    assert (
        naming.run_label(run, uuid_chars=32) == "ID 07add08aa33a4fa6a5294c7bc41ae1f9 · SWAPS 4026"
    )
    assert naming.run_label("tulu_FEATS_3f2a9c_SWAPS_512") == "FEATS 3f2a9c · SWAPS 512"
    assert naming.run_label("plain-run-name") is None


def test_feature_counts_file_names():
    name = "regressor_feats_ID__07add08aa33a4fa6a5294c7bc41ae1f9__SWAPS_4026.json"
    assert naming.parse_feature_counts_filename(name) == ("07add08aa33a4fa6a5294c7bc41ae1f9", 4026)
    assert naming.parse_feature_counts_filename("/some/dir/" + name) == (
        "07add08aa33a4fa6a5294c7bc41ae1f9",
        4026,
    )
    assert naming.parse_feature_counts_filename("regressor_feats_ID__zz__SWAPS_1.json") is None
    assert naming.parse_feature_counts_filename("notes.json") is None
    assert naming.feature_counts_filename("abc123", 7) == "regressor_feats_ID__abc123__SWAPS_7.json"


def test_rescale_budget_as_the_seed():
    assert naming.rescale_budget(4026, 7000) == 4026
    assert naming.rescale_budget(1000, 14000) == 500
    assert naming.rescale_budget(999, 10000) == int(999 * 7000 / 10000)
    with pytest.raises(NamingError):
        naming.rescale_budget(1, 0)


@pytest.mark.parametrize(
    "name,ok",
    [
        ("streaming_params", True),
        ("streaming_params_437", True),
        ("streaming_params_", False),
        ("streaming_params_x", False),
        ("streaming_params.tmp", False),
        ("streaming_train_state", False),
        ("streaming_train_state_10", False),
    ],
)
def test_checkpoint_file_names(name, ok):
    assert naming.is_checkpoint_file(name) is ok
    assert naming.is_checkpoint_file("gs://b/run--x/" + name) is ok


def test_train_state_is_recognised():
    assert naming.is_train_state_file("a/b/streaming_train_state_5")
    with pytest.raises(NamingError, match="not an EasyLM checkpoint file"):
        naming.parse_checkpoint("gs://b/run/streaming_train_state_5")


def test_checkpoint_must_sit_in_a_run_directory():
    with pytest.raises(NamingError):
        naming.parse_checkpoint("gs://streaming_params")
    with pytest.raises(NamingError):
        naming.parse_checkpoint("streaming_params")


def test_prefix_does_not_make_substring_matches():
    # The seed skipped a run when its name was a substring of another's: names here are exact.
    a = naming.run_name("gs://b/exp_1--h/streaming_params", "p")
    b = naming.run_name("gs://b/exp_10--h/streaming_params", "p")
    assert a != b and a in b


# --------------------------------------------------------------------------- properties

hexes = st.text(alphabet="0123456789abcdef", min_size=8, max_size=32)
words = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), max_codepoint=127),
    min_size=1,
    max_size=12,
)


@given(
    base=words,
    uid=hexes,
    budget=st.integers(0, 10**7),
    step=st.none() | st.integers(0, 10**6),
    suffix=hexes,
)
def test_parse_round_trip(base, uid, budget, step, suffix):
    directory = f"{base}_counts_7000_ID__{uid}__SWAPS_{budget}--{suffix}"
    fname = "streaming_params" if step is None else f"streaming_params_{step}"
    c = naming.parse_checkpoint(f"gs://bucket/some/prefix/{directory}/{fname}")
    assert c.uuid == uid
    assert c.budget == budget
    assert c.step == step
    assert c.experiment == f"{base}_counts_7000_ID__{uid}__SWAPS_{budget}"
    assert naming.parse_feature_counts_filename(naming.feature_counts_filename(uid, budget)) == (
        uid,
        budget,
    )


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=300)
def test_beaker_safe_always_valid_and_deterministic(name):
    out = naming.beaker_safe(name)
    assert naming.BEAKER_NAME_RE.match(out), out
    assert len(out) <= naming.BEAKER_NAME_MAX
    assert naming.beaker_safe(name) == out
    assert naming.beaker_safe(out) == out  # idempotent


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,100}", fullmatch=True))
def test_beaker_safe_keeps_safe_names(name):
    assert naming.beaker_safe(name) == name


@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=200))
def test_beaker_safe_distinct_inputs_stay_distinct(a, b):
    if a != b:
        assert naming.beaker_safe(a) != naming.beaker_safe(b)


def test_beaker_safe_shortens_with_hash():
    long = "x" * 300
    out = naming.beaker_safe(long)
    assert len(out) == naming.BEAKER_NAME_MAX
    assert re.search(r"-[0-9a-f]{8}$", out)
    assert naming.beaker_safe("a:b") != naming.beaker_safe("a-b")


@given(st.text(max_size=60))
@settings(max_examples=400)
def test_safe_relpath_never_escapes(name):
    try:
        rel = naming.safe_relpath(name)
    except NamingError:
        return
    joined = posixpath.normpath(posixpath.join("/root/dir", rel))
    assert joined.startswith("/root/dir/")
    assert "\x00" not in rel and not rel.startswith("/")


@pytest.mark.parametrize(
    "bad", ["..", "../x", "a/../../b", "/etc/passwd", "a\x00b", "C:/x", "", ".", "a\\..\\b"]
)
def test_safe_relpath_rejects(bad):
    with pytest.raises(NamingError):
        naming.safe_relpath(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\x00", "a\\b"])
def test_safe_component_rejects(bad):
    with pytest.raises(NamingError):
        naming.safe_component(bad)


@pytest.mark.parametrize("prefix", [None, "p"])
def test_run_name_from_a_dot_dot_directory_is_an_ordinary_name(prefix):
    # GCS allows an object named "../streaming_params": the run name must never be a path step.
    name = naming.run_name("gs://b/../streaming_params", prefix)
    assert name not in (".", "..") and "/" not in name and naming.BEAKER_NAME_RE.match(name)


def test_results_branch_is_one_per_dataset():
    assert naming.results_branch("helpsteer2") == "rmeval/results-helpsteer2"
    assert naming.results_branch("a") != naming.results_branch("b")
    with pytest.raises(NamingError, match="results dataset"):
        naming.results_branch("../main")
