"""One mechanism for every named registry (feature sets, models, tasks, metrics, probes, baselines, ...)."""

from __future__ import annotations

from typing import Callable, TypeVar

from m3bert.core.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A ``name -> object`` mapping whose ``register(name)`` decorator refuses duplicate names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # what is registered, for error messages ("masking policy", ...)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a second object under the same name is a ``ConfigError``."""
        if name in self:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self[name] = obj
        return obj

    def lookup(self, name: str) -> object:
        """The object registered as ``name``; an unknown name is a ``ConfigError`` listing the known ones."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}") from None
