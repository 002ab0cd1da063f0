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

Task specs: ``"NAME[:PATH]"`` for a registered task, or ``"SCHEME:ARG"`` for a *task scheme*
(:func:`register_task_scheme`): a task made from the argument itself, such as the user's own
labelled data ``folder:/data/mysongs`` and ``csv:/data/labels.csv`` (``m3bert.tasks.datasets.user``).

Split hygiene (:meth:`TaskData.validate`), the rules every loader's output must pass:

* clip ids are unique within a task;
* a group (song) lies in one split;
* no audio is in two splits: two clips of different splits whose files are the same (after
  resolving symlinks and ``..``) and whose time ranges overlap are refused, whatever their clip
  ids and groups. Identical spans are the plain case; *overlapping but not identical* spans are
  refused too, because a test excerpt that overlaps a train excerpt has been heard in training.
  Non-overlapping ranges of one file in different splits are allowed (touching ends are not an
  overlap), and so are any ranges of one file within one split (chunked datasets). Copies of a
  file under another path are not detected (that would need content hashes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry

LABEL_TYPES = ("multiclass", "multilabel", "regression")
TAXONOMY = ("acoustic", "performance", "score", "high-level")  # MARBLE (Yuan 2023, ch. 3)
USER_TAXONOMY = "user"  # the level of folder:/csv: tasks unless told one of TAXONOMY
SPLITS = ("train", "valid", "test")
# how a task's splits were made: "predefined" = official / published lists or a fixed rule (hash,
# folder, corpus build); "random" = drawn by the loader from its ``seed`` (no split exists).
SPLIT_SOURCES = ("predefined", "random")
AUTO = "auto"  # Task.label_type of a scheme task before loading: the data decides
# metrics of tasks that declare none (folder:/csv: tasks), primary first; tagging scores both AUCs (MARBLE)
DEFAULT_METRICS = {
    "multiclass": ["accuracy", "macro_f1"],
    "multilabel": ["roc_auc_macro", "pr_auc_macro"],
    "regression": ["r2"],
}
OVERLAP_TOLERANCE_S = 1e-6  # spans closer than this do not count as overlapping (float noise at chunk edges)


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
    split_source: str = "predefined"  # one of SPLIT_SOURCES: "random" when the loader drew the split from a seed

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    def validate(self) -> "TaskData":
        """Check label types/ranges and split hygiene (module doc); raise ``DataError`` naming the clip(s)."""
        if self.label_type not in LABEL_TYPES:
            raise DataError(f"task {self.task}: label_type={self.label_type!r}, expected one of {LABEL_TYPES}")
        if self.split_source not in SPLIT_SOURCES:
            raise DataError(f"task {self.task}: split_source={self.split_source!r}, expected one of {SPLIT_SOURCES}")
        n = len(self.classes)
        group_split: dict[str, str] = {}
        by_id: dict[str, Clip] = {}
        for c in self.clips:
            if c.split not in SPLITS:
                raise DataError(f"task {self.task}, clip {c.clip_id}: split={c.split!r}, expected one of {SPLITS}")
            first = by_id.setdefault(c.clip_id, c)
            if first is not c:
                raise DataError(
                    f"task {self.task}: clip id {c.clip_id!r} is used twice: {_describe(first)} and {_describe(c)}; "
                    "clip ids must be unique"
                )
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
        _check_no_audio_in_two_splits(self.task, self.clips)
        return self

    def target_matrix(self, clips: Iterable[Clip]) -> np.ndarray:
        """Targets of ``clips`` stacked: ``(n,)`` int64 for multiclass, ``(n, n_classes)`` float32 otherwise."""
        clips = list(clips)
        if self.label_type == "multiclass":
            return np.asarray([int(c.target) for c in clips], dtype=np.int64)
        return np.stack([np.asarray(c.target, dtype=np.float32) for c in clips]) if clips else np.zeros((0, len(self.classes)), np.float32)


def _describe(c: Clip) -> str:
    """How messages name a clip: id, split, file and time range."""
    span = ""
    if c.start is not None or c.end is not None:
        span = f" [{c.start if c.start is not None else 0}, {c.end if c.end is not None else 'end'})"
    return f"clip {c.clip_id!r} ({c.split}, {c.path}{span})"


def _real_paths(clips: Sequence[Clip]) -> list[str]:
    """Each clip's file with symlinks and ``..`` resolved; folders are resolved once each."""
    dirs: dict[str, str] = {}
    out = []
    islink, realpath = os.path.islink, os.path.realpath
    for c in clips:
        p = os.fspath(c.path)
        if not os.path.isabs(p):
            p = os.path.abspath(p)
        parent, _, name = p.rpartition(os.sep)
        real_parent = dirs.get(parent)
        if real_parent is None:  # resolves symlinks and ".." of the folder
            real_parent = dirs[parent] = realpath(parent or os.sep)
        full = real_parent.rstrip(os.sep) + os.sep + name
        out.append(realpath(full) if islink(full) else full)
    return out


def _check_no_audio_in_two_splits(task: str, clips: Sequence[Clip]) -> None:
    """Refuse two clips of different splits over overlapping time ranges of one file (module doc)."""
    by_file: dict[str, list[Clip]] = {}
    for c, real in zip(clips, _real_paths(clips)):
        by_file.setdefault(real, []).append(c)
    for real, mine in by_file.items():
        if len({c.split for c in mine}) < 2:
            continue  # one split: chunks of one file may overlap or repeat freely
        # sweep by start: for each earlier clip of another split, the one reaching furthest decides
        spans = sorted(((float(c.start or 0.0), math.inf if c.end is None else float(c.end), c) for c in mine),
                       key=lambda t: (t[0], t[1]))
        furthest: dict[str, tuple[float, Clip]] = {}
        for start, end, c in spans:
            for split, (other_end, other) in furthest.items():
                if split != c.split and min(end, other_end) - start > OVERLAP_TOLERANCE_S:
                    what = "the same excerpt" if (other.start, other.end) == (c.start, c.end) else "overlapping excerpts"
                    raise DataError(
                        f"task {task}: {_describe(other)} and {_describe(c)} are {what} of one audio file ({real}) "
                        f"in splits {other.split!r} and {c.split!r}; audio heard in training must not be tested on "
                        "(different clip ids or groups do not make it new audio)"
                    )
            if c.split not in furthest or end > furthest[c.split][0]:
                furthest[c.split] = (end, c)


@dataclass
class Task:
    """A registered downstream task (or one made by a task scheme from its spec: ``folder:PATH``)."""

    name: str  # e.g. "gtzan-genre"
    label_type: str  # one of LABEL_TYPES; AUTO for a scheme task until it is loaded
    taxonomy: str  # one of TAXONOMY (USER_TAXONOMY for scheme tasks by default)
    metrics: list[str]  # metric names (m3bert.tasks.metrics), primary first; scheme tasks: set at load
    loader: Callable[..., TaskData]  # loader(root: Path | None, **options) -> TaskData
    description: str = ""  # one line for reports
    default_root: str | None = None  # used when no ":PATH" is given (built-in corpus tasks)
    options: dict[str, Any] = field(default_factory=dict)  # default loader options
    score_metrics: list[str] | None = None  # MARBLE: the task score is the mean of these (default: primary)
    infers_label_type: bool = False  # True: the loaded data decides label_type and metrics (DEFAULT_METRICS)

    @property
    def primary_metric(self) -> str:
        if not self.metrics:
            raise ConfigError(f"task {self.name}: no metrics yet (its label type is known once it is loaded)")
        return self.metrics[0]

    def load(self, root: str | Path | None = None, **options: Any) -> TaskData:
        root = root if root is not None else self.default_root
        data = self.loader(Path(root) if root is not None else None, **{**self.options, **options})
        data.task = self.name
        data.validate()
        if self.infers_label_type:
            self.label_type = data.label_type
            self.metrics = list(DEFAULT_METRICS[data.label_type])
            self.score_metrics = list(self.metrics) if data.label_type == "multilabel" else None
        elif data.label_type != self.label_type:
            raise DataError(f"task {self.name}: the loader returned {data.label_type} data, expected {self.label_type}")
        return data


TASKS = Registry("task")  # filled by m3bert.tasks.datasets and m3bert.tasks.builtin (imported by m3bert.tasks)
# scheme name -> make(arg) -> (Task, root): tasks made from a spec's argument (folder:PATH, csv:FILE)
TASK_SCHEMES = Registry("task scheme")


def register_task(task: Task) -> Task:
    if task.label_type not in LABEL_TYPES:
        raise ConfigError(f"task {task.name}: label_type={task.label_type!r}, expected one of {LABEL_TYPES}")
    if task.taxonomy not in TAXONOMY:
        raise ConfigError(f"task {task.name}: taxonomy={task.taxonomy!r}, expected one of {TAXONOMY}")
    if task.name in TASK_SCHEMES:
        raise ConfigError(f"task {task.name}: the name is a task scheme ({task.name}:ARG)")
    return TASKS.add(task.name, task)


def register_task_scheme(name: str, make: Callable[[str], tuple[Task, str]]) -> Callable[[str], tuple[Task, str]]:
    """Register ``"<name>:ARG"`` specs: ``make(ARG)`` returns a fresh :class:`Task` and its root."""
    if name in TASKS:
        raise ConfigError(f"task scheme {name!r}: a task of that name is registered")
    return TASK_SCHEMES.add(name, make)


def available_tasks() -> list[str]:
    return sorted(TASKS)


def available_task_schemes() -> list[str]:
    return sorted(TASK_SCHEMES)


def get_task(name: str) -> Task:
    if name not in TASKS:
        schemes = ", ".join(f"'{s}:...'" for s in sorted(TASK_SCHEMES))
        raise ConfigError(f"unknown task {name!r}; registered: {sorted(TASKS)}"
                          + (f"; or your own labelled data: {schemes}" if schemes else ""))
    return TASKS[name]


def task_for_data(data: TaskData) -> Task:
    """The registered task of loaded ``data``, or (data from a scheme or built by hand) a task with
    the default metrics of its label type."""
    if data.task in TASKS:
        return TASKS[data.task]
    metrics = list(DEFAULT_METRICS.get(data.label_type, []))
    return Task(name=data.task, label_type=data.label_type, taxonomy=USER_TAXONOMY, metrics=metrics,
                loader=lambda root, **kw: data, description=f"{data.task} (loaded data)",
                score_metrics=list(metrics) if data.label_type == "multilabel" else None)


def parse_task_spec(spec: str) -> tuple[Task, str | None]:
    """``"gtzan-genre:/data/gtzan"`` -> (task, "/data/gtzan"); ``"builtin-dance"`` -> (task, None);
    ``"folder:/data/mysongs"`` -> (a new task made by the ``folder`` scheme, "/data/mysongs")."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"task spec {spec!r}: expected 'NAME[:PATH]' (e.g. 'gtzan-genre:/data/gtzan' or 'folder:/data/mysongs')")
    name, _, root = spec.partition(":")
    if name in TASK_SCHEMES and name not in TASKS:
        if not root:
            raise ConfigError(f"task spec {spec!r}: the {name} scheme needs an argument, '{name}:PATH'")
        return TASK_SCHEMES[name](root)
    return get_task(name), (root or None)


def load_task(spec: str, **options: Any) -> TaskData:
    task, root = parse_task_spec(spec)
    if root is None and task.default_root is None:
        raise ConfigError(f"task {task.name} needs a dataset path: use '{task.name}:/path/to/dataset'")
    return task.load(root, **options)
