"""Batches of feature-store chunks for pre-training: song-level hold-out, crops, padding.

Every random choice here is a pure function of ``(seed, step, sample position)``:

* the order of training chunks in epoch ``e`` is ``default_rng([seed, EPOCH, e]).permutation``;
* global sample ``k`` (``k = step * global_batch + j``) is chunk ``perm_e[k % n]`` of epoch
  ``k // n``, cropped with ``default_rng([seed, SAMPLE, k])`` and masked with generators
  derived from the same key (``Batch.rng``).

So resuming at step ``s`` needs only ``s`` (no sampler state to save), and a sample's crop
and mask do not depend on how the global batch is split across micro-batches and DDP ranks:
two processes with micro-batch 4 see exactly what one process with 2 x 4 accumulation sees.

Discrete targets (MERT / HuBERT): given ``targets`` (readers with ``get(i) -> (n_frames_i,)``
class ids, :class:`m3bert.pretrain.targets.ClusterTargets`), every batch carries the ids of the
very frames it cropped, ``Batch.targets`` ``(n_codebooks, batch, frames)`` int64, ``-1`` on padding.
Float targets (Wu et al.'s worker features, :class:`m3bert.pretrain.worker_targets.WorkerTargets`,
whose ``get(i)`` is a ``{name: (n_frames_i, C)}`` mapping) travel the same way in ``Batch.features``
``{name: (batch, frames, C)}`` float32, zero on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from m3bert.core.errors import ConfigError, DataError

# stream identifiers mixed into seeds so the random streams never coincide
EPOCH, SAMPLE, VALID, SPLIT, MASK = 0xE90C, 0x5A3E, 0x7A11, 0x5B17, 0x3A5C


@dataclass
class Batch:
    """A padded batch of chunks; each row carries a seed key so objectives can draw its masks."""

    frames: torch.Tensor  # (batch, frames, channels) float32, zero after each row's length
    lengths: torch.Tensor  # (batch,) int64 real frames per row
    keys: list[tuple[int, ...]]  # per-row seed key, e.g. (seed, SAMPLE, k): a pure function of the sample
    indices: list[int]  # store chunk index of every row
    targets: torch.Tensor | None = None  # (n_codebooks, batch, frames) int64 class ids of the cropped frames; -1 = padding
    features: dict[str, torch.Tensor] | None = None  # {name: (batch, frames, C)} float32 targets of the cropped frames; 0 = padding

    @property
    def n_real_frames(self) -> int:
        return int(self.lengths.sum())

    def rng(self, row: int, stream: int = 0) -> np.random.Generator:
        """A fresh generator for ``row`` and ``stream`` (objectives use one stream per purpose)."""
        return np.random.default_rng([*self.keys[row], MASK, int(stream)])

    def to(self, device: torch.device | str) -> "Batch":
        # non-blocking: from pinned memory (batch_loader on CUDA) the copies overlap the host's work
        return Batch(self.frames.to(device, non_blocking=True), self.lengths.to(device, non_blocking=True), self.keys,
                     self.indices, None if self.targets is None else self.targets.to(device, non_blocking=True),
                     None if self.features is None else {k: v.to(device, non_blocking=True)
                                                         for k, v in self.features.items()})

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (DataLoader's pin_memory thread calls this)."""
        return Batch(self.frames.pin_memory(), self.lengths.pin_memory(), self.keys, self.indices,
                     None if self.targets is None else self.targets.pin_memory(),
                     None if self.features is None else {k: v.pin_memory() for k, v in self.features.items()})


def store_groups(store: Any) -> list[list[int]]:
    """Chunk indices grouped by source file (song), in a stable order.

    Uses ``store.groups()`` (a mapping source -> indices, or a list of index lists); stores
    without it fall back to ``store.rows[i]["source"]``.
    """
    groups = store.groups() if hasattr(store, "groups") else None
    if groups is None:
        by_source: dict[str, list[int]] = {}
        for i, row in enumerate(store.rows):
            by_source.setdefault(str(row["source"]), []).append(i)
        groups = by_source
    if isinstance(groups, dict):
        out = [sorted(int(i) for i in groups[k]) for k in sorted(groups)]
    else:
        out = sorted((sorted(int(i) for i in g) for g in groups), key=lambda g: g[0] if g else -1)
    return [g for g in out if g]


