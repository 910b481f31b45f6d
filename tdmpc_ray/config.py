"""Dataclass configs from an optional YAML file plus `key=value` overrides (the Hydra habit).

Values are coerced to each field's declared type; unknown keys and values of the wrong type fail
with one line naming the key. The resolved config is written with every run.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable
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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`; did you mean 'steps'?` (up to three close matches of `name`), or "" when none is
    close: the tail of an error about an unknown name."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


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


def _nested(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def config_keys(cls: type) -> dict[str, tuple[str, ...]]:
    """Every `key=value` key of dataclass `cls` and its path of field names: a field that is a
    dataclass itself contributes its own keys, flat (`d_coef` -> `("loss", "d_coef")`), so
    users name settings the same however the config is composed. Two fields with one key are
    a programming error."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        inner = config_keys(hints[f.name]) if _nested(hints[f.name]) else {f.name: ()}
        for key, path in inner.items():
            if key in keys:
                raise TypeError(f"{cls.__name__}: key {key!r} is defined twice")
            keys[key] = (f.name, *path)
    return keys


def _flatten(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with any nested section (`loss: {d_coef: 0.4}`, as `config_dict(..., flat=False)`
    writes it) spread into flat keys."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if _nested(hints.get(key)) and isinstance(value, dict):
            out.update(_flatten(hints[key], value))
        else:
            out[key] = value
    return out


def _build(cls: type[T], values: dict[str, Any], base: T | None = None) -> T:
    """`cls` from flat `values` over `base` (or the defaults), nested dataclasses built from
    their share of the keys over the outer default (so `TrainConfig`'s own defaults of a
    nested config hold)."""
    hints = typing.get_type_hints(cls)
    keys = config_keys(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if _nested(hints[f.name]):
            inner = {k: v for k, v in values.items() if keys[k][0] == f.name}
            if inner:
                default = getattr(base, f.name) if base is not None else _default(f)
                kwargs[f.name] = _build(hints[f.name], inner, default)
        elif f.name in values:
            kwargs[f.name] = _coerce(f.name, values[f.name], hints[f.name])
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def build_config(
    cls: type[T], yaml_path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> T:
    """An instance of dataclass `cls` from YAML defaults overridden by `key=value` pairs. Keys
    are flat however `cls` nests other configs (see `config_keys`)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_flatten(cls, read_yaml_mapping(yaml_path, "config file")))
    raw = parse_overrides(overrides) if isinstance(overrides, list) else overrides or {}
    values.update(_flatten(cls, dict(raw)))
    known = config_keys(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key {unknown[0]!r} for {cls.__name__}"
            f"{did_you_mean(unknown[0], known)} (--help lists every key)"
        )
    return _build(cls, values)


def config_dict(cfg: object, flat: bool = True) -> dict:
    """A plain dict of a dataclass config, for JSON/YAML records: flat keys (what `build_config`
    reads back), or nested like the dataclasses with `flat=False`."""
    nested = dataclasses.asdict(cfg)
    if not flat:
        return nested
    return {key: _get(nested, path) for key, path in config_keys(type(cfg)).items()}


def _get(values: dict, path: tuple[str, ...]) -> Any:
    for name in path:
        values = values[name]
    return values


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


def describe_fields(cls: type, defaults: object | None = None) -> list[tuple[str, str, Any, str]]:
    """`(key, type, default, meaning)` of every field of dataclass `cls`, in order, taken from
    the source (the docstring under each field; "" when it has none). Fields that are dataclasses
    themselves are walked and their keys listed flat, as `key=value` overrides name them, with
    the defaults of the enclosing field's default instance (`defaults`). A field without a
    default has `dataclasses.MISSING`."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if _nested(hint):
            out.extend(describe_fields(hint, None if default is dataclasses.MISSING else default))
            continue
        out.append((f.name, _type_name(hint), default, docs.get(f.name, "")))
    return out


def format_fields(cls: type, width: int = 100) -> str:
    """`describe_fields(cls)` as help text: one `key: type = default  meaning` entry per key."""
    entries = []
    for key, kind, default, doc in describe_fields(cls):
        shown = "required" if default is dataclasses.MISSING else repr(default)
        entries.append(
            textwrap.fill(
                f"{key}: {kind} = {shown}  {doc}".rstrip(),
                width,
                initial_indent="  ",
                subsequent_indent="      ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(entries)
