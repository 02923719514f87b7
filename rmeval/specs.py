"""Jinja templates -> Beaker experiment specs, rendered safely and validated strictly.

Rendering
    Templates are Jinja2 with ``StrictUndefined``: a variable the template uses but the
    caller did not give is an error naming the template file and line. Every value that
    reaches the output is escaped for YAML: the ``yaml`` filter (alias ``y``) writes a
    value as a YAML flow scalar (strings double-quoted, with ``:`` ``#`` ``{{`` quotes and
    newlines escaped), and the environment's ``finalize`` hook applies the same escaping
    to any ``{{ expression }}`` left unfiltered. A hostile checkpoint name therefore can
    only ever become one string value; it cannot add keys, tasks or documents. Literal
    template text is not touched. Build composite strings inside the expression
    (``{{ prefix ~ "-" ~ run }}``), not by juxtaposing two expressions.

Validation
    beaker-py's :class:`BeakerExperimentSpec` must load the spec (it rejects a bad version,
    a missing image or context, an unknown priority), and :func:`check_spec` applies our
    stricter schema: unknown keys, wrong types (``gpuCount: "two"``), missing required
    fields, duplicate task names, an image that names both or neither of beaker/docker.
    Parsing (PyYAML's safe loader, libyaml's parser where available) refuses a key
    repeated in one mapping. :class:`ValidSpec` holds a spec parsed and validated once.

Presets
    ``rmeval/templates/presets/<name>.yml`` hold per-dataset values (prefix, experiment prefix,
    image, clusters, priority, model size). Bucket and workspace are never defaulted.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmeval.errors import SpecError

log = logging.getLogger(__name__)

# Package data: installed with rmeval, so plan and launch work from any install.
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PRESETS_DIR = TEMPLATES_DIR / "presets"
DEFAULT_TEMPLATE = TEMPLATES_DIR / "beaker" / "convert-and-eval.yml.j2"
PRIORITIES = ("low", "normal", "high", "urgent", "immediate")


# --------------------------------------------------------------------------- YAML escaping


class YamlText(str):
    """Text already escaped for YAML (the output of the ``yaml`` filter)."""


def yaml_scalar(value: Any) -> str:
    """``value`` as one YAML flow node that loads back to exactly ``value``.

    Strings are always double-quoted with every non-printable or structural character
    escaped; numbers and booleans are plain; lists and mappings are flow collections."""
    if isinstance(value, YamlText):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return _double_quoted(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_double_quoted(str(k))}: {yaml_scalar(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, os.PathLike):
        return _double_quoted(os.fspath(value))
    raise SpecError(f"cannot write a {type(value).__name__} value into a YAML template: {value!r}")


_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\x00": "\\0",
    "\x85": "\\N",
    "\u2028": "\\L",
    "\u2029": "\\P",
}


def _double_quoted(text: str) -> str:
    out = []
    for ch in text:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}")
        elif ch == "\ufeff":
            out.append("\\ufeff")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _yaml_filter(value: Any) -> YamlText:
    import jinja2

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError naming the variable
    return YamlText(yaml_scalar(value))


# --------------------------------------------------------------------------- rendering


def _environment(search_dirs: list[str]):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_dirs),
        undefined=jinja2.StrictUndefined,
        finalize=_yaml_filter,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yaml"] = _yaml_filter
    env.filters["y"] = _yaml_filter
    return env


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The line of ``filename`` at which a render-time error happened (Jinja rewrites
    tracebacks so that template frames carry the template's own file and line)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_template(template: str | os.PathLike, context: Mapping[str, Any]) -> str:
    """Render ``template`` (a file) with ``context``; errors name the template file and line."""
    import jinja2

    path = Path(template).resolve()
    if not path.is_file():
        raise SpecError(f"{template}: template not found (pass --template PATH to a .yml.j2 file)")
    env = _environment([str(path.parent)])
    try:
        tmpl = env.get_template(path.name)
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or str(path)
        raise SpecError(f"{where}:{exc.lineno}: template syntax error: {exc.message}") from exc
    try:
        return tmpl.render(**context)
    except jinja2.UndefinedError as exc:
        line = _template_line(exc, str(path))
        raise SpecError(
            f"{path}:{line}: {exc.message} (give it with --set NAME=VALUE, a preset, or a default in the template)"
        ) from exc
    except SpecError as exc:
        line = _template_line(exc, str(path))
        raise SpecError(f"{path}:{line}: {exc}") from exc
    except jinja2.TemplateError as exc:
        line = _template_line(exc, str(path))
        raise SpecError(f"{path}:{line}: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        line = _template_line(exc, str(path))
        raise SpecError(f"{path}:{line}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- presets


def preset_path(name: str | os.PathLike) -> Path:
    """A preset by name (``helpsteer2`` or ``helpsteer2-counts``) or by path."""
    s = os.fspath(name)
    p = Path(s)
    if p.suffix in (".yml", ".yaml") or "/" in s:
        if not p.is_file():
            raise SpecError(f"{s}: preset file not found")
        return p
    for cand in (PRESETS_DIR / f"{s}.yml", PRESETS_DIR / f"{s}-counts.yml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(x.stem for x in PRESETS_DIR.glob("*.yml"))) or "none"
    raise SpecError(f"unknown preset {s!r}; known presets: {known} (or pass a path to a .yml file)")


def load_preset(name: str | os.PathLike) -> dict[str, Any]:
    """The values of a preset (a flat YAML mapping of template variables)."""
    import yaml

    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(
            f"{path}{line}: preset is not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise SpecError(f"{path}: a preset must be a mapping of variable names to values")
    for forbidden in ("bucket", "workspace"):
        if forbidden in data:
            raise SpecError(f"{path}: presets must not set {forbidden!r}; it is a required input")
    return data


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Field:
    kind: Any  # a type, a tuple of types, a dict schema, a list [schema], or a tuple of literals
    required: bool = False


_STR = _Field(str)
_INT = _Field(int)
_BOOL = _Field(bool)
_DURATION = _Field((str, int))
_STR_LIST = _Field([str])

_SOURCE = {k: _STR for k in ("beaker", "hostPath", "weka", "result", "secret", "volume")}
_SCHEMA: dict[str, _Field] = {
    "version": _Field(("v2", "v2-alpha"), required=True),
    "description": _STR,
    "budget": _STR,
    "groups": _STR_LIST,
    "retry": _Field({"allowedTaskRetries": _INT}),
    "tasks": _Field(
        [
            {
                "name": _STR,
                "image": _Field({"beaker": _STR, "docker": _STR}, required=True),
                "context": _Field(
                    {
                        "cluster": _STR,
                        "priority": _Field(PRIORITIES),
                        "preemptible": _BOOL,
                        "minRuntime": _DURATION,
                        "autoResume": _BOOL,
                    },
                    required=True,
                ),
                "result": _Field({"path": _Field(str, required=True)}),
                "constraints": _Field({"cluster": _STR_LIST, "hostname": _STR_LIST}),
                "command": _STR_LIST,
                "arguments": _STR_LIST,
                "envVars": _Field(
                    [{"name": _Field(str, required=True), "value": _STR, "secret": _STR}]
                ),
                "datasets": _Field(
                    [
                        {
                            "mountPath": _Field(str, required=True),
                            "subPath": _STR,
                            "mode": _STR,
                            "source": _Field(_SOURCE, required=True),
                        }
                    ]
                ),
                "resources": _Field(
                    {
                        "cpuCount": _Field((int, float)),
                        "gpuCount": _INT,
                        "memory": _STR,
                        "sharedMemory": _STR,
                    }
                ),
                "hostNetworking": _BOOL,
                "replicas": _INT,
                "leaderSelection": _BOOL,
                "propagateFailure": _BOOL,
                "propagatePreemption": _BOOL,
                "synchronizedStartTimeout": _DURATION,
                "timeout": _DURATION,
            }
        ],
        required=True,
    ),
}
_EXACTLY_ONE = {
    "image": ("beaker", "docker"),
    "source": tuple(_SOURCE),
}


def _type_name(kind: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "true/false", float: "a number"}
    if isinstance(kind, type):
        return names.get(kind, kind.__name__)
    return " or ".join(names.get(k, k.__name__) for k in kind)


def _check(value: Any, kind: Any, path: str) -> None:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise SpecError(f"{path}: expected a mapping, got {value!r}")
        for key in value:
            if key not in kind:
                allowed = ", ".join(kind)
                raise SpecError(f"{path}.{key}: unknown key (allowed: {allowed})".lstrip("."))
        for key, field in kind.items():
            sub = f"{path}.{key}".lstrip(".")
            if key not in value or value[key] is None:
                if field.required:
                    raise SpecError(f"{sub}: required field is missing")
                continue
            _check(value[key], field.kind, sub)
        leaf = path.rsplit(".", 1)[-1].split("[")[0]
        if leaf in _EXACTLY_ONE:
            given = [k for k in _EXACTLY_ONE[leaf] if value.get(k) is not None]
            if len(given) != 1:
                options = " or ".join(_EXACTLY_ONE[leaf])
                raise SpecError(f"{path}: give exactly one of {options} (got {len(given)})")
        return
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise SpecError(f"{path}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            _check(item, kind[0], f"{path}[{i}]")
        return
    if isinstance(kind, tuple) and kind and all(isinstance(k, str) for k in kind):
        if value not in kind:
            raise SpecError(f"{path}: {value!r} is not one of {', '.join(kind)}")
        return
    types = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise SpecError(f"{path}: expected {_type_name(kind)}, got {value!r}")


def check_spec(spec: Any) -> None:
    """Our strict check of a parsed spec: raises :class:`SpecError` naming the field."""
    _check(spec, _SCHEMA, "")
    tasks = spec["tasks"]
    if not tasks:
        raise SpecError("tasks: the spec has no tasks")
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        env_names = [e["name"] for e in task.get("envVars") or []]
        for e in task.get("envVars") or []:
            if (e.get("value") is None) == (e.get("secret") is None):
                raise SpecError(
                    f"tasks[{i}].envVars.{e['name']}: give exactly one of value or secret"
                )
        dup = {n for n in env_names if env_names.count(n) > 1}
        if dup:
            raise SpecError(f"tasks[{i}].envVars: duplicate variable {sorted(dup)[0]!r}")
        name = task.get("name")
        if name is None:
            continue
        from rmeval.naming import BEAKER_NAME_RE

        if not BEAKER_NAME_RE.match(name):
            raise SpecError(
                f"tasks[{i}].name: {name!r} is not a valid Beaker name (letters, digits, . _ -)"
            )
        if name in seen:
            raise SpecError(f"tasks[{i}].name: duplicate task name {name!r}")
        seen.add(name)


@functools.cache
def _spec_loader() -> type:
    """PyYAML's safe loader (libyaml's parser where PyYAML has it) that refuses a key
    repeated in one mapping (the plain safe loader keeps the last one silently)."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class SpecLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            merges = any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
            mapping = super().construct_mapping(node, deep=deep)
            if not merges and len(mapping) != len(node.value):  # a key came twice
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        line = key_node.start_mark.line + 1
                        raise yaml.YAMLError(f"duplicate key {key!r} at line {line}")
                    seen.add(key)
            return mapping

    return SpecLoader


