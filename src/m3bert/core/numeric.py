"""Small numeric helpers shared by trainers and probes (one standardiser for the whole package)."""

from __future__ import annotations

import numpy as np

from m3bert.core.errors import DataError


def standardisation(x: np.ndarray, *, min_std: float = 0.0, rel_min_std: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over the first axis of ``x (n, ...)``, as float32.

    Accumulates in float64. A dimension whose std is not above ``max(min_std, rel_min_std *
    max(1, |mean|))`` gets std 1, so standardising it is a plain shift instead of a division by
    (almost) zero. Probes use ``rel_min_std=1e-8`` (features of any scale); multi-task regression
    targets use ``min_std=1e-6``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"standardisation: expected a non-empty (n, ...) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    floor = np.maximum(min_std, rel_min_std * np.maximum(1.0, np.abs(mean)))
    std = np.where(std > floor, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
