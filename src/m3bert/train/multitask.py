"""M3BERT multi-task enrichment: one encoder, several labelled datasets at once.

Reading order (top to bottom): configs -> task sampling -> data preparation (validation,
partial-label samples, caches) -> model building -> one training step / evaluation ->
the training loop (:func:`train_multitask`) -> the paper's grid (:func:`run_finetune`).

What happens, in the words of the papers:

* The model is the pre-trained M2BERT encoder plus a shared, time-distributed dense
  *enrichment* layer (Greer et al. 2023, fig. 1) whose output is the M3BERT representation,
  plus one head per task on the time average of that output (figs. 3, 4).
* Every sample carries labels for only some tasks (usually those of the dataset it comes from);
  a batch mixes datasets; a task's loss is computed over the samples that have its label and a
  head never sees the others (see :mod:`m3bert.models.multitask`).
* Loss balancing: ``equal``, ``reweight`` (Wu et al. 2021: reciprocal of each task's mean
  validation loss over the first epochs of equal-weighted training, then retrain) or
  ``uncertainty`` (Kendall et al. 2018, which the M3BERT discussion proposes).
* Task sampling: ``proportional`` (a plain shuffled epoch: large datasets dominate, as the paper
  observed), ``uniform`` over tasks, or ``temperature:T`` (task probability ~ n_t^(1/T)). The
  effective share of each task's labels per epoch is logged.
* Scenarios (Wu et al.): ``frozen`` (the paper's: only enrichment + heads train), ``finetune``
  (the encoder trains too, at ``optim.finetune_encoder_lr_scale`` x the lr), ``scratch``
  (random encoder of the same architecture, trained at the full lr).

The representation used in training is, by construction, what the exported model gives at
inference: inputs are prepared by :class:`m3bert.embed.Embedder` (same windows, same CMVN, same
stitching), and in the ``frozen`` scenario the encoder's last hidden states are computed once
by that Embedder and cached on disk, so epochs and grid points only run the enrichment layer
and the heads. Enrichment is per frame, so it commutes with stitching: the time average of the
enrichment output on cached stitched states *is* the exported model's clip embedding.

Run directory (docs/ARCHITECTURE.md): ``run.json``, ``metrics.jsonl``, ``summary.json``,
``checkpoints/{last,best}/`` (each a model directory + heads + trainer state), ``cache/``.
Resume is exact: the sampling order of an epoch is a pure function of (seed, epoch), and the
torch RNG, optimiser, loss-weighting state and partial-epoch accumulators are checkpointed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from m3bert.config import from_dict
from m3bert.errors import AudioError, CheckpointError, ConfigError, DataError, M3bertError
from m3bert.io import atomic_save_npy, atomic_write_json, config_hash, read_json, versions
from m3bert.models.encoder import Encoder, EncoderConfig, EnrichmentConfig
from m3bert.train.schedule import ScheduleConfig, lr_at
from m3bert.models.multitask import (
    HEADS_CONFIG,
    HeadConfig,
    HeadsBundle,
    LossWeighting,
    MultiTaskHeads,
    ReweightWeighting,
    TaskInfo,
    WeightingConfig,
    create_weighting,
    heads_description,
    load_heads,
    pool_windows,
    target_standardisation,
    task_loss,
)

SCENARIOS = ("frozen", "finetune", "scratch")
DEFAULT_METRICS = {
    "multiclass": ["accuracy", "macro_f1"],
    "multilabel": ["roc_auc_macro", "pr_auc_macro"],
    "regression": ["r2"],
}


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Adam(W) as in the paper (betas, eps); the schedule is ``MultitaskConfig.schedule``."""

    lr: float = 1e-3  # peak lr of the enrichment layer, heads and loss weights
    finetune_encoder_lr_scale: float = 0.1  # finetune: encoder lr = lr x this (pre-trained weights move gently)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas (paper)
    eps: float = 1e-6  # Adam epsilon (paper)
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay; never applied to loss weights
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off


@dataclass
class MultitaskConfig:
    """Everything that shapes a multi-task enrichment run (stored in run.json)."""

    scenario: str = "frozen"  # "frozen" (paper) | "finetune" | "scratch" (Wu et al.)
    epochs: int = 10  # training epochs (after any reweight calibration)
    batch_size: int = 16  # samples per step (paper grid: 16 / 24 / 32)
    eval_batch_size: int = 32  # samples per evaluation forward pass
    sampling: str = "proportional"  # "proportional" | "uniform" | "temperature:T"
    samples_per_epoch: int = 0  # draws per epoch; 0 = the number of distinct training samples
    enrichment: EnrichmentConfig = field(default_factory=EnrichmentConfig)  # the M3BERT layer (dropout: paper grid .05 / .1)
    heads: HeadConfig = field(default_factory=HeadConfig)  # per-task heads
    weighting: WeightingConfig = field(default_factory=WeightingConfig)  # loss balancing
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # lr schedule (paper: 7 % warmup, linear decay)
    early_stopping: int = 3  # stop after this many epochs without a better validation score; 0 = off
    checkpoint_every: int = 0  # also save checkpoints/last every this many steps; 0 = end of epoch only
    log_every: int = 0  # also log a step line every this many steps; 0 = per epoch only
    seed: int = 0  # seeds initialisation, sampling and dropout
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):
            self.optim = from_dict(OptimConfig, self.optim, where="optim")
        if isinstance(self.optim.betas, list):
            self.optim.betas = tuple(self.optim.betas)
        self.validate()

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"scenario={self.scenario!r}; expected one of {SCENARIOS}")
        parse_sampling(self.sampling)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected a positive integer")
        for name in ("samples_per_epoch", "early_stopping", "checkpoint_every", "log_every", "threads"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected an integer >= 0")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr={self.optim.lr!r}; expected > 0")
        if not 0 <= self.enrichment.dropout < 1:
            raise ConfigError(f"enrichment.dropout={self.enrichment.dropout!r}; expected [0, 1)")
        from m3bert.models.multitask import WEIGHTINGS

        if self.weighting.name not in WEIGHTINGS:
            raise ConfigError(f"weighting.name={self.weighting.name!r}; expected one of {sorted(WEIGHTINGS)}")
        if self.weighting.reweight_epochs < 1:
            raise ConfigError(f"weighting.reweight_epochs={self.weighting.reweight_epochs}; expected >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MultitaskConfig":
        return from_dict(cls, data, where="multitask")


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> MultitaskConfig:
    """Defaults <- YAML file <- dotted ``key=value`` overrides (unknown keys are errors)."""
    from m3bert.config import apply_overrides, load_yaml

    data = MultitaskConfig().to_dict()
    if path is not None:
        data = _deep_update(data, load_yaml(path), where=str(path))
    return MultitaskConfig.from_dict(apply_overrides(data, list(overrides or [])))


def _deep_update(base: dict[str, Any], new: dict[str, Any], *, where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        if k not in out:
            raise ConfigError(f"{where}: unknown key {k!r}; expected some of {sorted(out)}")
        out[k] = _deep_update(out[k], v, where=f"{where}.{k}") if isinstance(out[k], dict) and isinstance(v, dict) else v
    return out


# The paper's Table 4 (downstream grid); selection is by validation score.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "paper": {
        "batch_size": [16, 24, 32],
        "optim.lr": [2e-5, 3e-5, 4e-5],
        "epochs": [2, 3, 4],
        "enrichment.dropout": [0.05, 0.1],
    },
}


