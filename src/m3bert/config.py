"""Dataclass configs from dicts/YAML with dotted overrides; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from m3bert.errors import ConfigError

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
            value = from_dict(ftype, value, where=f"{where}.{name}")
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


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of nested dict ``data`` with dotted overrides applied.

    Keys must already exist (so a typo is an error, not a silent new setting).
    """
    import copy

    out = copy.deepcopy(data)
    for text in overrides or []:
        parts, value = parse_override(text)
        node = out
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"override {text!r}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {text!r}: unknown key {'.'.join(parts)!r}")
        node[parts[-1]] = value
    return out