def parse_spec(text: str, where: str = "spec") -> dict[str, Any]:
    """Parse spec YAML text (one document) into a mapping."""
    import yaml

    try:
        docs = list(yaml.load_all(text, Loader=_spec_loader()))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: rendered spec is not valid YAML{line}: {problem}") from exc
    if len(docs) != 1:
        raise SpecError(f"{where}: expected one YAML document, got {len(docs)}")
    if not isinstance(docs[0], dict):
        raise SpecError(f"{where}: a spec must be a YAML mapping, got {type(docs[0]).__name__}")
    return docs[0]


def validate_spec(spec: str | Mapping[str, Any], where: str = "spec"):
    """Validate a spec (YAML text or mapping) with our strict check and with beaker-py.
    Returns ``(mapping, BeakerExperimentSpec)``."""
    data = parse_spec(spec, where) if isinstance(spec, str) else dict(spec)
    try:
        check_spec(data)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from exc
    beaker_spec = beaker_load(data, where)
    return data, beaker_spec


@dataclass(frozen=True)
class ValidSpec:
    """A spec parsed and validated once: its YAML ``text``, the mapping (``data``) and
    beaker-py's ``BeakerExperimentSpec`` (``beaker``). Whoever holds one need not parse,
    check or load it again."""

    text: str
    data: dict[str, Any]
    beaker: Any

    @classmethod
    def from_text(cls, text: str, where: str = "spec") -> ValidSpec:
        """Parse and validate spec text (see :func:`validate_spec`)."""
        data, beaker_spec = validate_spec(text, where)
        return cls(text, data, beaker_spec)


