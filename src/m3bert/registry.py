"""One mechanism for the named registries (feature sets, masking policies, schedules, objectives)."""

from __future__ import annotations

from typing import Callable, TypeVar

from m3bert.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A ``name -> object`` mapping whose ``register(name)`` decorator refuses duplicate names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # what is registered, for error messages ("masking policy", ...)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            return obj

        return deco
