"""Feature-set specifications: named channel groups, configs, and the feature-set registry.

A *feature set* turns a mono waveform into frames ``(n_frames, n_channels)``. Its
:class:`FeatureSpec` names contiguous channel groups (e.g. ``mel`` = channels 52-179 of the
M3BERT set) so masking and analysis address groups by name, never by hard-coded indices.
New feature sets (Wu et al.'s worker targets, Kim et al.'s stereo mel, ...) are added with
:func:`register_feature_set`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from m3bert.core.errors import ConfigError
from m3bert.core.registry import Registry


@dataclass(frozen=True)
class ChannelGroup:
    """A named contiguous range of channels ``[start, stop)``."""

    name: str  # group name, e.g. "mel"
    start: int  # first channel (inclusive)
    stop: int  # last channel (exclusive)

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class FeatureSpec:
    """The channel layout of a feature set: ordered, contiguous, non-overlapping groups."""

    name: str  # registered feature-set name
    groups: tuple[ChannelGroup, ...]  # in channel order

    def __post_init__(self) -> None:
        pos = 0
        for g in self.groups:
            if g.start != pos or g.stop <= g.start:
                raise ConfigError(f"feature spec {self.name!r}: group {g} is not contiguous at {pos}")
            pos = g.stop

    @classmethod
    def from_sizes(cls, name: str, sizes: Sequence[tuple[str, int]]) -> "FeatureSpec":
        groups, pos = [], 0
        for gname, n in sizes:
            groups.append(ChannelGroup(gname, pos, pos + int(n)))
            pos += int(n)
        return cls(name, tuple(groups))

    @property
    def n_channels(self) -> int:
        return self.groups[-1].stop if self.groups else 0

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"feature set {self.name!r} has no channel group {name!r}; groups: {self.group_names}")

    def channels(self, names: str | Iterable[str]) -> np.ndarray:
        """Sorted channel indices of one group name or several (``"mel+cqt"`` also accepted)."""
        if isinstance(names, str):
            names = [n for n in names.replace(",", "+").split("+") if n]
        idx = [np.arange(self.group(n).start, self.group(n).stop) for n in names]
        return np.sort(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": [[g.name, g.start, g.stop] for g in self.groups]}


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

FEATURE_SETS: Registry = Registry("feature set")


def register_feature_set(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a factory ``factory(**config) -> FeatureSet`` under ``name``."""
    return FEATURE_SETS.register(name)


def available_feature_sets() -> list[str]:
    # the built-in sets register when the package m3bert.features (this module's parent) is imported
    return sorted(FEATURE_SETS)


def get_feature_set(name: str, **config: Any) -> Any:
    """Create a registered feature set by name, with config overrides."""
    return FEATURE_SETS.lookup(name)(**config)


def feature_set_from_dict(data: dict[str, Any]) -> Any:
    """Inverse of ``FeatureSet.to_dict()``: ``{"name": ..., "config": {...}, ...}``."""
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"feature-set description must be a mapping with a 'name', got {data!r}")
    feature_set = get_feature_set(data["name"], **dict(data.get("config") or {}))
    stats = data.get("cmvn_stats")
    if stats is not None and hasattr(feature_set, "set_cmvn_stats"):
        feature_set.set_cmvn_stats(np.asarray(stats["mean"], dtype=np.float32), np.asarray(stats["std"], dtype=np.float32))
    return feature_set


def dataclass_replace_checked(cfg: Any, overrides: dict[str, Any], *, where: str) -> Any:
    """``dataclasses.replace`` that names unknown keys in a ``ConfigError``."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; expected some of {sorted(names)}")
    return dataclasses.replace(cfg, **overrides)
