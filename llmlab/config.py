"""Typed dataclass configs loaded from YAML and overridden by `key=value` CLI arguments.

Every stage has one dataclass; field names follow HF/TRL (`learning_rate`, `max_length`, ...).
Unknown keys, wrong types and missing files raise `UserError` naming the key or file. A key renamed
to its HF name is still accepted for one release: the dataclass's `RENAMED = {"old": "new"}`
(a ClassVar) sends the old key's value to the new one, with one warning line.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmlab.errors import UserError

T = TypeVar("T")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or a CLI string) to the annotated type `tp`, or raise UserError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"config key '{name}': bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"config key '{name}': {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{name}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(name, v, inner) for v in value] if inner is not Any else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{name}': expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"config key '{name}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{name}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise UserError(f"config key '{name}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{name}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{name}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{name}': expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{name}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (possibly nested) dict with type checks."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    data = _renamed(cls, data, prefix)
    for key, value in _route_flat_keys(hints, fields, data).items():
        if key not in fields:
            raise UserError(f"unknown config key '{prefix}{key}' for {cls.__name__}; "
                            f"known keys: {', '.join(sorted(fields))}")
        default = _default_of(fields[key])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):  # a section: over its defaults
            kwargs[key] = _replace(default, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, hints[key])
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        raise UserError(f"{cls.__name__}: {e}") from None
    # which keys the user gave (YAML or key=value): recipes that derive values (e.g. a preset's
    # batch) fill only the others, so an explicit value equal to the default still wins
    object.__setattr__(cfg, "_explicit", frozenset(kwargs))
    return cfg


def _renamed(cls: type, data: dict, prefix: str) -> dict:
    """Old names of renamed keys (`cls.RENAMED`, old -> new): the value moves to the new key and one
    warning line says so; both names at once is an error."""
    renamed = getattr(cls, "RENAMED", {})
    if not renamed.keys() & data.keys():
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise UserError(f"config keys '{prefix}{old}' and '{prefix}{new}' are one setting: give only "
                                f"{prefix}{new} ({prefix}{old} is its deprecated old name)")
            print(f"llmlab: warning: config key '{prefix}{old}' is deprecated and will be removed in the next "
                  f"release; use '{prefix}{new}'", file=sys.stderr)
            out[new] = out.pop(old)
    return out


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _replace(default: Any, data: dict, prefix: str) -> Any:
    """A nested section given as a mapping: its keys over the field's default instance."""
    cls = type(default)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in names:
            raise UserError(f"unknown config key '{prefix}{k}' for {cls.__name__}; known keys: {', '.join(sorted(names))}")
        kw[k] = _coerce(prefix + k, v, hints[k])
    try:
        return dataclasses.replace(default, **kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"{prefix.rstrip('.')}: {e}") from None


def _route_flat_keys(hints: dict, fields: dict, data: dict) -> dict:
    """Keys of a nested section may also be given flat: `temperature=0.7` means
    `sampling.temperature=0.7` when exactly one section has that key (today's flat keys keep working)."""
    sections = {n: hints[n] for n in fields if dataclasses.is_dataclass(hints[n]) and isinstance(hints[n], type)}
    if not sections:
        return data
    out: dict = {}
    for k, v in data.items():
        owners = [n for n, tp in sections.items() if k not in fields and k in {f.name for f in dataclasses.fields(tp)}]
        if len(owners) == 1:
            sec = out.setdefault(owners[0], {})
            if isinstance(sec, dict):
                sec[k] = v
                continue
        if k in sections and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**v, **out[k]}
        else:
            out[k] = v
    return out


def is_explicit(cfg: Any, key: str) -> bool:
    """True if `key` was set in the YAML file or on the command line."""
    return key in getattr(cfg, "_explicit", ())


def _shipped_config(p: Path) -> Path | None:
    """`configs/x.yaml` named from outside the checkout: the one beside the package (a clone or an
    editable install), so the README's commands also work from another directory."""
    if p.is_absolute() or p.exists() or not p.parts or p.parts[0] != "configs":
        return None
    shipped = Path(__file__).resolve().parents[1] / p
    return shipped if shipped.is_file() else None


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    p = _shipped_config(p) or p
    if p.is_dir():  # `llmlab generate runs/x/model`: a model dir where the optional config YAML goes
        raise UserError(f"{p} is a directory, not a config YAML; to use it as the model, write model={p}")
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {p}: invalid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"config file {p}: cannot read it ({e.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p}: top level must be a mapping of key: value")
    return data


def parse_overrides(items: list[str]) -> dict:
    """`a=1 b.c=x` -> {'a': '1', 'b': {'c': 'x'}}; values stay strings (typed later) unless YAML-ish lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"expected key=value, got '{item}'")
        key, value = item.split("=", 1)
        if not key:
            raise UserError(f"empty key in '{item}'")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value.startswith("[") and value.endswith("]"):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise UserError(f"config key '{key}': bad list {value!r}") from None
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], args: list[str]) -> T:
    """`[config.yaml] [key=value ...]` -> a `cls` instance. YAML first, then overrides."""
    data: dict = {}
    rest = list(args)
    if rest and "=" not in rest[0]:
        data = load_yaml(rest.pop(0))
    # old key names renamed in each source first: a YAML's old name is overridden by the new one on the line
    return from_dict(cls, _merge(_renamed(cls, data, ""), _renamed(cls, parse_overrides(rest), "")))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
