"""Enrichment data: task data -> partial-label samples -> cached model inputs -> mixed batches.

* :func:`load_task_data` / :func:`check_task_data`: task specs or :class:`TaskData` -> validated
  data; what would make a task's loss or metric meaningless is refused before any training.
* :func:`build_samples`: the clips of all tasks merged into :class:`Sample` s, one per distinct
  audio excerpt, each carrying the labels of every task that annotates it (usually those of the
  dataset it comes from: partial labels).
* :func:`prepare_data`: each sample's model input cached once on disk by the same
  :class:`~m3bert.embed.Embedder` the exported model uses: the stitched last hidden states of the
  frozen encoder (``frozen``) or its normalised feature windows (``finetune`` / ``scratch``).
* :func:`collate`: a mixed :class:`Batch` of those inputs plus each task's labelled rows; for the
  ``frames`` inputs of Kim et al.'s multi-source training (:mod:`m3bert.enrich.multisource`: raw
  feature frames of the whole excerpt) a random crop of ``crop_frames`` per sample, normalised
  as the Embedder normalises a window (:func:`collate_crops`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from m3bert.audio import load_audio
from m3bert.core.errors import ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_save_npy, atomic_write_json, config_hash, read_json
from m3bert.core.numeric import standardisation
from m3bert.core.progress import progress as progress_bar
from m3bert.embed import Embedder
from m3bert.enrich.heads import TaskInfo
from m3bert.models.encoder import Encoder
from m3bert.tasks.registry import TaskData, get_task, load_task
from m3bert.windows import window_owners

DEFAULT_METRICS = {
    "multiclass": ["accuracy", "macro_f1"],
    "multilabel": ["roc_auc_macro", "pr_auc_macro"],
    "regression": ["r2"],
}


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
    input_kind: str  # "hidden" (frozen: stitched last hidden states), "windows" (normalised feature windows), "frames" (raw frames, cropped per step)
    arrays: list[Path]  # per sample: cached .npy (n_frames, H) or (sum of window lengths, C) or raw (n_frames, C)
    starts: list[list[int]]  # per sample: window start frames ("windows" kind)
    n_frames: list[int]  # per sample: frames of the whole excerpt
    window_frames: int  # encoder window (the model's max_frames)
    rejects: list[dict[str, str]] = field(default_factory=list)  # excerpts whose audio failed
    specs: list[str] = field(default_factory=list)  # task specs as given (for run.json)
    feature_set: Any = None  # "frames": the FeatureSet normalising a crop (corpus CMVN statistics included)
    crop_frames: int = 0  # "frames": frames per training crop
    factors: list[dict[str, Any]] = field(default_factory=list)  # "frames": the label-factor models (for run.json)

    def split(self, name: str) -> list[int]:
        return [i for i, s in enumerate(self.samples) if s.split == name]

    def has_label(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return {t.name: np.array([t.name in self.samples[i].labels for i in indices], dtype=bool) for t in self.tasks}


def _task_metrics(data: Any) -> list[str]:
    """The task's registered metrics, else the defaults of its label type."""
    try:
        return list(get_task(data.task).metrics)
    except ConfigError:
        return list(DEFAULT_METRICS[data.label_type])


