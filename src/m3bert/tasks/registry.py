"""Task registry: each downstream task = loader + label type + metrics + split + taxonomy level.

Shared vocabulary of the evaluation side (also used by multi-task enrichment):

* :class:`Clip` — one labelled excerpt of one audio file (optionally a time range of it),
  with its split and its *group* (song / piece id, so splits are by song).
* :class:`TaskData` — what a loader returns: the clips of every split plus class names.
* :class:`Task` — a registered task; ``get_task("gtzan-genre")``; ``load_task("gtzan-genre:/data/gtzan")``.

Targets:
  multiclass -> ``int`` class index;
  multilabel -> ``np.ndarray`` float32 ``(n_classes,)`` of 0/1, with optional ``target_mask``
  (same shape, 1 = the label is known; OpenMIC);
  regression -> ``np.ndarray`` float32 ``(n_targets,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry

LABEL_TYPES = ("multiclass", "multilabel", "regression")
TAXONOMY = ("acoustic", "performance", "score", "high-level")  # MARBLE (Yuan 2023, ch. 3)
SPLITS = ("train", "valid", "test")


@dataclass
class Clip:
    """One labelled example: an audio file, or the ``[start, end)`` seconds of one."""

    clip_id: str  # unique within the task
    path: Path  # audio file
    target: Any  # see module docstring
    split: str  # "train" | "valid" | "test"
    group: str  # song/piece id: clips of one group never straddle splits
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None  # seconds; None = to the end
    target_mask: np.ndarray | None = None  # multilabel only: 1 where the label is known
    meta: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping


@dataclass
class TaskData:
    """Everything a loader returns for one task."""

    task: str  # registered task name
    label_type: str  # one of LABEL_TYPES
    classes: list[str]  # class/tag names (multiclass/multilabel) or target names (regression)
    clips: list[Clip]  # all splits
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) with skip_missing
    root: str | None = None  # where it was read from

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    def validate(self) -> "TaskData":
        """Check label types/ranges and split hygiene; raise ``DataError`` naming the clip."""
        if self.label_type not in LABEL_TYPES:
            raise DataError(f"task {self.task}: label_type={self.label_type!r}, expected one of {LABEL_TYPES}")
        n = len(self.classes)
        group_split: dict[str, str] = {}
        for c in self.clips:
            if c.split not in SPLITS:
                raise DataError(f"task {self.task}, clip {c.clip_id}: split={c.split!r}, expected one of {SPLITS}")
            prev = group_split.setdefault(c.group, c.split)
            if prev != c.split:
                raise DataError(
                    f"task {self.task}: group {c.group!r} appears in splits {prev!r} and {c.split!r} (splits must be by song)"
                )
            if self.label_type == "multiclass":
                if not isinstance(c.target, (int, np.integer)) or not 0 <= int(c.target) < n:
                    raise DataError(f"task {self.task}, clip {c.clip_id}: target={c.target!r}, expected a class index in [0, {n})")
            else:
                t = np.asarray(c.target, dtype=np.float32)
                if t.shape != (n,):
                    raise DataError(f"task {self.task}, clip {c.clip_id}: target shape {t.shape}, expected ({n},)")
                if not np.all(np.isfinite(t)):
                    raise DataError(f"task {self.task}, clip {c.clip_id}: non-finite target {t.tolist()}")
                if self.label_type == "multilabel" and not np.all((t == 0) | (t == 1)):
                    raise DataError(f"task {self.task}, clip {c.clip_id}: multilabel target must be 0/1, got {t.tolist()}")
        return self

    def target_matrix(self, clips: Iterable[Clip]) -> np.ndarray:
        """Targets of ``clips`` stacked: ``(n,)`` int64 for multiclass, ``(n, n_classes)`` float32 otherwise."""
        clips = list(clips)
        if self.label_type == "multiclass":
            return np.asarray([int(c.target) for c in clips], dtype=np.int64)
        return np.stack([np.asarray(c.target, dtype=np.float32) for c in clips]) if clips else np.zeros((0, len(self.classes)), np.float32)


@dataclass
class Task:
    """A registered downstream task."""

    name: str  # e.g. "gtzan-genre"
    label_type: str  # one of LABEL_TYPES
    taxonomy: str  # one of TAXONOMY
    metrics: list[str]  # metric names (m3bert.tasks.metrics), primary first
    loader: Callable[..., TaskData]  # loader(root: Path | None, **options) -> TaskData
    description: str = ""  # one line for reports
    default_root: str | None = None  # used when no ":PATH" is given (built-in corpus tasks)
    options: dict[str, Any] = field(default_factory=dict)  # default loader options
    score_metrics: list[str] | None = None  # MARBLE: the task score is the mean of these (default: primary)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def load(self, root: str | Path | None = None, **options: Any) -> TaskData:
        root = root if root is not None else self.default_root
        data = self.loader(Path(root) if root is not None else None, **{**self.options, **options})
        data.task = self.name
        return data.validate()


TASKS = Registry("task")  # filled by m3bert.tasks.datasets and m3bert.tasks.builtin (imported by m3bert.tasks)


def register_task(task: Task) -> Task:
    if task.label_type not in LABEL_TYPES:
        raise ConfigError(f"task {task.name}: label_type={task.label_type!r}, expected one of {LABEL_TYPES}")
    if task.taxonomy not in TAXONOMY:
        raise ConfigError(f"task {task.name}: taxonomy={task.taxonomy!r}, expected one of {TAXONOMY}")
    return TASKS.add(task.name, task)


def available_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    return TASKS.lookup(name)


def parse_task_spec(spec: str) -> tuple[Task, str | None]:
    """``"gtzan-genre:/data/gtzan"`` -> (task, "/data/gtzan"); ``"builtin-dance"`` -> (task, None)."""
    name, _, root = spec.partition(":")
    return get_task(name), (root or None)


def load_task(spec: str, **options: Any) -> TaskData:
    task, root = parse_task_spec(spec)
    if root is None and task.default_root is None:
        raise ConfigError(f"task {task.name} needs a dataset path: use '{task.name}:/path/to/dataset'")
    return task.load(root, **options)
