"""Spec templates: YAML escaping of hostile values, template errors with file and line,
strict validation beyond beaker-py's, presets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rmeval import specs
from rmeval.errors import SpecError

TEMPLATE = specs.DEFAULT_TEMPLATE
RB_TEMPLATE = specs.TEMPLATES_DIR / "beaker" / "rewardbench.yml.j2"

HOSTILE = [
    "a: b",
    "x # comment",
    "{{ 7*7 }}",
    "{% raw %}",
    'quote"d',
    "single'quote",
    "new\nline: injected\n- tasks: []",
    "tab\there",
    "- item",
    "&anchor *alias !!python/object",
    "",
    "null",
    "true",
    "0x10",
    "...\n---\nversion: v1",
    "back\\slash",
    "unicode ☃ \u2028 \x85 \x00 \x7f",
    "[1, 2]",
    "{a: 1}",
    "%YAML 1.1",
]


def _runs(names):
    return [
        {
            "run": f"run-{i}",
            "checkpoint": f"gs://b/{name}/streaming_params_{i}",
            "experiment": f"rm-eval-run-{i}",
        }
        for i, name in enumerate(names)
    ]


def _one(tmp_path: Path, body: str, name: str = "t.yml.j2") -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_stays_one_string(tmp_path, value):
    t = _one(tmp_path, "key: {{ v }}\nother: {{ v | yaml }}\nlist: [{{ v }}, {{ v }}]\n")
    out = yaml.safe_load(specs.render_template(t, {"v": value}))
    assert out == {"key": value, "other": value, "list": [value, value]}


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_round_trips(value):
    rendered = specs.yaml_scalar(value)
    assert yaml.safe_load("k: " + rendered) == {"k": value}


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3),
        max_leaves=8,
    )
)
def test_nested_values_round_trip(value):
    assert yaml.safe_load("k: " + specs.yaml_scalar(value)) == {"k": value}


def test_hostile_checkpoint_names_keep_the_spec_structure():
    runs = _runs(HOSTILE)
    ctx = {"runs": runs, "store": "gs://s/a: b #c", "source": "x\n- y", "prefix": "p'\"{{"}
    text = specs.render_spec(TEMPLATE, ctx)
    data, beaker_spec = specs.validate_spec(text)
    assert len(data["tasks"]) == len(HOSTILE)
    assert [t["arguments"][0] for t in data["tasks"]] == [r["checkpoint"] for r in runs]
    for t in data["tasks"]:
        args = t["arguments"]
        assert args[args.index("--store") + 1] == "gs://s/a: b #c"
        assert args[args.index("--prefix") + 1] == "p'\"{{"
    assert len(beaker_spec.tasks) == len(HOSTILE)


def test_minimal_context_renders_a_valid_spec_with_documented_defaults():
    text = specs.render_spec(TEMPLATE, {"runs": _runs(["d"]), "store": "/s", "source": "/src"})
    data, _ = specs.validate_spec(text)
    assert "budget" not in data
    (task,) = data["tasks"]
    assert task["image"] == {"docker": "ghcr.io/rmeval/rmeval:latest"}
    assert task["command"] == ["rmeval", "run-one"]
    assert task["result"] == {"path": "/output"}
    assert task["resources"] == {"gpuCount": 1}
    assert task["context"] == {"priority": "normal", "preemptible": True}
    secrets = {e["name"]: e["secret"] for e in task["envVars"] if "secret" in e}
    assert secrets == {
        "BEAKER_TOKEN": "BEAKER_TOKEN",
        "GOOGLE_SERVICE_ACCOUNT": "GOOGLE_SERVICE_ACCOUNT",
        "HF_TOKEN": "HF_TOKEN",
    }
    args = task["arguments"]
    assert args[args.index("--keep-model") + 1] == "/output/model"
    assert "constraints" not in task


def test_keep_model_false_and_uri():
    base = {"runs": _runs(["d"]), "store": "/s", "source": "/src"}
    off = specs.validate_spec(specs.render_spec(TEMPLATE, {**base, "keep_model": False}))[0]
    assert "--keep-model" not in off["tasks"][0]["arguments"]
    uri = specs.validate_spec(specs.render_spec(TEMPLATE, {**base, "keep_model": "gs://m/"}))[0]
    args = uri["tasks"][0]["arguments"]
    assert args[args.index("--keep-model") + 1] == "gs://m/run-0"


def test_undefined_variable_names_template_file_and_line():
    with pytest.raises(SpecError) as err:
        specs.render_template(TEMPLATE, {"runs": _runs(["d"]), "source": "/src"})
    msg = str(err.value)
    lines = TEMPLATE.read_text().splitlines()
    path, line = msg.split(":")[0], int(msg.split(":")[1])
    assert path == str(TEMPLATE)
    assert "store" in lines[line - 1]
    assert "'store' is undefined" in msg
    assert "\n" not in msg


def test_syntax_error_names_file_and_line(tmp_path):
    t = _one(tmp_path, "version: v2\ntasks:\n{% for r in runs %}\n  - name: {{ r.run }\n")
    with pytest.raises(SpecError, match=rf"^{t}:4: template syntax error"):
        specs.render_template(t, {"runs": []})


def test_runtime_error_inside_loop_names_line(tmp_path):
    t = _one(tmp_path, "a: 1\n{% for r in runs %}\nb: {{ r.missing.deeper }}\n{% endfor %}\n")
    with pytest.raises(SpecError, match=rf"^{t}:3: "):
        specs.render_template(t, {"runs": [{"run": "x"}]})


def test_template_not_found(tmp_path):
    with pytest.raises(SpecError, match="template not found"):
        specs.render_template(tmp_path / "nope.j2", {})


def test_gpu_count_string_is_rejected_though_beaker_py_accepts_it():
    ctx = {"runs": _runs(["d"]), "store": "/s", "source": "/src", "gpus": "two"}
    text = specs.render_template(TEMPLATE, ctx)
    data = specs.parse_spec(text)
    # beaker-py alone lets it through ...
    from beaker import BeakerExperimentSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        BeakerExperimentSpec.from_json(data)
    # ... our check does not.
    with pytest.raises(SpecError, match=r"tasks\[0\]\.resources\.gpuCount: expected an integer"):
        specs.render_spec(TEMPLATE, ctx)


def test_unknown_key_is_rejected(tmp_path):
    good = yaml.safe_load(
        specs.render_template(TEMPLATE, {"runs": _runs(["d"]), "store": "/s", "source": "/"})
    )
    bad = {**good, "tasks": [{**good["tasks"][0], "gpuCoutn": 1}]}
    with pytest.raises(SpecError, match=r"tasks\[0\]\.gpuCoutn: unknown key"):
        specs.validate_spec(bad)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda s: s.pop("version"), r"version: required"),
        (lambda s: s.update(version="v1"), r"version: 'v1' is not one of"),
        (lambda s: s["tasks"][0].pop("image"), r"tasks\[0\]\.image: required"),
        (lambda s: s["tasks"][0]["image"].update(beaker="x"), r"exactly one of beaker or docker"),
        (lambda s: s["tasks"][0]["context"].update(priority="asap"), r"priority: 'asap'"),
        (lambda s: s["tasks"][0]["context"].update(preemptible="yes"), r"expected true/false"),
        (lambda s: s["tasks"][0]["resources"].update(gpuCount=True), r"expected an integer"),
        (lambda s: s["tasks"][0]["arguments"].append(3), r"arguments\[\d+\]: expected a string"),
        (lambda s: s["tasks"][0]["envVars"].append({"name": "A"}), r"exactly one of value"),
        (lambda s: s["tasks"].append(dict(s["tasks"][0])), r"duplicate task name"),
        (lambda s: s.update(tasks=[]), r"no tasks"),
        (lambda s: s["tasks"][0].update(name="bad name"), r"not a valid Beaker name"),
        (lambda s: s["tasks"][0].update(result={}), r"result\.path: required"),
    ],
)
def test_strict_check(mutate, pattern):
    spec = yaml.safe_load(
        specs.render_template(TEMPLATE, {"runs": _runs(["d"]), "store": "/s", "source": "/"})
    )
    mutate(spec)
    with pytest.raises(SpecError, match=pattern):
        specs.validate_spec(spec)


def test_template_rendering_invalid_yaml_is_a_clear_error(tmp_path):
    t = _one(tmp_path, "version: v2\ntasks:\n  - name: x\n   image: broken\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line 4"):
        specs.render_spec(t, {})


def test_rewardbench_template_is_valid():
    ctx = {"runs": _runs(["a", "b"]), "store": "/s", "source": "/", "clusters": "ai2/x"}
    data, _ = specs.validate_spec(specs.render_spec(RB_TEMPLATE, ctx))
    assert [t["datasets"][0]["source"]["beaker"] for t in data["tasks"]] == ["run-0", "run-1"]
    assert data["tasks"][0]["constraints"] == {"cluster": ["ai2/x"]}
    assert data["tasks"][0]["command"][:2] == ["rmeval", "evaluate"]


@pytest.mark.parametrize("name", ["helpsteer2", "multipref", "alpacafarm", "chatarena"])
def test_presets_render_valid_specs(name):
    values = specs.load_preset(name)
    assert specs.preset_path(name) == specs.preset_path(f"{name}-counts")
    assert {"prefix", "experiment_prefix", "image", "clusters", "priority", "model_size"} <= set(
        values
    )
    assert "bucket" not in values and "workspace" not in values
    ctx = {**values, "runs": _runs(["a"]), "store": "gs://s", "source": "gs://b/p"}
    data, _ = specs.validate_spec(specs.render_spec(TEMPLATE, ctx))
    task = data["tasks"][0]
    assert task["constraints"]["cluster"] == values["clusters"]
    assert task["image"]["docker"] == values["image"]
    args = task["arguments"]
    assert args[args.index("--model-size") + 1] == values["model_size"]


def test_unknown_preset_and_preset_with_bucket(tmp_path):
    with pytest.raises(SpecError, match=r"unknown preset 'nope'; known presets: .*helpsteer2"):
        specs.load_preset("nope")
    bad = tmp_path / "p.yml"
    bad.write_text("bucket: x\n")
    with pytest.raises(SpecError, match="must not set 'bucket'"):
        specs.load_preset(bad)


def test_parse_set():
    assert specs.parse_set(["gpus=2", "clusters=[a, b]", "name=x: y", "e="]) == {
        "gpus": 2,
        "clusters": ["a", "b"],
        "name": "x: y",
        "e": "",
    }
    with pytest.raises(SpecError, match="NAME=VALUE"):
        specs.parse_set(["novalue"])


# --------------------------------------------------------------------------- spec loader

_YAML_CASES = [
    "",
    "---\n...\n",
    "a: 1\n---\nb: [1, {c: d}]\n",
    "x: &a 1\ny: *a\n",
    "a: !!str 1\n",
    "<<: {a: 1}\nb: 2\n",
    "- null\n- ~\n- yes\n- 0o17\n- 0x1f\n- 1e3\n- .inf\n- 2020-01-01\n- '2'\n- !!binary aGk=\n",
    "k: |\n  literal\n  block\nf: >\n  folded\n  text\n",
    "? a\n: explicit key\n",
    'q: "esc \\x41 \\u2028 \\N \\0"\nplain: a b # comment\n',
]


def _spec_load_all(text: str) -> list:
    return list(yaml.load_all(text, Loader=specs._spec_loader()))


@pytest.mark.parametrize("text", _YAML_CASES)
def test_spec_loader_matches_pyyaml(text):
    assert _spec_load_all(text) == list(yaml.safe_load_all(text))


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
        max_leaves=12,
    ),
    st.sampled_from([None, True, False]),
)
def test_spec_loader_matches_pyyaml_on_dumped_data(value, flow):
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    assert _spec_load_all(text) == list(yaml.safe_load_all(text))


def test_duplicate_key_is_an_error():
    with pytest.raises(SpecError, match="duplicate key 'a' at line 2"):
        specs.parse_spec("a: 1\na: 2\n")


def test_duplicate_key_in_a_nested_mapping_is_an_error():
    with pytest.raises(SpecError, match="duplicate key 'name' at line 3"):
        specs.parse_spec("tasks:\n- name: a\n  name: b\n")
    with pytest.raises(SpecError, match="duplicate key 'k' at line 1"):
        specs.parse_spec("a: {k: 1, k: 2}\n")
