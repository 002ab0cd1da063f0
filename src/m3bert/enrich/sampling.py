"""Task sampling for multi-task enrichment: which training samples an epoch draws, in which order.

* ``proportional``: a plain shuffled epoch over the distinct training samples (large datasets
  dominate, as the M3BERT paper observed);
* ``uniform``: each draw first picks a task uniformly, then the next sample of that task's pool;
* ``temperature:T``: the task is picked with probability ~ n_t^(1/T) (T=1 is proportional over
  tasks, T -> inf uniform).

Everything here is pure: an epoch's draws are a function of (seed, epoch), so a resumed run
replays exactly the order the interrupted one would have seen.
"""

from __future__ import annotations

import math

import numpy as np

from m3bert.core.errors import ConfigError, DataError


def parse_sampling(spec: str) -> tuple[str, float]:
    """``"proportional"`` / ``"uniform"`` / ``"temperature:T"`` -> (scheme, T)."""
    name, _, arg = str(spec).partition(":")
    if name in ("proportional", "uniform") and not arg:
        return name, 1.0
    if name == "temperature":
        try:
            t = float(arg)
        except ValueError:
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise ConfigError(f"sampling={spec!r}: temperature must be a positive number, e.g. 'temperature:2'")
        return name, t
    raise ConfigError(f"sampling={spec!r}; expected 'proportional', 'uniform' or 'temperature:T'")


def sampling_probs(sizes: dict[str, int], spec: str) -> dict[str, float]:
    """Probability of drawing each task: ~ n_t (proportional), 1/K (uniform), ~ n_t^(1/T) (temperature)."""
    scheme, t = parse_sampling(spec)
    if not sizes or any(int(n) <= 0 for n in sizes.values()):
        raise DataError(f"task sampling needs every task to have training samples, got sizes {sizes}")
    if scheme == "uniform":
        raw = {k: 1.0 for k in sizes}
    else:
        exponent = 1.0 if scheme == "proportional" else 1.0 / t
        raw = {k: float(n) ** exponent for k, n in sizes.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def epoch_draws(
    pools: dict[str, np.ndarray], n_samples: int, spec: str, *, n_draws: int, seed: int, epoch: int
) -> np.ndarray:
    """Sample indices of one epoch ``(n_draws,)`` — a pure function of (seed, epoch), so resume is exact.

    ``proportional`` is a plain shuffled epoch over the ``n_samples`` distinct training samples
    (every sample once; a task's share is its share of the labels). ``uniform`` and
    ``temperature`` first draw a task per position, then walk that task's pool in a fresh
    permutation each pass (a small task is cycled, a large one subsampled without repeats).
    """
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    scheme, _ = parse_sampling(spec)
    if scheme == "proportional":
        order = rng.permutation(n_samples)
        reps = -(-n_draws // n_samples)
        return np.concatenate([order] + [rng.permutation(n_samples) for _ in range(reps - 1)])[:n_draws]
    names = sorted(pools)
    probs = sampling_probs({k: len(pools[k]) for k in names}, spec)
    task_of = rng.choice(len(names), size=n_draws, p=[probs[k] for k in names])
    out = np.empty(n_draws, dtype=np.int64)
    for i, name in enumerate(names):
        pos = np.nonzero(task_of == i)[0]
        if pos.size == 0:
            continue
        pool = pools[name]
        reps = -(-pos.size // pool.size)
        stream = np.concatenate([pool[rng.permutation(pool.size)] for _ in range(reps)])
        out[pos] = stream[: pos.size]
    return out


def label_shares(draws: np.ndarray, has_label: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of all labels seen in an epoch that belong to each task (what the loss sees)."""
    counts = {k: float(v[draws].sum()) for k, v in has_label.items()}
    total = sum(counts.values()) or 1.0
    return {k: c / total for k, c in counts.items()}