def split_by_group(
    groups: Sequence[Sequence[int]], *, val_fraction: float, seed: int, min_val_groups: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole songs: ``(train_indices, val_indices)``, both sorted int64.

    ``round(val_fraction * n_groups)`` groups (at least ``min_val_groups`` when
    ``val_fraction > 0``, and always leaving one for training) go to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction!r}; expected a fraction in [0, 1)")
    n = len(groups)
    if n == 0:
        raise DataError("the feature store holds no chunks")
    n_val = 0 if val_fraction == 0 else max(min_val_groups, int(round(val_fraction * n)))
    n_val = min(n_val, n - 1)
    order = np.random.default_rng([seed, SPLIT]).permutation(n)
    val = sorted(i for g in order[:n_val] for i in groups[g])
    train = sorted(i for g in order[n_val:] for i in groups[g])
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)


def crop_start(n_frames: int, *, max_frames: int, rng: np.random.Generator) -> int:
    """First frame of a random window of at most ``max_frames`` of ``n_frames`` (0 when it all fits;
    the generator is used only when there is a choice)."""
    if n_frames <= max_frames:
        return 0
    return int(rng.integers(0, n_frames - max_frames + 1))


def crop(frames: np.ndarray, *, max_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of at most ``max_frames`` frames: ``(n, C) -> (min(n, max_frames), C)``."""
    start = crop_start(frames.shape[0], max_frames=max_frames, rng=rng)
    return frames[start : start + max_frames]


def load_cropped(store: Any, targets: Sequence[Any], chunk: int, *, max_frames: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[Any]]:
    """Chunk ``chunk`` of the store cropped to ``max_frames``, and the same frames' targets of each
    target set: class ids ``(n,)``, or a ``{name: (n, C)}`` mapping of float targets."""
    frames = np.asarray(store.get(chunk), dtype=np.float32)
    start = crop_start(frames.shape[0], max_frames=max_frames, rng=rng)
    ids: list[Any] = []
    for t in targets:
        full = t.get(chunk)
        parts = full if isinstance(full, dict) else {None: full}
        for name, x in parts.items():
            if x.shape[0] != frames.shape[0]:
                what = "class ids" if name is None else f"rows of {name!r}"
                raise DataError(f"targets {getattr(t, 'path', t)}: chunk {chunk} has {x.shape[0]} {what} for "
                                f"{frames.shape[0]} store frames; rebuild the targets for this store")
        ids.append({k: x[start : start + max_frames] for k, x in full.items()} if isinstance(full, dict)
                   else full[start : start + max_frames])
    return frames[start : start + max_frames], ids


def collate_targets(ids: Sequence[Sequence[Any]], n_frames: int) -> torch.Tensor | None:
    """``ids[row][codebook]`` -> ``(n_codebooks, batch, n_frames)`` int64, ``-1`` after each row's length
    (float target mappings in the rows are left to :func:`collate_features`)."""
    ids = [[x for x in row if not isinstance(x, dict)] for row in ids]
    if not ids or not ids[0]:
        return None
    out = np.full((len(ids[0]), len(ids), n_frames), -1, dtype=np.int64)
    for b, row in enumerate(ids):
        for c, x in enumerate(row):
            out[c, b, : x.shape[0]] = x
    return torch.from_numpy(out)


def collate_features(rows: Sequence[Sequence[Any]], n_frames: int) -> dict[str, torch.Tensor] | None:
    """The float target mappings of each row -> ``{name: (batch, n_frames, C)}`` float32, 0 after each row's length."""
    maps = [{k: v for x in row if isinstance(x, dict) for k, v in x.items()} for row in rows]
    if not maps or not maps[0]:
        return None
    out = {k: np.zeros((len(maps), n_frames, v.shape[1]), dtype=np.float32) for k, v in maps[0].items()}
    for b, m in enumerate(maps):
        for k, x in m.items():
            out[k][b, : x.shape[0]] = x
    return {k: torch.from_numpy(v) for k, v in out.items()}


def collate(chunks: Sequence[np.ndarray], *, where: str = "batch") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``[(n_i, C)]`` into ``(B, max n_i, C)`` float32 (zeros after each length) + lengths ``(B,)``."""
    if not chunks:
        raise DataError(f"{where}: empty batch")
    n_channels = {c.shape[1] for c in chunks}
    if len(n_channels) != 1:
        raise DataError(f"{where}: chunks have different channel counts {sorted(n_channels)}")
    lengths = [c.shape[0] for c in chunks]
    if min(lengths) < 1:
        raise DataError(f"{where}: a chunk has no frames")
    out = np.zeros((len(chunks), max(lengths), n_channels.pop()), dtype=np.float32)
    for i, c in enumerate(chunks):
        out[i, : c.shape[0]] = c
    return torch.from_numpy(out), torch.tensor(lengths, dtype=torch.int64)


class TrainBatches:
    """Deterministic training batches: ``micro_batch(step, micro, rank)`` is a pure function."""

    def __init__(
        self,
        store: Any,
        indices: np.ndarray,
        *,
        seed: int,
        micro_batch: int,
        n_accum: int,
        world_size: int = 1,
        max_frames: int,
        targets: Sequence[Any] = (),
    ) -> None:
        if len(indices) == 0:
            raise DataError("no training chunks left after holding out validation songs")
        self.store, self.indices, self.seed = store, np.asarray(indices, dtype=np.int64), int(seed)
        self.micro_batch, self.n_accum, self.world_size = int(micro_batch), int(n_accum), int(world_size)
        self.max_frames = int(max_frames)
        self.targets = list(targets)
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.n_accum * self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, EPOCH, epoch]).permutation(len(self.indices))}
        return self._perm_cache[epoch]

    def sample_positions(self, step: int, micro: int, rank: int) -> range:
        """Global sample positions ``k`` of one micro-batch (rank-major inside the step)."""
        base = step * self.global_batch + (rank * self.n_accum + micro) * self.micro_batch
        return range(base, base + self.micro_batch)

    def micro_batch_at(self, step: int, micro: int, rank: int = 0) -> Batch:
        chunks, keys, idx, ids = [], [], [], []
        n = len(self.indices)
        for k in self.sample_positions(step, micro, rank):
            chunk = int(self.indices[self._permutation(k // n)[k % n]])
            key = (self.seed, SAMPLE, k)
            frames, row_ids = load_cropped(self.store, self.targets, chunk, max_frames=self.max_frames,
                                           rng=np.random.default_rng(list(key)))
            chunks.append(frames)
            ids.append(row_ids)
            keys.append(key)
            idx.append(chunk)
        frames, lengths = collate(chunks, where=f"training step {step}")
        return Batch(frames, lengths, keys, idx, collate_targets(ids, frames.shape[1]), collate_features(ids, frames.shape[1]))


def validation_batches(
    store: Any, indices: Iterable[int], *, seed: int, batch_size: int, max_frames: int, rank: int = 0, world_size: int = 1,
    targets: Sequence[Any] = (),
) -> Iterable[Batch]:
    """Fixed validation batches (same crops and masks at every evaluation); rank ``r`` gets every
    ``world_size``-th chunk so ranks can split the work and sum their results."""
    mine = [int(i) for j, i in enumerate(indices) if j % world_size == rank]
    for start in range(0, len(mine), batch_size):
        chunks, keys, ids = [], [], []
        for i in mine[start : start + batch_size]:
            key = (seed, VALID, i)
            frames, row_ids = load_cropped(store, targets, i, max_frames=max_frames, rng=np.random.default_rng(list(key)))
            chunks.append(frames)
            ids.append(row_ids)
            keys.append(key)
        frames, lengths = collate(chunks, where="validation")
        yield Batch(frames, lengths, keys, mine[start : start + batch_size], collate_targets(ids, frames.shape[1]),
                    collate_features(ids, frames.shape[1]))


class StepBatches(torch.utils.data.Dataset):
    """Micro-batches ``start .. end`` of :class:`TrainBatches` as a dataset: item ``j`` is
    ``micro_batch_at(start + j // n_accum, j % n_accum, rank)``, a pure function, so worker
    processes build exactly the batches the loop would."""

    def __init__(self, data: TrainBatches, *, start: int, end: int, rank: int) -> None:
        self.data, self.start, self.end, self.rank = data, int(start), int(end), int(rank)

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.data.n_accum

    def __getitem__(self, j: int) -> Batch:
        step, micro = divmod(int(j), self.data.n_accum)
        return self.data.micro_batch_at(self.start + step, micro, self.rank)


def batch_loader(data: TrainBatches, *, start: int, end: int, rank: int = 0, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[Batch]:
    """The micro-batches of steps ``start .. end`` in order (step-major, then micro-batch).

    ``workers`` > 0 builds them in that many worker processes, ``2 * workers`` batches ahead
    (the store's memory maps reopen in each worker); ``pin_memory`` puts them in page-locked
    memory for non-blocking GPU copies. Same batches either way (tests/test_pretrain.py).
    """
    dataset = StepBatches(data, start=start, end=end, rank=rank)
    if workers <= 0 and not pin_memory:
        return (dataset[j] for j in range(len(dataset)))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=int(workers),
                                            pin_memory=pin_memory, prefetch_factor=2 if workers > 0 else None,
                                            persistent_workers=False))
