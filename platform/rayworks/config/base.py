"""Strict config models and the one YAML loader every config goes through.

Every config (cluster spec, prep/train/serve/generate/pipeline job) is a pydantic
model with ``extra="forbid"``. Loading goes through :func:`read_yaml` /
:func:`load_yaml_model`, which turn every kind of bad input into one-line
:class:`ConfigError` naming the file, the line, the field path and the value:
YAML syntax errors, invalid UTF-8, duplicate keys, ``.inf``/``.nan``, YAML 1.1
octal integers (``010`` would read as 8: refused, not guessed), YAML 1.1 booleans other than
true/false (``no`` would read as False, the "Norway problem": refused), and inputs whose
nesting, alias count or alias-expanded size exceed fixed bounds (so an alias bomb
costs a few milliseconds, not gigabytes). The loader never builds Python objects
for a document that fails these checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rayworks.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# Bounds on one YAML input. Real configs are a few KB, a few levels deep and use no
# or few aliases; these leave ample room while keeping time and memory per input small.
MAX_BYTES = 1 << 20          # 1 MiB of text
MAX_DEPTH = 64               # nested mappings/sequences
MAX_ALIASES = 100            # alias references (*name)
MAX_NODES = 50_000           # nodes after expanding every alias
MAX_INT_DIGITS = 100         # Python refuses ints past 4300 digits with a ValueError

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_BOOL = "tag:yaml.org,2002:bool"
_YAML12_BOOLS = {"true", "false"}
_OCTAL_OR_BASE60 = re.compile(r"^[-+]?(0[0-7_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)$")


class _Bounded(yaml.SafeLoader):
    """SafeLoader that counts depth and aliases while composing, before any object exists."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self._source, self._depth, self._aliases = source, 0, 0

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"{self._source}:{self.peek_event().start_mark.line + 1}: more than {MAX_ALIASES} "
                                  "YAML alias references (*name); write the values out or use fewer aliases")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"{self._source}:{self.peek_event().start_mark.line + 1}: nested deeper than "
                              f"{MAX_DEPTH} levels; a config is a few levels deep, check the brackets/indentation")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Walks each distinct node once: expanded size, duplicate keys, numbers YAML 1.1 reads by surprise."""
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: the node graph may be deep and shared (aliases)
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
        if sizes[id(node)] > MAX_NODES:
            raise ConfigError(f"{source}: the document expands to more than {MAX_NODES} values through its "
                              "YAML aliases (*name); write the values out instead")
        order.append(node)
    for node in order:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                    continue
                ident = (key.tag, key.value)
                if ident in seen:
                    raise ConfigError(f"{source}:{key.start_mark.line + 1}: duplicate key {key.value!r} (first at line "
                                      f"{seen[ident]}); YAML keeps only the last one silently, so name each key once")
                seen[ident] = key.start_mark.line + 1
        elif isinstance(node, yaml.ScalarNode) and node.tag == _BOOL and node.value.lower() not in _YAML12_BOOLS:
            raise ConfigError(f"{source}:{line}: {node.value!r} is a boolean only in YAML 1.1 (yes/no/on/off "
                              f"read as true/false); write true or false, or quote it ('{node.value}') if you mean "
                              "text")
        elif isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT):
            if _OCTAL_OR_BASE60.match(node.value):
                raise ConfigError(f"{source}:{line}: {node.value!r} is an octal or base-60 number in YAML 1.1 (010 "
                                  "reads as 8, 1:30 as 90); write the decimal number without a leading zero, or "
                                  "quote it if you mean text")
            if node.tag == _INT and len(node.value) > MAX_INT_DIGITS:
                raise ConfigError(f"{source}:{line}: an integer of {len(node.value)} digits; give a smaller number")
            if node.tag == _FLOAT and not _finite(node.value):
                raise ConfigError(f"{source}:{line}: {node.value!r} is not a finite number; give a real number "
                                  "(.inf, .nan and overflowing values are refused)")


def _finite(value: str) -> bool:
    v = value.replace("_", "").lower().lstrip("+-")
    if v in (".inf", ".nan"):
        return False
    try:
        return math.isfinite(float(v))  # 1e999 overflows to inf
    except ValueError:
        return True  # a form float() does not read; the constructor decides


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return ConfigError(f"{source}{line}: malformed YAML: {problem}")


def _compose(text: str, source: str) -> yaml.Node | None:
    """Parses one YAML document to its node graph within the bounds, or raises ConfigError."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters is more than a config may hold ({MAX_BYTES}); "
                          "is this the right file?")
    loader = None
    try:
        loader = _Bounded(text, source)  # the reader already refuses control characters here
        return loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:  # belt and braces: MAX_DEPTH keeps the composer far from the limit
        raise ConfigError(f"{source}: nested too deeply; check the brackets/indentation") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml(text: str, source: str) -> Any:
    """Text -> Python values through the bounded, strict loader (None for an empty document)."""
    node = _compose(text, source)
    if node is None:
        return None
    _check_nodes(node, source)
    loader = _Bounded("", source)
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp like 2024-13-45
        raise ConfigError(f"{source}: malformed YAML value: {str(exc).splitlines()[0][:200]}") from None
    finally:
        loader.dispose()


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on set, numbers are finite."""

    # allow_inf_nan=False also catches "inf"/"1e999" strings that pydantic would coerce to a float.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


def _key_lines(text: str) -> dict[tuple, int]:
    """Maps each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    try:
        root = _compose(text, "<text>")
    except ConfigError:
        return lines
    stack: list[tuple[Any, tuple]] = [(root, ())] if root is not None else []
    while stack and len(lines) < MAX_NODES:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    sub = path + (key.value,)
                    lines.setdefault(sub, key.start_mark.line + 1)
                    stack.append((value, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines.setdefault(path + (i,), value.start_mark.line + 1)
                stack.append((value, path + (i,)))
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
        field = ".".join(_part(p) for p in loc) or "<root>"
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `rayworks schema` for the allowed keys)"
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or err["type"] == "missing" else f" (got {_short(value)})"
        parts.append(f"{where}: {field}: {msg}{shown}")
    return "; ".join(parts)


def _part(p: Any) -> str:
    """A field-path part as written, or quoted when a key holds spaces, dots or control characters."""
    s = str(p)
    return s if s and s.isprintable() and not any(c in s for c in " .") else repr(s)


def _short(value: Any, limit: int = 120) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def set_override(data: dict, dotted: str) -> None:
    """Applies one ``key.sub=value`` override in place; the value is parsed as YAML."""
    if "=" not in dotted:
        raise ConfigError(f"--set {dotted!r}: expected KEY.SUB=VALUE, e.g. --set run.num_steps=20")
    key, raw = dotted.split("=", 1)
    value = parse_yaml(raw, f"--set {_short(dotted, 60)}") if raw.strip() != "" else ""
    node = data
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {_short(dotted, 60)}: empty key part in {key!r}; write KEY.SUB=VALUE")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {_short(dotted, 60)}: {p!r} is not a mapping, cannot set {key!r}")
        node = nxt
    node[parts[-1]] = value


def read_text(path: str | Path) -> str:
    """A config file's text: UTF-8, bounded in size, one-line errors for every way reading fails."""
    try:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: no such file (give the path of a YAML config)")
        if p.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: {p.stat().st_size} bytes is more than a config may hold ({MAX_BYTES}); "
                              "is this the right file?")
        raw = p.read_bytes()
    except (OSError, ValueError) as exc:  # permissions, a NUL in the path, a name too long
        raise ConfigError(f"{_short(str(path), 200)}: cannot read: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None


def read_yaml(path: str | Path) -> tuple[dict, str]:
    """Reads a YAML mapping through the strict loader; returns (data, text)."""
    text = read_text(path)
    data = parse_yaml(text, str(path))
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
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # A cross-field check met a value of a type it did not expect: still the config's fault.
        raise ConfigError(f"{source}: a value has the wrong type ({type(exc).__name__}: "
                          f"{_short(str(exc), 200)}); compare with `rayworks schema`") from None


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


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
