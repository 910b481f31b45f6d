"""Dataclass configs from an optional YAML file plus `key=value` overrides (the Hydra habit).

Values are coerced to each field's declared type; unknown keys and values of the wrong type fail
with one line naming the key. The resolved config is written with every run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert `value` (from YAML or a command line) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{name}: cannot parse {value!r}")
    if origin in (list, tuple):
        items = (
            value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        )
        inner = args[0] if args else str
        out = [_coerce(name, v, inner) for v in items]
        return tuple(out) if origin is tuple else out
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int:
                number = float(value) if isinstance(value, str) else value
                if isinstance(number, bool) or float(number) != int(number):
                    raise ValueError
                return int(number)
            return annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name}: expected {annotation.__name__}, got {value!r}") from None
    return value


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; a pair without `=` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in YAML file `path` (empty file: {}); fails with one line naming the file and
    `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of keys, not {type(loaded).__name__}")
    return loaded


def build_config(
    cls: type[T], yaml_path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> T:
    """An instance of dataclass `cls` from YAML defaults overridden by `key=value` pairs."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml_mapping(yaml_path, "config file"))
    values.update(parse_overrides(overrides) if isinstance(overrides, list) else overrides or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"unknown config key {unknown[0]!r} for {cls.__name__}; known: {', '.join(sorted(fields))}"
        )
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def config_dict(cfg: object) -> dict:
    """A plain dict of a dataclass config, for JSON/YAML records."""
    return dataclasses.asdict(cfg)


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of dataclass `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
        for stmt, after in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def describe_fields(cls: type) -> list[tuple[str, str, Any, str]]:
    """`(key, type, default, meaning)` of every field of dataclass `cls`, in order, taken from
    the source (the docstring under each field; "" when it has none). Fields that are dataclasses
    themselves are walked and their keys listed flat, as `key=value` overrides name them. A
    field without a default has `dataclasses.MISSING`."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.extend(describe_fields(hint))
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append((f.name, _type_name(hint), default, docs.get(f.name, "")))
    return out


def format_fields(cls: type, width: int = 100) -> str:
    """`describe_fields(cls)` as help text: one `key: type = default  meaning` entry per key."""
    entries = []
    for key, kind, default, doc in describe_fields(cls):
        shown = "required" if default is dataclasses.MISSING else repr(default)
        entries.append(
            textwrap.fill(f"{key}: {kind} = {shown}  {doc}".rstrip(), width, initial_indent="  ",
                          subsequent_indent="      ", break_long_words=False,
                          break_on_hyphens=False)
        )  # fmt: skip
    return "\n".join(entries)
