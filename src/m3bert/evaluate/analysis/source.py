"""What the analysis reads: items (audio files or a task's clips) and frame-level hidden states.

* :func:`items_from_audio` / :func:`items_from_task` / :func:`resolve_items`: the list of
  :class:`Item` (id, file, time range, group, label), sorted by id, optionally a seeded subset.
* :class:`EmbedderSource`: frame-level hidden states of every layer of a model
  (:meth:`m3bert.embed.Embedder.iter_embed` with ``level="frame"``), one ``(T, U_l)`` array per layer.
* :func:`random_twin`: a randomly initialised model of the *same architecture and input features*
  (the baseline: "encoded" should mean "more than a random network").
* :func:`descriptor_set_for`: the ``descriptors`` feature set with the model's frame geometry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from m3bert.audio import find_audio_files, load_audio
from m3bert.core.errors import ConfigError, DataError
from m3bert.embed import Embedder
from m3bert.features import get_feature_set
from m3bert.features.memo import FeatureMemo
from m3bert.tasks import SPLITS, Clip, load_task, parse_task_spec


@dataclass
class Item:
    """One analysed excerpt."""

    item_id: str  # unique: relative path of a file, or a task's clip id
    path: Path  # audio file
    group: str  # song / piece: the probe's train/test parts never share one
    start: float = 0.0  # seconds
    end: float | None = None  # seconds; None = to the end
    label: Any = None  # a class name, a list of tags, or a number (task input); None for plain audio
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self, *, sample_rate: int, min_samples: int) -> np.ndarray:
        duration = None if self.end is None else float(self.end - self.start)
        return load_audio(self.path, sample_rate=sample_rate, offset=float(self.start), duration=duration,
                          min_samples=min_samples)


def items_from_audio(paths: Sequence[str | os.PathLike]) -> list[Item]:
    """Audio files and/or folders (recursive) -> items; ids are paths relative to the folder given."""
    out: dict[str, Item] = {}
    for p in paths:
        root = Path(p)
        for f in find_audio_files(root):
            rel = f.name if root.is_file() else f.relative_to(root).as_posix()
            item_id = rel if rel not in out else f.as_posix()
            out[item_id] = Item(item_id, f, group=item_id)
    if not out:
        raise DataError(f"{', '.join(map(str, paths))}: no audio files found (expected .wav/.flac/.mp3/... files)")
    return [out[k] for k in sorted(out)]


def _label_of(clip: Clip, label_type: str, classes: list[str]) -> Any:
    if label_type == "multiclass":
        return classes[int(clip.target)]
    t = np.asarray(clip.target, dtype=np.float64).reshape(-1)
    if label_type == "multilabel":
        return [classes[i] for i in np.flatnonzero(t > 0.5)]
    return float(t[0]) if t.size == 1 else [float(v) for v in t]


def items_from_task(spec: str, *, split: str = "test") -> tuple[list[Item], dict[str, Any]]:
    """A task spec's clips of one split -> items (+ a description of the task for the report)."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}; expected one of {list(SPLITS)}")
    data = load_task(spec)
    clips = data.split(split)
    if not clips:
        raise DataError(f"task {spec}: no clips in split {split!r} (splits: "
                        f"{ {s: len(data.split(s)) for s in SPLITS} })")
    items = [Item(c.clip_id, Path(c.path), group=str(c.group), start=float(c.start or 0.0), end=c.end,
                  label=_label_of(c, data.label_type, data.classes)) for c in clips]
    info = {"task": data.task, "spec": spec, "split": split, "label_type": data.label_type, "classes": data.classes,
            "n_clips": len(items)}
    return sorted(items, key=lambda it: it.item_id), info


def resolve_items(inputs: Sequence[str], *, split: str = "test") -> tuple[list[Item], dict[str, Any] | None]:
    """``AUDIO_OR_TASK``: existing paths are audio (files or folders); otherwise one task spec."""
    if all(Path(p).exists() for p in inputs):
        return items_from_audio(inputs), None
    if len(inputs) == 1:
        try:
            parse_task_spec(inputs[0])
        except ConfigError as exc:
            raise ConfigError(f"{inputs[0]!r} is neither an existing audio file or folder nor a task spec ({exc})") from None
        return items_from_task(inputs[0], split=split)
    missing = [p for p in inputs if not Path(p).exists()]
    raise DataError(f"no such file or folder: {missing}; expected audio files/folders, or one task spec such as "
                    "'builtin-dance:CORPUS'")