def beaker_load(data: Mapping[str, Any], where: str = "spec"):
    """Load a spec mapping with beaker-py (its own validation)."""
    try:
        from beaker import BeakerExperimentSpec
    except ImportError as exc:
        raise SpecError(
            f"{where}: beaker-py is not installed; install rmeval[beaker] to validate specs"
        ) from exc
    try:
        with warnings.catch_warnings():
            # 'preemptible' is deprecated upstream but still accepted by the service.
            warnings.simplefilter("ignore", DeprecationWarning)
            return BeakerExperimentSpec.from_json(dict(data))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        msg = re.sub(r"\s+", " ", str(exc)).strip()
        raise SpecError(
            f"{where}: beaker-py rejects the spec: {type(exc).__name__}: {msg}"
        ) from exc


# --------------------------------------------------------------------------- values


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs; VALUE is parsed as YAML (so ``2`` is an int, ``true`` a
    boolean, ``[a, b]`` a list, ``{a: 1}`` a mapping); anything else stays a string."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise SpecError(f"--set {item!r}: expected NAME=VALUE with NAME a template variable")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        # Only explicit flow collections become lists/mappings: "x: y" stays a string.
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):
            value = raw
        if isinstance(value, list) and not raw.lstrip().startswith("["):
            value = raw
        out[name] = value
    return out


def render_spec(
    template: str | os.PathLike, context: Mapping[str, Any], *, validate: bool = True
) -> str:
    """Render a template and validate the result; errors name the template."""
    if validate:
        return render_valid_spec(template, context).text
    return render_template(template, context)


def render_valid_spec(template: str | os.PathLike, context: Mapping[str, Any]) -> ValidSpec:
    """Render a template and validate the result once; errors name the template."""
    return ValidSpec.from_text(render_template(template, context), where=f"{template} (rendered)")
