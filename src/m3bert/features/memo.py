"""An exact, bounded memo of input features, shared by several models over the same audio."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np


class FeatureMemo:
    """A bounded LRU of input features by (feature-set config, normalisation, audio bytes).

    Several models over the same audio (a benchmark comparing M3BERT, M2BERT and a random
    encoder; multi-task caching followed by evaluation) compute identical input features; the
    feature extraction is the costliest step for small encoders. Keys hash the waveform's bytes,
    so a hit is exact. Nothing is global: whoever wants sharing creates one and passes it to each
    ``Embedder(feature_memo=...)`` (``run_benchmark`` does; ``m3bert embed`` sees each file once and
    uses none, so its memory stays flat). Thread-safe: an Embedder's producer thread (the
    pipeline of :meth:`m3bert.embed.Embedder.iter_embed`) reads and fills it.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[tuple[str, bool, str], np.ndarray]" = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(feature_set: Any, waveform: np.ndarray, normalize: bool) -> tuple[str, bool, str]:
        digest = hashlib.sha1(np.ascontiguousarray(waveform).view(np.uint8)).hexdigest()
        return (feature_set.config_hash(), bool(normalize), f"{waveform.dtype}:{waveform.shape}:{digest}")

    def get(self, key: tuple[str, bool, str]) -> np.ndarray | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit

    def put(self, key: tuple[str, bool, str], feats: np.ndarray) -> None:
        with self._lock:
            if self.max_bytes <= 0 or feats.nbytes > self.max_bytes or key in self._items:
                return
            feats.setflags(write=False)  # shared between callers: never modified in place
            self._items[key] = feats
            self._used += feats.nbytes
            while self._used > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._used -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0
