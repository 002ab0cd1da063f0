"""The long-input rules of :mod:`m3bert.windows` applied as frames arrive: bounded memory, same numbers.

A streamed input (:class:`m3bert.features.stream.BlockFeatures`) arrives as blocks of frames whose
total is known only at the end. :class:`WindowStream` cuts them into exactly the windows of
:func:`~m3bert.windows.window_starts` (full-length windows every ``hop`` frames, the last one
aligned to the end) while holding about one window of frames; :func:`seam` is where
:func:`~m3bert.windows.window_owners` switches from one window to the next; :class:`Pooling`
takes each window's owned frames as they come and returns what ``pool_frames(stitch(...))`` (clip
level) or ``stitch(...)`` (frame level) returns for the whole input, bit for bit: the clip mean is
accumulated frame after frame in float64, the order ``pool_frames``'s ``mean`` adds them in.
Clip-level ``meanstd`` (two passes over the frames) and frame level keep the owned frames, whose
size is that of the output.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.windows import POOLS, pool_frames, window_owners

__all__ = ["WindowStream", "seam", "Pooling"]


class WindowStream:
    """``(start, frames)`` of every encoder window of a stream of frame blocks ``(k, C)``, in order.

    The windows are those of ``window_starts(n_frames, window=, hop=)`` (one window of all frames
    when ``n_frames <= window``); ``frames`` is a fresh array. After the iteration ``n_frames``
    holds the total.
    """

    def __init__(self, blocks: Iterable[np.ndarray], *, window: int, hop: int) -> None:
        if window <= 0 or hop <= 0 or hop > window:
            raise ConfigError(f"window={window}, hop={hop}; expected 0 < hop <= window")
        self.blocks, self.window, self.hop = blocks, int(window), int(hop)
        self.n_frames: int | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        W, hop = self.window, self.hop
        buf: np.ndarray | None = None
        base = total = next_start = 0  # frame index of buf[0]; frames received; next regular start
        for block in self.blocks:
            block = np.asarray(block)
            buf = block if buf is None else np.concatenate([buf, block])
            total += block.shape[0]
            # a regular window [s, s + W) is one of window_starts' once s < n - W, i.e. s + W < total
            while next_start + W < total:
                yield next_start, np.array(buf[next_start - base: next_start - base + W])
                next_start += hop
            keep = max(base, min(next_start, total - W))  # the last window starts at n - W >= total - W
            if keep > base:
                buf, base = buf[keep - base:], keep
        if buf is None or total == 0:
            raise DataError("no feature frames to cut into windows")
        self.n_frames = total
        if total <= W:
            yield 0, np.array(buf[:total])
            return
        last = total - W
        while next_start < last:
            yield next_start, np.array(buf[next_start - base: next_start - base + W])
            next_start += hop
        yield last, np.array(buf[last - base: total - base])


def seam(start: int, next_start: int, *, window: int) -> int:
    """First frame that ``window_owners`` gives to the full-length window at ``next_start`` rather
    than to the one at ``start`` (its consecutive predecessor)."""
    d = int(next_start) - int(start)
    owners = window_owners(d + window, [0, d], window=window)
    return int(start) + int(np.count_nonzero(owners == 0))


class Pooling:
    """The output of one input from its windows' owned frames ``(n_sel, m, D)``, added in frame order."""

    def __init__(self, level: str, pool: str) -> None:
        if level == "clip" and pool not in POOLS:
            raise ConfigError(f"pool={pool!r}; expected one of {list(POOLS)}")
        self.level, self.pool = level, pool
        self.sum: np.ndarray | None = None  # clip mean: float64 running sum
        self.parts: list[np.ndarray] = []  # meanstd / frame level: the owned frames
        self.n = 0

    def add(self, frames: np.ndarray) -> None:
        if frames.shape[1] == 0:
            return
        self.n += frames.shape[1]
        if self.level == "clip" and self.pool == "mean":
            x = frames.astype(np.float64)
            if self.sum is not None:  # the running sum first, then each frame in order
                x = np.concatenate([self.sum[:, None], x], axis=1)
            self.sum = np.add.reduce(x, axis=1)
        else:
            self.parts.append(np.array(frames, dtype=np.float32))

    def result(self, n_frames: int) -> np.ndarray:
        if self.n != n_frames:
            raise DataError(f"stitching covered {self.n} of {n_frames} frames (internal error)")
        if self.level == "clip" and self.pool == "mean":
            return (self.sum / n_frames).astype(np.float32)
        frames = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts, axis=1)
        self.parts = []
        return pool_frames(frames, self.pool) if self.level == "clip" else frames