def subset(items: list[Item], max_items: int | None, *, seed: int) -> list[Item]:
    """At most ``max_items`` items: a seeded choice, kept in id order (all when ``None``)."""
    if max_items is None or len(items) <= int(max_items):
        return items
    if int(max_items) < 1:
        raise ConfigError(f"max_items={max_items}; expected >= 1")
    pick = np.sort(np.random.default_rng(seed).choice(len(items), size=int(max_items), replace=False))
    return [items[i] for i in pick]


def probe_test_groups(items: Sequence[Item], *, fraction: float, seed: int) -> set[str]:
    """The groups whose frames form the probe's test part: a seeded ``fraction`` of the groups
    (at least one, and at least one left for training; none with a single group)."""
    groups = sorted({it.group for it in items})
    if len(groups) < 2:
        return set()
    n_test = min(len(groups) - 1, max(1, int(round(fraction * len(groups)))))
    perm = np.random.default_rng(seed).permutation(len(groups))
    return {groups[i] for i in perm[:n_test]}


# ---------------------------------------------------------------------------------------------
# models


def layer_names(embedder: Embedder) -> list[str]:
    """``input``, ``layer1`` .. ``layerL`` (+ ``enrichment`` for an M3BERT model)."""
    n = int(embedder.n_hidden_states)
    names = ["input"] + [f"layer{i}" for i in range(1, n)]
    if getattr(embedder.encoder, "enrichment", None) is not None:
        names[-1] = "enrichment"
    return names


class EmbedderSource:
    """Frame-level hidden states of every layer of an :class:`Embedder`, ``[(T, U_l)]``."""

    def __init__(self, embedder: Embedder, *, name: str, spec: str, batch_size: int = 8) -> None:
        self.embedder = embedder
        self.name = name
        self.spec = spec
        self.batch_size = int(batch_size)
        self.layer_names = layer_names(embedder)
        self.layer_dims = list(embedder.layer_dims)
        # iter_embed stacks layers of one width: one call per distinct width (usually one)
        widths: dict[int, list[int]] = {}
        for i, d in enumerate(self.layer_dims):
            widths.setdefault(int(d), []).append(i)
        self._by_width = list(widths.values())

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def sample_rate(self) -> int:
        return int(self.embedder.sample_rate)

    @property
    def feature_set(self) -> Any:
        return self.embedder.feature_set

    def describe(self) -> dict[str, Any]:
        enc = self.embedder.encoder
        return {"name": self.name, "spec": self.spec, "model_id": self.model_id, "layers": self.layer_names,
                "layer_dims": self.layer_dims, "architecture": enc.cfg.to_dict(),
                "n_parameters": int(enc.num_parameters())}

    def frames(self, waveform: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(self.layer_dims)
        for idx in self._by_width:
            (res,) = list(self.embedder.iter_embed([waveform], sample_rate=self.sample_rate, level="frame",
                                                   layers=list(idx), batch_size=self.batch_size, progress=False,
                                                   errors="raise"))
            states, _times = res.output
            for j, i in enumerate(idx):
                out[i] = np.asarray(states[j], dtype=np.float32)
        return out  # type: ignore[return-value]


def random_twin(embedder: Embedder, *, seed: int, memo: FeatureMemo | None = None) -> Embedder:
    """A freshly initialised encoder of ``embedder``'s architecture (seeded), reading the same
    input features (same feature set and CMVN statistics) with the same windows."""
    enc = embedder.encoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        twin = type(enc)(enc.cfg, feature_config=enc.feature_config)  # any architecture, not only m2bert
    twin.eval().requires_grad_(False)
    return Embedder(twin, feature_set=embedder.feature_set, device=embedder.device, dtype=embedder.dtype,
                    window_frames=embedder.window_frames, hop_frames=embedder.hop_frames,
                    source=f"random init of {embedder.source} (seed {seed})", feature_memo=memo)


def descriptor_set_for(feature_set: Any, *, f0: bool = True) -> Any:
    """The ``descriptors`` feature set frame-aligned with ``feature_set`` (its sample rate, n_fft, hop)."""
    cfg = getattr(feature_set, "config", None)
    n_fft = int(getattr(cfg, "n_fft", 2048))
    return get_feature_set("descriptors", sample_rate=int(feature_set.sample_rate), hop_length=int(feature_set.hop_length),
                           n_fft=n_fft, f0=bool(f0))