def grid_points(grid: str | dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a named grid (``"paper"``) or a ``{dotted.key: [values]}`` mapping."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ConfigError(f"grid={grid!r}; expected one of {sorted(GRIDS)} or a mapping of key -> values")
        grid = GRIDS[grid]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or not grid[k]:
            raise ConfigError(f"grid[{k!r}]={grid[k]!r}; expected a non-empty list of values")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


# ---------------------------------------------------------------------------------------------
# Task sampling (pure)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Data: validation, partial-label samples, caches
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One audio excerpt with the labels of every task that annotates it."""

    key: str  # identity of the audio (file + span); also the cache file name
    path: Path  # audio file
    start: float | None  # seconds; None = from the beginning
    end: float | None  # seconds; None = to the end
    split: str  # "train" | "valid" | "test"
    labels: dict[str, Any] = field(default_factory=dict)  # task -> target (int or float32 array)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # multilabel task -> known-label mask
    clip_ids: dict[str, str] = field(default_factory=dict)  # task -> clip id (for messages)


@dataclass
class PreparedData:
    """Tasks, merged samples and where each sample's cached model input lives."""

    tasks: list[TaskInfo]  # in the order given
    samples: list[Sample]  # merged over tasks
    input_kind: str  # "hidden" (frozen: stitched last hidden states) or "windows" (normalised feature windows)
    arrays: list[Path]  # per sample: cached .npy (n_frames, H) or (sum of window lengths, C)
    starts: list[list[int]]  # per sample: window start frames ("windows" kind)
    n_frames: list[int]  # per sample: frames of the whole excerpt
    window_frames: int  # encoder window (the model's max_frames)
    rejects: list[dict[str, str]] = field(default_factory=list)  # excerpts whose audio failed
    specs: list[str] = field(default_factory=list)  # task specs as given (for run.json)

    def split(self, name: str) -> list[int]:
        return [i for i, s in enumerate(self.samples) if s.split == name]

    def has_label(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return {t.name: np.array([t.name in self.samples[i].labels for i in indices], dtype=bool) for t in self.tasks}


def _task_metrics(data: Any) -> list[str]:
    from m3bert.bench.tasks import get_task

    try:
        return list(get_task(data.task).metrics)
    except ConfigError:
        return list(DEFAULT_METRICS[data.label_type])


def load_task_data(tasks: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """Task specs (``"builtin-dance:/corpus"``) or ready :class:`TaskData` -> validated TaskData."""
    from m3bert.bench.tasks import TaskData, load_task

    out, specs = [], []
    for t in tasks:
        if isinstance(t, TaskData):
            out.append(t.validate())
            specs.append(t.task)
        elif isinstance(t, str):
            out.append(load_task(t))
            specs.append(t)
        else:
            raise ConfigError(f"task {t!r}: expected a task spec 'NAME[:PATH]' or a TaskData")
    names = [d.task for d in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"task(s) {dupes} given more than once")
    if not out:
        raise ConfigError("no tasks given; pass at least one --task NAME[:PATH]")
    return out, specs


def check_task_data(data: Any) -> None:
    """Refuse, before any training, what would make a task's loss or metric meaningless."""
    data.validate()  # label types, class ranges, shapes, non-finite targets, split hygiene
    n = len(data.classes)
    if n == 0:
        raise DataError(f"task {data.task}: no classes / target names")
    for split in ("train", "valid"):
        clips = [c for c in data.split(split) if _clip_has_label(data, c)]
        if not clips:
            raise DataError(
                f"task {data.task}: no labelled samples in split {split!r} "
                f"({len(data.split(split))} clip(s) there); every task needs train and valid labels"
            )
    for c in data.clips:
        if c.target_mask is not None:
            if data.label_type != "multilabel":
                raise DataError(f"task {data.task}, clip {c.clip_id}: target_mask is only for multilabel tasks")
            m = np.asarray(c.target_mask, dtype=np.float32)
            if m.shape != (n,) or not np.all((m == 0) | (m == 1)):
                raise DataError(f"task {data.task}, clip {c.clip_id}: target_mask must be 0/1 of shape ({n},), got {m.tolist()}")
        if data.label_type == "multiclass" and isinstance(c.target, (bool, np.bool_)):
            raise DataError(f"task {data.task}, clip {c.clip_id}: target={c.target!r}; expected a class index")
    if data.label_type == "regression":
        t = data.target_matrix([c for c in data.split("train")])
        if not np.all(np.isfinite(t)):
            raise DataError(f"task {data.task}: non-finite regression targets in train")


def _clip_has_label(data: Any, clip: Any) -> bool:
    return clip.target_mask is None or bool(np.asarray(clip.target_mask).any())


def build_samples(datas: Sequence[Any]) -> tuple[list[Sample], list[TaskInfo]]:
    """Merge the clips of all tasks into samples (one per distinct audio excerpt).

    The same excerpt labelled by two tasks becomes one sample carrying both labels; it must be in
    the same split for both (otherwise one task's test audio would train the shared layer).
    """
    infos: list[TaskInfo] = []
    samples: dict[str, Sample] = {}
    for data in datas:
        check_task_data(data)
        info = TaskInfo(name=data.task, label_type=data.label_type, classes=list(data.classes), metrics=_task_metrics(data))
        if data.label_type == "regression":
            mean, std = target_standardisation(data.target_matrix(data.split("train")))
            info.target_mean, info.target_std = mean.tolist(), std.tolist()
        infos.append(info)
        for c in data.clips:
            if not _clip_has_label(data, c):
                continue
            path = Path(c.path).resolve()
            key = config_hash([str(path), c.start, c.end], n_chars=20)
            s = samples.get(key)
            if s is None:
                s = samples[key] = Sample(key=key, path=path, start=c.start, end=c.end, split=c.split)
            elif s.split != c.split:
                other = next(iter(s.clip_ids.items()))
                raise DataError(
                    f"audio {path} [{c.start}, {c.end}) is in split {s.split!r} for task {other[0]} "
                    f"(clip {other[1]}) but in split {c.split!r} for task {data.task} (clip {c.clip_id}); "
                    "an excerpt must have one split across all enrichment tasks"
                )
            if data.task in s.labels:
                raise DataError(f"task {data.task}: audio {path} [{c.start}, {c.end}) is labelled twice "
                                f"(clips {s.clip_ids[data.task]} and {c.clip_id})")
            s.labels[data.task] = int(c.target) if data.label_type == "multiclass" else np.asarray(c.target, np.float32)
            if c.target_mask is not None:
                s.masks[data.task] = np.asarray(c.target_mask, np.float32)
            s.clip_ids[data.task] = c.clip_id
    return list(samples.values()), infos


def _base_embedder(encoder: Encoder) -> Any:
    """An :class:`m3bert.embed.Embedder` on a private copy of the (un-enriched) encoder.

    The Embedder freezes the encoder it is given, hence the copy.
    """
    from m3bert.embed import Embedder

    base = copy.deepcopy(encoder)
    if base.enrichment is not None:
        base.enrichment = None
        base.cfg = dataclasses.replace(base.cfg, enrichment=None)
    return Embedder(base)


def _load_excerpt(sample: Sample, sample_rate: int, min_samples: int) -> np.ndarray:
    from m3bert.audio import load_audio

    offset = float(sample.start or 0.0)
    duration = None if sample.end is None else float(sample.end) - offset
    return load_audio(sample.path, sample_rate=sample_rate, offset=offset, duration=duration, min_samples=min_samples)


def prepare_data(
    tasks: Sequence[Any],
    encoder: Encoder,
    *,
    scenario: str,
    cache_dir: str | Path,
    progress: bool = True,
) -> PreparedData:
    """Validate the tasks, merge them into samples and cache each sample's model input once.

    ``frozen``: the stitched last hidden states of the (frozen) encoder, computed by the same
    Embedder the exported model uses — keyed by the encoder's weights, so a different
    pre-trained model never reuses them. ``finetune`` / ``scratch``: the Embedder's normalised
    feature windows. Excerpts whose audio cannot be read are skipped and recorded; a task left
    without train or valid samples is then an error.
    """
    from tqdm.auto import tqdm

    datas, specs = load_task_data(tasks)
    samples, infos = build_samples(datas)
    embedder = _base_embedder(encoder)
    min_samples = int(getattr(embedder.feature_set, "min_samples", 1))
    kind = "hidden" if scenario == "frozen" else "windows"
    ident = embedder.model_id if kind == "hidden" else config_hash(encoder.feature_set or {})
    root = Path(cache_dir) / f"{kind}-{ident}"
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "index.json"
    index: dict[str, Any] = read_json(index_path) if index_path.is_file() else {}
    kept: list[Sample] = []
    rejects: list[dict[str, str]] = []
    arrays, starts, n_frames = [], [], []
    bar = tqdm(samples, desc=f"caching {'hidden states' if kind == 'hidden' else 'features'}", disable=not progress,
               unit="clip", leave=False)
    dirty = 0
    for s in bar:
        # the cache entry is keyed by the audio's identity *and* its size / mtime, so an edited file is redone
        try:
            st = s.path.stat()
            entry = config_hash([s.key, st.st_size, st.st_mtime_ns], n_chars=20)
        except OSError:
            entry = s.key  # missing file: the load below records why
        path = root / f"{entry}.npy"
        meta = index.get(entry)
        if meta is None or not path.is_file():
            try:
                wave = _load_excerpt(s, embedder.sample_rate, min_samples)
                if kind == "hidden":
                    frames, _ = embedder.embed(wave, sample_rate=embedder.sample_rate, level="frame", layers=-1)
                    arr, meta = np.asarray(frames, np.float32), {"n_frames": int(frames.shape[0]), "starts": [0]}
                else:
                    # the Embedder's own preparation (windows, CMVN), so training sees what inference sees
                    prep = embedder._prepare(0, wave, sample_rate=embedder.sample_rate)
                    arr = np.concatenate(prep.windows, axis=0).astype(np.float32)
                    meta = {"n_frames": int(prep.n_frames), "starts": [int(x) for x in prep.starts]}
            except M3bertError as exc:
                rejects.append({"path": str(s.path), "start": str(s.start), "end": str(s.end), "reason": str(exc)})
                continue
            atomic_save_npy(path, arr)
            meta.update({"path": str(s.path), "start": s.start, "end": s.end})
            index[entry] = meta
            dirty += 1
            if dirty % 64 == 0:
                atomic_write_json(index_path, index)
        kept.append(s)
        arrays.append(path)
        starts.append(list(meta["starts"]))
        n_frames.append(int(meta["n_frames"]))
    if dirty:
        atomic_write_json(index_path, index)
    for info in infos:
        for split in ("train", "valid"):
            if not any(info.name in s.labels and s.split == split for s in kept):
                raise DataError(
                    f"task {info.name}: no usable samples left in split {split!r} after skipping "
                    f"{len(rejects)} unreadable excerpt(s), e.g. {rejects[:2]}"
                )
    return PreparedData(tasks=infos, samples=kept, input_kind=kind, arrays=arrays, starts=starts,
                        n_frames=n_frames, window_frames=int(embedder.window_frames), rejects=rejects, specs=specs)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A mixed batch: model inputs of every window plus each task's labelled rows."""

    inputs: torch.Tensor  # (W, T, C) feature windows, or (W, T, H) cached hidden states
    lengths: torch.Tensor  # (W,) valid frames per window
    frame_weights: torch.Tensor  # (W, T) 1 where the window's frame counts in its sample's time average
    owner: torch.Tensor  # (W,) sample (row) each window belongs to
    n_samples: int  # B
    rows: dict[str, torch.Tensor]  # task -> (k,) rows with that task's label
    targets: dict[str, torch.Tensor]  # task -> (k,) int64 or (k, n) float32 (regression: standardised)
    masks: dict[str, torch.Tensor | None]  # multilabel task -> (k, n) known-label mask, else None


def collate(data: PreparedData, indices: Sequence[int], tasks: Sequence[TaskInfo]) -> Batch:
    """Stack the cached inputs of ``indices`` and gather every task's labels (partial labels)."""
    from m3bert.embed import window_owners

    pieces: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    owner: list[int] = []
    for row, i in enumerate(indices):
        arr = np.load(data.arrays[i], mmap_mode="r")
        n, starts = data.n_frames[i], data.starts[i]
        if data.input_kind == "hidden" or len(starts) == 1:
            pieces.append(np.asarray(arr))
            weights.append(np.ones(arr.shape[0], np.float32))
            owner.append(row)
            continue
        owners = window_owners(n, starts, window=data.window_frames)
        pos = 0
        for k, s in enumerate(starts):
            length = min(data.window_frames, n - s)
            pieces.append(np.asarray(arr[pos:pos + length]))
            weights.append((owners[s:s + length] == k).astype(np.float32))
            owner.append(row)
            pos += length
    t_max = max(p.shape[0] for p in pieces)
    x = np.zeros((len(pieces), t_max, pieces[0].shape[1]), np.float32)
    w = np.zeros((len(pieces), t_max), np.float32)
    for j, (p, fw) in enumerate(zip(pieces, weights)):
        x[j, : p.shape[0]] = p
        w[j, : p.shape[0]] = fw
    rows, targets, masks = {}, {}, {}
    for t in tasks:
        r = [row for row, i in enumerate(indices) if t.name in data.samples[i].labels]
        rows[t.name] = torch.tensor(r, dtype=torch.long)
        labs = [data.samples[indices[row]].labels[t.name] for row in r]
        if t.label_type == "multiclass":
            targets[t.name] = torch.tensor(labs, dtype=torch.long)
            masks[t.name] = None
        else:
            y = np.stack(labs).astype(np.float32) if labs else np.zeros((0, t.n_outputs), np.float32)
            if t.is_regression:
                y = (y - np.asarray(t.target_mean, np.float32)) / np.asarray(t.target_std, np.float32)
            targets[t.name] = torch.from_numpy(y)
            ms = [data.samples[indices[row]].masks.get(t.name) for row in r]
            masks[t.name] = (torch.from_numpy(np.stack([m if m is not None else np.ones(t.n_outputs, np.float32) for m in ms]))
                             if any(m is not None for m in ms) else None)
    return Batch(
        inputs=torch.from_numpy(x),
        lengths=torch.tensor([p.shape[0] for p in pieces], dtype=torch.long),
        frame_weights=torch.from_numpy(w),
        owner=torch.tensor(owner, dtype=torch.long),
        n_samples=len(indices),
        rows=rows,
        targets=targets,
        masks=masks,
    )


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def resolve_encoder(spec: str | Path) -> tuple[Encoder, str]:
    """``--model``: a pre-training run dir, a checkpoint dir, a model dir or ``random:CONFIG[:SEED]``."""
    from m3bert.embed import load_encoder

    encoder, source = load_encoder(spec)
    return encoder, source


def build_modules(
    base: Encoder, tasks: list[TaskInfo], cfg: MultitaskConfig
) -> tuple[Encoder, MultiTaskHeads, LossWeighting]:
    """The M3BERT model (encoder + enrichment), heads and loss weighting, seeded by ``cfg.seed``.

    ``frozen`` / ``finetune`` start from ``base``'s weights (every key except ``enrichment.*``);
    ``scratch`` keeps the random initialisation of the same architecture.
    """
    mcfg = EncoderConfig.from_dict({**base.cfg.to_dict(), "enrichment": dataclasses.asdict(cfg.enrichment)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Encoder(mcfg, feature_set=base.feature_set)
        heads = MultiTaskHeads(model.layer_dims[-1], tasks, cfg.heads)
        weighting = create_weighting(tasks, cfg.weighting)
    if cfg.scenario != "scratch":
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("enrichment.")}
        own = model.state_dict()
        missing = sorted(k for k in own if not k.startswith("enrichment.") and k not in state)
        if missing:
            raise CheckpointError(f"pre-trained encoder lacks weights {missing[:5]} for its own architecture")
        own.update(state)
        model.load_state_dict(own, strict=True)
    trainable_encoder = cfg.scenario != "frozen"
    for name, p in model.named_parameters():
        p.requires_grad_(trainable_encoder or name.startswith("enrichment."))
    return model, heads, weighting


def make_optimizer(model: Encoder, heads: MultiTaskHeads, weighting: LossWeighting, cfg: MultitaskConfig) -> torch.optim.Optimizer:
    """AdamW with param groups: enrichment + heads (lr), loss weights (lr, no decay), encoder (own lr)."""
    o = cfg.optim
    groups = [
        {"name": "enrichment+heads", "params": list(model.enrichment.parameters()) + list(heads.parameters()),
         "lr": o.lr, "base_lr": o.lr, "weight_decay": o.weight_decay},
    ]
    wparams = [p for p in weighting.parameters() if p.requires_grad]
    if wparams:
        groups.append({"name": "loss-weights", "params": wparams, "lr": o.lr, "base_lr": o.lr, "weight_decay": 0.0})
    if cfg.scenario != "frozen":
        enc_lr = o.lr * (o.finetune_encoder_lr_scale if cfg.scenario == "finetune" else 1.0)
        enc = [p for n, p in model.named_parameters() if not n.startswith("enrichment.")]
        groups.append({"name": "encoder", "params": enc, "lr": enc_lr, "base_lr": enc_lr, "weight_decay": o.weight_decay})
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def set_train_mode(model: Encoder, heads: MultiTaskHeads, scenario: str) -> None:
    """Train mode for what trains; a frozen encoder stays in eval mode (no dropout), as when cached."""
    heads.train()
    model.train(scenario != "frozen")
    model.enrichment.train()


def represent(model: Encoder, batch: Batch, *, input_kind: str) -> torch.Tensor:
    """The M3BERT clip representation ``(B, D)``: time average of the enrichment output."""
    if input_kind == "hidden":
        enriched = model.enrichment(batch.inputs)  # (W, T, D)
    else:
        enriched = model(batch.inputs, batch.lengths)[-1]  # (W, T, D)
    return pool_windows(enriched, batch.frame_weights, batch.owner, batch.n_samples)


def batch_losses(model: Encoder, heads: MultiTaskHeads, batch: Batch, *, input_kind: str) -> dict[str, torch.Tensor]:
    """Per-task mean losses over the rows carrying each task's label (absent tasks left out)."""
    pooled = represent(model, batch, input_kind=input_kind)
    outputs = heads(pooled, batch.rows)
    return {t: task_loss(heads.tasks[t].label_type, out, batch.targets[t], batch.masks[t]) for t, out in outputs.items()}


@torch.no_grad()
def evaluate(
    model: Encoder, heads: MultiTaskHeads, data: PreparedData, indices: Sequence[int], *, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per task: loss over all its labelled samples in ``indices`` and its metrics (by name)."""
    was = (model.training, heads.training)
    model.eval()
    heads.eval()
    outs: dict[str, list[torch.Tensor]] = {t: [] for t in heads.task_names}
    tgts: dict[str, list[torch.Tensor]] = {t: [] for t in heads.task_names}
    msks: dict[str, list[torch.Tensor | None]] = {t: [] for t in heads.task_names}
    for b0 in range(0, len(indices), batch_size):
        batch = collate(data, indices[b0:b0 + batch_size], list(heads.tasks.values()))
        pooled = represent(model, batch, input_kind=data.input_kind)
        for t, out in heads(pooled, batch.rows).items():
            outs[t].append(out)
            tgts[t].append(batch.targets[t])
            m = batch.masks[t]
            msks[t].append(m if m is not None else (torch.ones_like(out) if heads.tasks[t].label_type == "multilabel" else None))
    model.train(was[0])
    heads.train(was[1])
    results: dict[str, dict[str, Any]] = {}
    for t, info in heads.tasks.items():
        if not outs[t]:
            continue
        out, tgt = torch.cat(outs[t]), torch.cat(tgts[t])
        mask = torch.cat(msks[t]) if info.label_type == "multilabel" else None
        res: dict[str, Any] = {"n": int(out.shape[0]), "loss": float(task_loss(info.label_type, out, tgt, mask))}
        res.update(task_scores(info, out, tgt, mask))
        results[t] = res
    return results


def task_scores(info: TaskInfo, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """Metrics by name (:mod:`m3bert.bench.metrics`) on probabilities / de-standardised values.

    A metric undefined on this split (e.g. ROC-AUC with one class in every column) is NaN,
    recorded as such, and left out of the aggregate.
    """
    from m3bert.bench.metrics import compute_metric

    if info.label_type == "multiclass":
        y_true, y_pred = target.numpy(), torch.softmax(output, dim=-1).numpy()
    elif info.label_type == "multilabel":
        y_true, y_pred = target.numpy(), torch.sigmoid(output).numpy()
    else:
        mean, std = np.asarray(info.target_mean, np.float32), np.asarray(info.target_std, np.float32)
        y_true, y_pred = target.numpy() * std + mean, output.numpy() * std + mean
    m = None if mask is None else mask.numpy()
    scores = {}
    with warnings.catch_warnings():
        # tiny validation splits often leave a tag column single-class; the metric drops it and
        # would warn every epoch
        warnings.simplefilter("ignore", UserWarning)
        for name in info.metrics:
            try:
                scores[name] = float(compute_metric(name, y_true, y_pred, label_type=info.label_type,
                                                    classes=info.classes, target_mask=m))
            except DataError:
                scores[name] = float("nan")
    return scores


def aggregate_score(results: dict[str, dict[str, Any]], tasks: Sequence[TaskInfo]) -> float:
    """Mean over tasks of the primary metric (``Task.metrics[0]``), oriented so higher is better."""
    from m3bert.bench.metrics import get_metric

    vals = []
    for t in tasks:
        v = results.get(t.name, {}).get(t.metrics[0], float("nan"))
        if math.isfinite(v):
            vals.append(v if get_metric(t.metrics[0]).higher_is_better else -v)
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where the loop is; saved in every checkpoint's state.json (optimiser + RNG beside it)."""

    phase: str = "train"  # "calibrate" (reweight's equal-weighted epochs) or "train"
    epoch: int = 0  # epochs completed in this phase
    step_in_epoch: int = 0  # steps done in the current (unfinished) epoch
    global_step: int = 0  # optimiser steps since the (last) start from the initial weights
    best_score: float | None = None  # best validation aggregate so far
    best_epoch: int = -1  # epoch (1-based) of the best score
    bad_epochs: int = 0  # epochs since the best (early stopping)
    calib_losses: dict[str, list[float]] = field(default_factory=dict)  # reweight: valid loss per calibration epoch
    reweights: dict[str, float] | None = None  # reweight: the weights computed after calibration
    acc: dict[str, Any] = field(default_factory=dict)  # partial-epoch sums of losses / weights / counts
    done: bool = False  # training finished (epochs or early stopping)
    stopped_early: bool = False  # finished by early stopping
    log_lines: int = 0  # lines of metrics.jsonl covered by this checkpoint (later ones are replayed on resume)


def save_checkpoint(
    directory: Path, *, model: Encoder, heads: MultiTaskHeads, weighting: LossWeighting,
    optimizer: torch.optim.Optimizer, state: TrainerState, extra: dict[str, Any]
) -> None:
    """Model directory + ``heads.safetensors`` + optimiser/RNG/state (exact resume) + ``heads.json``.

    The directory is swapped in atomically by :mod:`m3bert.train.checkpoint`; ``heads.json`` is
    then written atomically beside it (it only describes the run's tasks, so if a crash fell in
    between, the next save or :func:`_ensure_heads_json` rewrites it).
    """
    from m3bert.train import checkpoint as ckpt

    ckpt.save_checkpoint(directory, model=model, modules={"heads": HeadsBundle(heads, weighting)},
                         optimizer=optimizer, state=dataclasses.asdict(state), model_extra={"multitask": extra})
    atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


def load_checkpoint(
    directory: Path, *, model: Encoder, heads: MultiTaskHeads, weighting: LossWeighting, optimizer: torch.optim.Optimizer
) -> TrainerState:
    """Restore weights, heads, loss weights, optimiser and RNG; return the loop state."""
    from m3bert.train import checkpoint as ckpt

    raw = ckpt.load_checkpoint(directory, model=model, modules={"heads": HeadsBundle(heads, weighting)},
                               optimizer=optimizer, restore_rng=True)
    if (directory / HEADS_CONFIG).is_file():
        weighting.load_extra_state_json(read_json(directory / HEADS_CONFIG).get("weighting_state") or {})
    try:
        return from_dict(TrainerState, raw, where=f"{directory}/state.json")
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory}: invalid trainer state ({exc})") from exc


def _ensure_heads_json(directory: Path, heads: MultiTaskHeads, weighting: LossWeighting) -> None:
    if directory.is_dir() and not (directory / HEADS_CONFIG).is_file():
        atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def _new_acc(tasks: Sequence[TaskInfo]) -> dict[str, Any]:
    z = {t.name: 0.0 for t in tasks}
    return {"loss_sum": dict(z), "loss_n": dict(z), "weight_sum": dict(z), "total_sum": 0.0, "steps": 0}


def _write_line(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _truncate_metrics(path: Path, keep: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) != keep:
        from m3bert.io import atomic_write_text

        atomic_write_text(path, "".join(lines[:keep]))


def _n_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def _init_run_dir(out: Path, record: dict[str, Any]) -> bool:
    """Create ``out`` or check that it is the same run; returns True when it already existed."""
    run_json = out / "run.json"
    if run_json.is_file():
        old = read_json(run_json)
        if old.get("kind") != "multitask":
            raise ConfigError(f"{out}: run.json is a {old.get('kind')!r} run, not a multitask run; choose another --out")
        for key in ("config", "model", "task_specs", "grid"):
            if old.get(key) != record.get(key):
                raise ConfigError(
                    f"{out}: exists with a different {key} (stored {json.dumps(old.get(key), default=str)[:300]}, "
                    f"now {json.dumps(record.get(key), default=str)[:300]}); use a new --out, or --resume {out} to continue it"
                )
        return True
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_json, record)
    return False


def train_multitask(
    config: MultitaskConfig,
    *,
    model: str | Path | Encoder,
    tasks: Sequence[Any] | None = None,
    out: str | Path,
    data: PreparedData | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train one multi-task enrichment run into ``out`` (resuming it if it exists with the same config).

    ``model``: ``--model`` spec or an in-memory :class:`Encoder` (the pre-trained M2BERT).
    ``tasks``: specs ``"NAME[:PATH]"`` or :class:`TaskData`; or pass ready ``data``
    (:func:`prepare_data`, e.g. shared by the grid). ``stop_after_steps`` stops (after saving
    ``checkpoints/last``) once this process has taken that many steps — a controlled
    interruption for time-boxed jobs and resume tests. Returns the run summary.
    """
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, model=model, tasks=tasks, out=Path(out), data=data, cache_dir=cache_dir,
                      progress=progress, stop_after_steps=stop_after_steps)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: MultitaskConfig, *, model: str | Path | Encoder, tasks: Sequence[Any] | None, out: Path,
           data: PreparedData | None, cache_dir: str | Path | None, progress: bool,
           stop_after_steps: int | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from m3bert.train.checkpoint import recover_checkpoint

    if isinstance(model, Encoder):
        base, source = model, "<in memory>"
    else:
        base, source = resolve_encoder(model)
    if data is None:
        if tasks is None:
            raise ConfigError("train_multitask: pass tasks= (specs or TaskData) or data=")
        data = prepare_data(tasks, base, scenario=config.scenario, cache_dir=Path(cache_dir or out / "cache"),
                            progress=progress)
    elif data.input_kind != ("hidden" if config.scenario == "frozen" else "windows"):
        raise ConfigError(f"prepared data holds {data.input_kind!r} inputs, not those of scenario {config.scenario!r}")
    tasks_info = data.tasks
    record = {
        "kind": "multitask",
        "config": config.to_dict(),
        "seed": config.seed,
        "model": source,
        "task_specs": data.specs,
        "tasks": [t.to_dict() for t in tasks_info],
        "n_samples": {s: len(data.split(s)) for s in ("train", "valid", "test")},
        "n_labelled": {t.name: {s: int(sum(t.name in data.samples[i].labels for i in data.split(s)))
                                for s in ("train", "valid", "test")} for t in tasks_info},
        "rejects": data.rejects,
        "versions": versions(),
    }
    existed = _init_run_dir(out, record)
    metrics_path = out / "metrics.jsonl"
    ckpt_dir = out / "checkpoints"
    last, best = ckpt_dir / "last", ckpt_dir / "best"
    for d in (last, best):
        recover_checkpoint(d)

    train_idx, valid_idx = data.split("train"), data.split("valid")
    has_label = data.has_label(list(range(len(data.samples))))
    pools = {t.name: np.array([j for j, i in enumerate(train_idx) if t.name in data.samples[i].labels], np.int64)
             for t in tasks_info}
    n_draws = config.samples_per_epoch or len(train_idx)
    steps_per_epoch = -(-n_draws // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    reweight = config.weighting.name == "reweight"
    restart = reweight and config.weighting.reweight_restart
    if reweight and not restart and config.weighting.reweight_epochs >= config.epochs:
        raise ConfigError(f"weighting.reweight_epochs={config.weighting.reweight_epochs} must be < epochs={config.epochs} "
                          "when weighting.reweight_restart is false")
    extra = {"scenario": config.scenario, "tasks": [t.name for t in tasks_info], "weighting": config.weighting.name,
             "sampling": config.sampling, "pretrained": source}

    def fresh(phase: str):
        """Modules from the initial weights; reweight calibrates with equal weights first."""
        cfg = config
        if phase == "calibrate":
            cfg = dataclasses.replace(config, weighting=dataclasses.replace(config.weighting, name="equal"))
        m, h, w = build_modules(base, tasks_info, cfg)
        return m, h, w, make_optimizer(m, h, w, config)

    state = TrainerState(phase="calibrate" if reweight else "train")
    if existed and (last / "state.json").is_file():
        from m3bert.train.checkpoint import read_state

        phase = read_state(last)["state"].get("phase", state.phase)
        net, heads, weighting, opt = fresh(phase)
        state = load_checkpoint(last, model=net, heads=heads, weighting=weighting, optimizer=opt)
        _truncate_metrics(metrics_path, state.log_lines)
    else:
        net, heads, weighting, opt = fresh(state.phase)
        torch.manual_seed(config.seed)
        if metrics_path.exists():
            metrics_path.unlink()  # a run that never checkpointed starts over
    steps_this_process = 0
    t0 = time.time()

    def checkpoint(directory: Path, extra_info: dict[str, Any] | None = None) -> None:
        state.log_lines = _n_lines(metrics_path)
        save_checkpoint(directory, model=net, heads=heads, weighting=weighting, optimizer=opt, state=state,
                        extra={**extra, **(extra_info or {})})

    while not state.done:
        if state.phase == "calibrate" and state.epoch >= config.weighting.reweight_epochs:
            # Wu et al.: weights = reciprocal of each task's mean validation loss over the first epochs
            mean_losses = {t: float(np.mean(v)) for t, v in state.calib_losses.items()}
            calib = state.calib_losses
            if restart:  # ... then retrain from the initial weights with those weights
                net, heads, weighting, opt = fresh("train")
                torch.manual_seed(config.seed)
                state = TrainerState(phase="train")
            else:  # ... or carry on with the same model and optimiser
                weighting = ReweightWeighting(tasks_info, config.weighting)
                state = dataclasses.replace(state, phase="train", acc={})
            state.calib_losses = calib
            state.reweights = weighting.set_from_losses(mean_losses)  # type: ignore[union-attr]
            _write_line(metrics_path, {"event": "reweight", "mean_valid_loss": mean_losses,
                                       "weights": state.reweights, "restart": restart})
            checkpoint(last)
            continue
        epochs_in_phase = config.weighting.reweight_epochs if state.phase == "calibrate" else config.epochs
        epoch = state.epoch
        # the epoch's draws depend only on (seed, epoch): a restarted run replays the same order
        draws = epoch_draws(pools, len(train_idx), config.sampling, n_draws=n_draws, seed=config.seed, epoch=epoch)
        sample_ids = np.asarray(train_idx, np.int64)[draws]
        if not state.acc:
            state.acc = _new_acc(tasks_info)
        acc = state.acc
        set_train_mode(net, heads, config.scenario)
        bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, disable=not progress, leave=False,
                   desc=f"{state.phase} epoch {epoch + 1}/{epochs_in_phase}", unit="step")
        while state.step_in_epoch < steps_per_epoch:
            b = state.step_in_epoch
            batch = collate(data, sample_ids[b * config.batch_size:(b + 1) * config.batch_size].tolist(), tasks_info)
            losses = batch_losses(net, heads, batch, input_kind=data.input_kind)
            total, used = weighting.combine(losses)
            opt.zero_grad(set_to_none=True)  # absent heads keep grad None: AdamW skips them (no momentum, no decay)
            total.backward()
            if config.optim.max_grad_norm > 0:
                nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.optim.max_grad_norm)
            factor = lr_at(state.global_step, peak=1.0, total_steps=total_steps, cfg=config.schedule)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            opt.step()
            for t, l in losses.items():
                k = int(batch.rows[t].numel())
                acc["loss_sum"][t] += float(l.detach()) * k
                acc["loss_n"][t] += k
                acc["weight_sum"][t] += used[t] * k
            acc["total_sum"] += float(total.detach())
            acc["steps"] += 1
            state.step_in_epoch += 1
            state.global_step += 1
            steps_this_process += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
            if config.log_every and state.global_step % config.log_every == 0:
                _write_line(metrics_path, {"event": "step", "phase": state.phase, "epoch": epoch + 1,
                                           "step": state.global_step, "lr": factor * config.optim.lr,
                                           "loss": {t: float(l.detach()) for t, l in losses.items()}, "weights": used,
                                           "total": float(total.detach())})
            if state.step_in_epoch == steps_per_epoch:
                break
            stop = stop_after_steps is not None and steps_this_process >= stop_after_steps
            if stop or (config.checkpoint_every and state.global_step % config.checkpoint_every == 0):
                checkpoint(last)
            if stop:
                bar.close()
                return {"status": "interrupted", "out": str(out), "global_step": state.global_step}
        bar.close()
        # -- end of epoch: validate, log, select, checkpoint ------------------------------------
        valid = evaluate(net, heads, data, valid_idx, batch_size=config.eval_batch_size)
        score = aggregate_score(valid, tasks_info)
        scheme = parse_sampling(config.sampling)[0]
        line = {
            "event": "epoch", "phase": state.phase, "epoch": epoch + 1, "step": state.global_step,
            "lr_peak": config.optim.lr,
            "train_loss": {t: acc["loss_sum"][t] / acc["loss_n"][t] if acc["loss_n"][t] else None for t in acc["loss_sum"]},
            "train_total": acc["total_sum"] / max(1, acc["steps"]),
            "weights_used": {t: acc["weight_sum"][t] / acc["loss_n"][t] if acc["loss_n"][t] else None for t in acc["loss_sum"]},
            "weights_now": weighting.current_weights(),
            "label_share": label_shares(sample_ids, has_label),
            "task_probability": (None if scheme == "proportional"
                                 else sampling_probs({t: len(p) for t, p in pools.items()}, config.sampling)),
            "valid": valid,
            "valid_aggregate": _finite_or_none(score),
        }
        state.epoch += 1
        state.step_in_epoch = 0
        state.acc = {}
        if state.phase == "calibrate":
            for t, r in valid.items():
                state.calib_losses.setdefault(t, []).append(r["loss"])
        if state.phase == "train" or not restart:  # selection only among models of the final objective's run
            if math.isfinite(score) and (state.best_score is None or score > state.best_score):
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                checkpoint(best, {"epoch": state.epoch, "valid": valid, "valid_aggregate": score})
            else:
                state.bad_epochs += 1
            line["best_aggregate"] = state.best_score
            if config.early_stopping and state.bad_epochs >= config.early_stopping:
                state.done = state.stopped_early = True
            if state.phase == "train" and state.epoch >= config.epochs:
                state.done = True
        line["elapsed_s"] = round(time.time() - t0, 3)
        _write_line(metrics_path, line)
        checkpoint(last)
        if not state.done and stop_after_steps is not None and steps_this_process >= stop_after_steps:
            return {"status": "interrupted", "out": str(out), "global_step": state.global_step}
    _ensure_heads_json(best, heads, weighting)
    return _finish(out, data, config)


def _finish(out: Path, data: PreparedData, config: MultitaskConfig) -> dict[str, Any]:
    """Evaluate the best checkpoint on valid and test; write ``summary.json``."""
    best = out / "checkpoints" / "best"
    if not (best / "config.json").is_file():
        raise CheckpointError(f"{best}: no best checkpoint (no epoch produced a finite validation score)")
    model = Encoder.from_pretrained(best)
    heads, _ = load_heads(best)
    from m3bert.train.checkpoint import read_state

    state = read_state(out / "checkpoints" / "last")["state"]
    summary: dict[str, Any] = {
        "out": str(out),
        "status": "done",
        "scenario": config.scenario,
        "weighting": config.weighting.name,
        "sampling": config.sampling,
        "best_epoch": state.get("best_epoch"),
        "epochs_run": state.get("epoch"),
        "stopped_early": state.get("stopped_early", False),
        "reweights": state.get("reweights"),
        "rejects": len(data.rejects),
    }
    for split in ("valid", "test"):
        idx = data.split(split)
        res = evaluate(model, heads, data, idx, batch_size=config.eval_batch_size) if idx else {}
        summary[split] = res
        summary[f"{split}_aggregate"] = _finite_or_none(aggregate_score(res, data.tasks)) if res else None
    summary["primary_metrics"] = {t.name: t.metrics[0] for t in data.tasks}
    atomic_write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Grid search (paper Table 4) and the entry point used by `m3bert finetune`
# ---------------------------------------------------------------------------------------------


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], dict):
            raise ConfigError(f"grid key {key!r}: unknown section {p!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"grid key {key!r}: unknown setting {parts[-1]!r}")
    node[parts[-1]] = value


def _copy_dir(src: Path, dst: Path) -> None:
    """Copy a checkpoint directory into place atomically (temp copy + renames)."""
    tmp = dst.with_name(f".{dst.name}.copy")
    old = dst.with_name(f".{dst.name}.old-copy")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    shutil.copytree(src, tmp)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    if old.exists():
        shutil.rmtree(old)


def _point_name(i: int, point: dict[str, Any]) -> str:
    short = {"batch_size": "bs", "optim.lr": "lr", "epochs": "ep", "enrichment.dropout": "do"}
    return f"p{i:02d}-" + "-".join(f"{short.get(k, k.replace('.', '_'))}{v:g}" if isinstance(v, float)
                                    else f"{short.get(k, k.replace('.', '_'))}{v}" for k, v in point.items())


def run_finetune(
    config: MultitaskConfig,
    *,
    model: str | Path | Encoder,
    tasks: Sequence[Any],
    out: str | Path,
    grid: str | dict[str, list[Any]] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``m3bert finetune``: one run, or a grid of runs (``grid="paper"``) keeping the best by validation.

    Grid points are sub-runs ``out/grid/pNN-.../`` sharing one input cache (``out/cache``); each
    resumes on its own, finished ones are skipped. The best point's checkpoints are copied to
    ``out/checkpoints/{best,last}`` so ``out`` is a run directory like any other. ``cache_dir``
    (default ``out/cache``) may be shared between runs over the same audio and encoder.
    """
    out = Path(out)
    if grid is None:
        return train_multitask(config, model=model, tasks=tasks, out=out, cache_dir=cache_dir, progress=progress)
    points = grid_points(grid)
    if isinstance(model, Encoder):
        base, source = model, "<in memory>"
    else:
        base, source = resolve_encoder(model)
    data = prepare_data(tasks, base, scenario=config.scenario, cache_dir=Path(cache_dir or out / "cache"),
                        progress=progress)
    record = {"kind": "multitask", "config": config.to_dict(), "seed": config.seed, "model": source,
              "task_specs": data.specs, "tasks": [t.to_dict() for t in data.tasks],
              "grid": grid if isinstance(grid, str) else {k: list(v) for k, v in grid.items()},
              "versions": versions()}
    _init_run_dir(out, record)
    results: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for i, point in enumerate(points):
        d = config.to_dict()
        for k, v in point.items():
            _set_dotted(d, k, v)
        cfg = MultitaskConfig.from_dict(d)
        name = _point_name(i, point)
        sub = out / "grid" / name
        if (sub / "summary.json").is_file():  # finished before an interruption of the grid
            summary = read_json(sub / "summary.json")
        else:
            if progress:
                print(f"grid point {i + 1}/{len(points)}: {name}", flush=True)
            summary = train_multitask(cfg, model=base, out=sub, data=data, progress=progress)
        r = {"name": name, "point": point, "valid_aggregate": summary.get("valid_aggregate"),
             "test_aggregate": summary.get("test_aggregate"), "best_epoch": summary.get("best_epoch")}
        results.append(r)
        # keep checkpoints of the best point so far only (a Small model is ~120 MB per checkpoint)
        if r["valid_aggregate"] is not None and (best is None or r["valid_aggregate"] > best["valid_aggregate"]):
            if best is not None:
                shutil.rmtree(out / "grid" / best["name"] / "checkpoints", ignore_errors=True)
            best = r
        elif (sub / "checkpoints").exists():
            shutil.rmtree(sub / "checkpoints", ignore_errors=True)
        atomic_write_json(out / "grid.json", {"grid": record["grid"], "points": results,
                                              "best": None if best is None else best["name"]})
    if best is None:
        raise DataError(f"{out}: no grid point produced a finite validation score")
    src = out / "grid" / best["name"]
    for name in ("best", "last"):
        _copy_dir(src / "checkpoints" / name, out / "checkpoints" / name)
    summary = read_json(src / "summary.json")
    summary.update({"out": str(out), "grid": record["grid"], "best_point": best["name"], "best_params": best["point"],
                    "points": results})
    atomic_write_json(out / "summary.json", summary)
    _write_line(out / "metrics.jsonl", {"event": "grid", "best": best["name"], "points": results})
    return summary
