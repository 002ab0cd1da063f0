"""Task sampling for multi-task enrichment: which training samples an epoch draws, in which order.

* ``proportional``: a plain shuffled epoch over the distinct training samples (large datasets
  dominate, as the M3BERT paper observed);
* ``uniform``: each draw first picks a task uniformly, then the next sample of that task's pool;
* ``temperature:T``: the task is picked with probability ~ n_t^(1/T) (T=1 is proportional over
  tasks, T -> inf uniform);
* ``algorithm1``: Kim et al. (2020)'s Algorithm 1: every *batch* (iteration) picks one learning
  source uniformly at random and is filled from that source's samples only, so each step trains
  one source (:func:`epoch_batches`); the trainer makes an epoch ``L = l x m`` steps, ``l`` the
  steps one pass over the training samples takes, ``m`` the number of sources.

Everything here is pure: an epoch's draws are a function of (seed, epoch), so a resumed run
replays exactly the order the interrupted one would have seen.
"""

from __future__ import annotations

import math

import numpy as np

from m3bert.core.errors import ConfigError, DataError


def parse_sampling(spec: str) -> tuple[str, float]:
    """``"proportional"`` / ``"uniform"`` / ``"temperature:T"`` / ``"algorithm1"`` -> (scheme, T)."""
    name, _, arg = str(spec).partition(":")
    if name in ("proportional", "uniform", "algorithm1") and not arg:
        return name, 1.0
    if name == "temperature":
        try:
            t = float(arg)
        except ValueError:
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise ConfigError(f"sampling={spec!r}: temperature must be a positive number, e.g. 'temperature:2'")
        return name, t
    raise ConfigError(f"sampling={spec!r}; expected 'proportional', 'uniform', 'temperature:T' or 'algorithm1'")


def sampling_probs(sizes: dict[str, int], spec: str) -> dict[str, float]:
    """Probability of drawing each task: ~ n_t (proportional), 1/K (uniform), ~ n_t^(1/T) (temperature)."""
    scheme, t = parse_sampling(spec)
    if not sizes or any(int(n) <= 0 for n in sizes.values()):
        raise DataError(f"task sampling needs every task to have training samples, got sizes {sizes}")
    if scheme in ("uniform", "algorithm1"):
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
    if scheme == "algorithm1":
        raise ConfigError("sampling 'algorithm1' draws whole batches: use epoch_batches")
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


def epoch_batches(pools: dict[str, np.ndarray], n_batches: int, batch_size: int, *, seed: int,
                  epoch: int) -> tuple[np.ndarray, list[str]]:
    """Algorithm 1 (Kim et al. 2020): ``(draws (n_batches * batch_size,), source of each batch)``.

    Each batch picks a source uniformly at random, then takes the next ``batch_size`` samples of
    that source's pool from a stream of fresh permutations (a source is cycled before any sample
    repeats). A pure function of (seed, epoch), so a resumed run replays the same batches.
    """
    names = sorted(pools)
    if not names or any(pools[k].size == 0 for k in names):
        raise DataError(f"algorithm1 needs training samples for every source, got sizes {({k: int(pools[k].size) for k in names})}")
    rng = np.random.default_rng([int(seed), int(epoch), 11])
    task_of = rng.integers(0, len(names), size=int(n_batches))
    out = np.empty(int(n_batches) * int(batch_size), dtype=np.int64)
    for i, name in enumerate(names):
        which = np.nonzero(task_of == i)[0]
        if which.size == 0:
            continue
        pool = pools[name]
        need = which.size * int(batch_size)
        reps = -(-need // pool.size)
        stream = np.concatenate([pool[rng.permutation(pool.size)] for _ in range(reps)])[:need]
        for j, b in enumerate(which):
            out[b * batch_size:(b + 1) * batch_size] = stream[j * batch_size:(j + 1) * batch_size]
    return out, [names[i] for i in task_of]
