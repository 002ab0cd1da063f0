"""The one config mechanism: dataclasses from dicts/YAML with dotted overrides; unknown keys are errors.

``load_config(PretrainConfig, "configs/m2bert-small.yaml", ["optim.lr=1e-4"])`` is what every command
and the demo use: defaults <- YAML file <- overrides. Overrides are CLI strings ``"a.b=VALUE"`` (the
value parsed as YAML) or, from Python, a mapping ``{"a.b": value}`` (values used as given, never
written to a string and parsed back).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from m3bert.core.errors import ConfigError

T = TypeVar("T")


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, items: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a valid range, checked by :func:`from_dict` for every loaded config.

    ``items=True`` applies the range to each element of a list/tuple field (Adam's betas).
    """
    meta = {"range": (ge, gt, le, lt), "items": items}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Every value is checked against the field's type hint (``int`` refuses ``2.7``, ``"abc"`` and
    ``True``; ``float`` must be finite; lists, tuples, unions and ``Literal`` are followed) and
    against its :func:`bounded` range, so a wrong setting is one ``ConfigError`` naming the key
    path, the value and what was expected, never a traceback from deep inside a trainer.
    Unknown keys and wrong nesting are errors too.
    """
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__} {data!r}")
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        ftype = hints.get(name)
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            # a partial section is merged over the field's own default (which may differ from the
            # class defaults, e.g. enrich's OptimConfig(lr=1e-3)), not over the bare class
            value = from_dict(ftype, {**_field_default(fields[name]), **value}, where=key)
        elif dataclasses.is_dataclass(ftype) and not isinstance(value, ftype):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        elif ftype is not None:
            value = check_value(value, ftype, where=key)
            _check_range(value, fields[name], where=key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ comparing what no hint could describe
        raise ConfigError(f"{where}: {exc}") from None


def check_value(value: Any, hint: Any, *, where: str) -> Any:
    """``value`` checked (and losslessly converted) against type ``hint``; ``ConfigError`` if it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, where=where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            items = [check_value(v, a, where=f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        elif args:
            items = [check_value(v, args[0], where=f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            items = list(value)
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(hint) else "")


def _check_range(value: Any, f: dataclasses.Field, *, where: str) -> None:
    spec = f.metadata.get("range") if f.metadata else None
    if spec is None or value is None:
        return
    ge, gt, le, lt = spec
    values = list(enumerate(value)) if f.metadata.get("items") else [(None, value)]
    for i, v in values:
        ok = ((ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le)
              and (lt is None or v < lt))
        if not ok:
            lo = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else "(-inf")
            hi = f"{le}]" if le is not None else (f"{lt})" if lt is not None else "inf)")
            at = where if i is None else f"{where}[{i}]"
            raise ConfigError(f"{at}={v!r}; expected a value in {lo}, {hi}")


def _field_default(f: dataclasses.Field) -> dict[str, Any]:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return {}
    return to_dict(default) if dataclasses.is_dataclass(default) else {}


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any, *, what: str | None = None) -> None:
    """Set ``data["a"]["b"] = value`` for ``key="a.b"`` in place; the key must already exist."""
    parts = key if isinstance(key, list) else [p for p in key.split(".") if p]
    what = what or f"override {'.'.join(parts)!r}"
    if not parts:
        raise ConfigError(f"{what}: empty key")
    node = data
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"{what}: unknown key {'.'.join(parts[: i + 1])!r}")
        node = node[p]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"{what}: unknown key {'.'.join(parts)!r}")
    node[parts[-1]] = value


Overrides = Sequence[str] | Mapping[str, Any] | None


def apply_overrides(data: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Return a copy of nested dict ``data`` with dotted overrides applied.

    ``overrides``: CLI strings ``"a.b=VALUE"`` or a mapping ``{"a.b": value}``. Keys must already
    exist (so a typo is an error, not a silent new setting).
    """
    out = copy.deepcopy(data)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(out, str(key), value)
        return out
    for text in overrides or []:
        parts, value = parse_override(text)
        set_dotted(out, parts, value, what=f"override {text!r}")
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Overrides = None) -> T:
    """Defaults of dataclass ``cls`` <- YAML file ``path`` <- dotted ``overrides`` -> a validated ``cls``."""
    where = str(path) if path is not None else cls.__name__
    data = load_yaml(path) if path is not None else {}
    full = to_dict(from_dict(cls, data, where=where))  # fills defaults, refuses unknown keys
    return from_dict(cls, apply_overrides(full, overrides), where=where)