def load_task_data(tasks: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """Task specs (``"builtin-dance:/corpus"``) or ready :class:`TaskData` -> validated TaskData."""
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
            mean, std = standardisation(data.target_matrix(data.split("train")), min_std=1e-6)
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
    base = copy.deepcopy(encoder)
    if getattr(base, "enrichment", None) is not None:
        base.enrichment = None
        base.cfg = dataclasses.replace(base.cfg, enrichment=None)
    return Embedder(base)


def _load_excerpt(sample: Sample, sample_rate: int, min_samples: int) -> np.ndarray:
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
    datas, specs = load_task_data(tasks)
    samples, infos = build_samples(datas)
    embedder = _base_embedder(encoder)
    min_samples = int(getattr(embedder.feature_set, "min_samples", 1))
    kind = "hidden" if scenario == "frozen" else "windows"
    ident = embedder.model_id if kind == "hidden" else config_hash(encoder.feature_config or {})
    root = Path(cache_dir) / f"{kind}-{ident}"
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "index.json"
    index: dict[str, Any] = read_json(index_path) if index_path.is_file() else {}
    kept: list[Sample] = []
    rejects: list[dict[str, str]] = []
    arrays, starts, n_frames = [], [], []
    bar = progress_bar(samples, desc=f"caching {'hidden states' if kind == 'hidden' else 'features'}", disable=not progress,
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
                    prep = embedder.prepare(wave, sample_rate=embedder.sample_rate)
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


def collate(data: PreparedData, indices: Sequence[int], tasks: Sequence[TaskInfo], *,
            crop_seed: Sequence[int] | None = None, only_task: str | None = None) -> Batch:
    """Stack the cached inputs of ``indices`` and gather every task's labels (partial labels).

    ``frames`` inputs are cropped (:func:`collate_crops`: random crops seeded by ``crop_seed``, or
    centre crops without it); ``only_task`` keeps that task's labels only (Algorithm 1's batches).
    """
    if data.input_kind == "frames":
        return collate_crops(data, indices, tasks, seed=crop_seed, only_task=only_task)
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
    return Batch(
        inputs=torch.from_numpy(x),
        lengths=torch.tensor([p.shape[0] for p in pieces], dtype=torch.long),
        frame_weights=torch.from_numpy(w),
        owner=torch.tensor(owner, dtype=torch.long),
        n_samples=len(indices),
        **_labels(data, indices, tasks, only_task),
    )


def collate_crops(data: PreparedData, indices: Sequence[int], tasks: Sequence[TaskInfo], *,
                  seed: Sequence[int] | None = None, only_task: str | None = None) -> Batch:
    """One window per sample: ``crop_frames`` frames at a random offset (``seed``, e.g. (run seed,
    epoch, step): a pure function of it, so resume is exact) or the centre (``seed=None``: evaluation),
    normalised by ``data.feature_set`` as the Embedder normalises a window. A shorter excerpt is
    taken whole (and padded, with its length)."""
    rng = np.random.default_rng([int(v) for v in seed]) if seed is not None else None
    crop = int(data.crop_frames)
    pieces = []
    for i in indices:
        arr = np.load(data.arrays[i], mmap_mode="r")
        n = arr.shape[0]
        if n <= crop:
            start = 0
        else:
            start = int(rng.integers(0, n - crop + 1)) if rng is not None else (n - crop) // 2
        pieces.append(np.asarray(data.feature_set.normalize(np.asarray(arr[start:start + crop])), np.float32))
    t_max = max(p.shape[0] for p in pieces)
    x = np.zeros((len(pieces), t_max, pieces[0].shape[1]), np.float32)
    w = np.zeros((len(pieces), t_max), np.float32)
    for j, p in enumerate(pieces):
        x[j, : p.shape[0]] = p
        w[j, : p.shape[0]] = 1.0
    return Batch(inputs=torch.from_numpy(x), lengths=torch.tensor([p.shape[0] for p in pieces], dtype=torch.long),
                 frame_weights=torch.from_numpy(w), owner=torch.arange(len(pieces), dtype=torch.long),
                 n_samples=len(indices), **_labels(data, indices, tasks, only_task))


def _labels(data: PreparedData, indices: Sequence[int], tasks: Sequence[TaskInfo],
            only_task: str | None) -> dict[str, Any]:
    """Each task's labelled rows, targets and masks (``only_task``: the other tasks get no rows)."""
    rows, targets, masks = {}, {}, {}
    for t in tasks:
        r = [row for row, i in enumerate(indices) if t.name in data.samples[i].labels
             and (only_task is None or t.name == only_task)]
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
    return {"rows": rows, "targets": targets, "masks": masks}
