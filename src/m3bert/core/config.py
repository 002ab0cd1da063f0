"""The one config mechanism: dataclasses from dicts/YAML with dotted overrides; unknown keys are errors.

``load_config(PretrainConfig, "configs/m2bert-small.yaml", ["optim.lr=1e-4"])`` is what every command
and the demo use: defaults <- YAML file <- overrides. Overrides are CLI strings ``"a.b=VALUE"`` (the
value parsed as YAML) or, from Python, a mapping ``{"a.b": value}`` (values used as given, never
written to a string and parsed back).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from m3bert.core.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Raises ``ConfigError`` naming the key path for unknown keys or wrong nesting.
    """
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
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            # a partial section is merged over the field's own default (which may differ from the
            # class defaults, e.g. enrich's OptimConfig(lr=1e-3)), not over the bare class
            value = from_dict(ftype, {**_field_default(fields[name]), **value}, where=f"{where}.{name}")
        elif dataclasses.is_dataclass(ftype) and not isinstance(value, ftype):
            raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
        elif ftype is float and isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-4" (no dot) as a string; accept it as the number it is
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}.{name}: expected a number, got {value!r}") from None
        kwargs[name] = value
    return cls(**kwargs)


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
    with open(path, "r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
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
    return parts, yaml.safe_load(raw)


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
