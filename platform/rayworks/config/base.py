"""Strict config models and the one YAML loader every config goes through.

Every config (cluster spec, prep/train/serve/generate/pipeline job) is a pydantic
model with ``extra="forbid"``. Loading goes through :func:`load_yaml_model`, which
turns YAML syntax errors and validation errors into a :class:`ConfigError` naming
the file, the line, the field path and the offending value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rayworks.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _key_lines(text: str) -> dict[tuple, int]:
    """Maps each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines[path + (i,)] = value.start_mark.line + 1
                walk(value, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def format_validation_error(exc: ValidationError, source: str, key_lines: dict | None = None) -> str:
    """One line per problem: ``source:line: field.path: message (got value)``."""
    parts = []
    for err in exc.errors():
        # pydantic puts union tags into loc (e.g. 'prep'); drop those that are not keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = None
        if key_lines:
            for n in range(len(loc), 0, -1):
                if loc[:n] in key_lines:
                    line = key_lines[loc[:n]]
                    break
        where = f"{source}:{line}" if line else source
        field = ".".join(str(p) for p in loc) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `rayworks schema` for the allowed keys)"
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or err["type"] == "missing" else f" (got {value!r})"
        parts.append(f"{where}: {field}: {msg}{shown}")
    return "; ".join(parts)


def set_override(data: dict, dotted: str) -> None:
    """Applies one ``key.sub=value`` override in place; the value is parsed as YAML."""
    if "=" not in dotted:
        raise ConfigError(f"--set {dotted!r}: expected KEY.SUB=VALUE, e.g. --set run.num_steps=20")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted!r}: {p!r} is not a mapping, cannot set {key!r}")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> tuple[dict, str]:
    """Reads a YAML mapping, raising ConfigError with the line of a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file (give the path of a YAML config)")
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data, text


def validate_model(model: type[M], data: dict, source: str, text: str | None = None) -> M:
    """Validates ``data`` into ``model`` or raises ConfigError with lines and fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, _key_lines(text) if text else None)) from None


def load_yaml_model(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Loads a YAML file into a strict model, applying ``--set`` overrides first."""
    data, text = read_yaml(path)
    for o in overrides or []:
        set_override(data, o)
    return validate_model(model, data, str(path), text)


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys, no spaces) used for hashing configs and manifests."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of a config or mapping."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
