"""Cepstral mean and variance normalisation (CMVN): pure functions and a mergeable accumulator.

Scopes (``cmvn=`` of a feature set):

* **clip** (default): every example is normalised with its own per-channel mean and standard
  deviation over frames. Needs no corpus statistics, so a model can embed any single file; the
  price is that absolute level differences between clips are removed.
* **corpus**: one per-channel mean/std over a whole feature store, computed once from the stored
  raw frames with :class:`CmvnAccumulator` (float64 sums, exactly mergeable across shards and
  stores) and saved with the store and the model.
* **seed**: what the seed authors' code actually computes. It calls
  ``speechpy.processing.cmvn(features, variance_normalization=False)`` on the ``(channels, frames)``
  array, and speechpy normalises along axis 0, i.e. across *channels*: each frame has the mean of
  its own channels subtracted, without variance scaling. That is per-frame mean removal, not
  per-channel CMVN (:func:`cmvn_seed` reproduces it exactly).

The standard deviation is floored at ``eps * max(1, |mean|)`` before dividing. float32 features
carry rounding noise of ~1e-7 of their magnitude (the first MFCC of digital silence is -1131 with
frame-to-frame jitter of ~4e-4), so a channel that is constant up to rounding must not be blown up
to unit variance; the relative floor maps such channels (silence, a held tone) to ~0 and keeps
them finite, and it is smooth (no switch between "constant" and "varying" channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3bert.core.errors import DataError


def std_floor(mean: np.ndarray, std: np.ndarray, *, eps: float) -> np.ndarray:
    """``max(std, eps * max(1, |mean|))`` per channel (see the module docstring)."""
    return np.maximum(std, eps * np.maximum(1.0, np.abs(mean)))


def cmvn_clip(frames: np.ndarray, *, eps: float = 1e-3) -> np.ndarray:
    """Per-clip CMVN of ``(n_frames, n_channels)`` -> same shape, float32.

    Sums are accumulated in float64 (long clips keep their precision) while the frames stay float32:
    no float64 copy of the clip is made, which made this 3-5x faster (perf/store.py). The frames are
    centred on the float32-rounded mean and the residual mean of the centred frames is removed
    exactly (``var = E[d^2] - E[d]^2``), so the result matches a float64 computation to float32
    rounding (max abs difference ~5e-7 on unit-variance output, tests/test_features.py).
    """
    x = np.asarray(frames, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64)
    d = x - mean.astype(np.float32)
    resid = d.mean(axis=0, dtype=np.float64)
    var = np.square(d).mean(axis=0, dtype=np.float64) - resid * resid
    std = np.sqrt(np.maximum(var, 0.0))
    d -= resid.astype(np.float32)
    d *= (1.0 / std_floor(mean, std, eps=eps)).astype(np.float32)
    return d


def cmvn_seed(frames: np.ndarray) -> np.ndarray:
    """The seed code's normalisation of ``(n_frames, n_channels)`` -> same shape, float32.

    speechpy's ``cmvn(vec, variance_normalization=False)`` is ``vec - np.mean(vec, axis=0)``; the
    seed code passes ``vec`` as the ``(channels, frames)`` stack of its feature groups, so each
    frame loses the mean over its channels. Computed on a C-contiguous float32 ``(channels, frames)``
    copy, the layout the seed code's ``np.vstack`` produces, so the summation order, and hence
    every bit, is the same.
    """
    vec = np.ascontiguousarray(np.asarray(frames, dtype=np.float32).T)  # (channels, frames)
    return np.ascontiguousarray((vec - np.mean(vec, axis=0)).T, dtype=np.float32)


def cmvn_apply(frames: np.ndarray, *, mean: np.ndarray, std: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Normalise ``(n_frames, n_channels)`` with given per-channel ``mean``/``std`` ``(n_channels,)``."""
    x = np.asarray(frames, dtype=np.float32)
    if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
        raise DataError(f"CMVN statistics have shapes {mean.shape}/{std.shape}; expected ({x.shape[-1]},) "
                        f"to match frames of shape {x.shape}")
    scale = std_floor(mean.astype(np.float64), std.astype(np.float64), eps=eps).astype(np.float32)
    return ((x - mean.astype(np.float32)) / scale).astype(np.float32)


@dataclass
class CmvnAccumulator:
    """Running per-channel count, sum and sum of squares (float64); ``merge`` is exact."""

    n_channels: int  # channels per frame
    count: int = 0  # frames seen
    total: np.ndarray = field(default=None)  # type: ignore[assignment]  # (n_channels,) float64 sum
    total_sq: np.ndarray = field(default=None)  # type: ignore[assignment]  # (n_channels,) float64 sum of squares

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.n_channels, dtype=np.float64)
        if self.total_sq is None:
            self.total_sq = np.zeros(self.n_channels, dtype=np.float64)

    def update(self, frames: np.ndarray) -> None:
        """Add ``(n_frames, n_channels)`` frames."""
        x = np.asarray(frames, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise DataError(f"CMVN accumulator expects (n_frames, {self.n_channels}), got {x.shape}")
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.total_sq += np.einsum("tc,tc->c", x, x)

    def merge(self, other: "CmvnAccumulator") -> "CmvnAccumulator":
        if other.n_channels != self.n_channels:
            raise DataError(f"cannot merge CMVN statistics of {other.n_channels} and {self.n_channels} channels")
        return CmvnAccumulator(self.n_channels, self.count + other.count, self.total + other.total,
                               self.total_sq + other.total_sq)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(mean, std)`` as float32 ``(n_channels,)`` (population std)."""
        if self.count == 0:
            raise DataError("no frames were accumulated; cannot compute CMVN statistics")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"count": int(self.count), "sum": self.total.tolist(), "sum_sq": self.total_sq.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CmvnAccumulator":
        total = np.asarray(data["sum"], dtype=np.float64)
        return cls(int(total.shape[0]), int(data["count"]), total, np.asarray(data["sum_sq"], dtype=np.float64))
