"""Registered tasks over a built-in corpus folder (``builtin-dance:/path/to/CORPUS``).

Each loader reads ``CORPUS/metadata.jsonl`` and returns only the clips that carry its label;
groups are compositions (``group``), so splits are by piece. Class vocabularies come from
``CORPUS/corpus.json`` (written at build time), so a corpus keeps meaning what it meant when it
was built.

``builtin-tempo-class`` (issue 17) is the tempo task redesigned to be learnable: three classes
of the quarter-note tempo *modulo octaves*, folded into [72, 144) BPM and cut at 94.5 and 117.5
(the corpus draws 72-140 BPM uniformly, so the classes hold a third each). Why not the BPM
regression of ``builtin-tempo`` (kept, unchanged): the label is a notated quarter-note tempo,
and the same tempo sounds at different event rates depending on notation (a reel in 2/4 runs in
sixteenths at four times the label, one in 2/2 in eighths at twice it), so the audible tempo
matches the label only up to a factor of two. Classes of the tempo modulo an octave are
invariant to that factor; measured numbers and the choice are in the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from m3bert.core.errors import DataError
from m3bert.corpus.layout import TASK_LABELS, corpus_info, pitch_name, read_metadata, row_has_label, task_classes
from m3bert.tasks.datasets._common import label_path
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

TEMPO_OCTAVE = (72.0, 144.0)  # quarter-note BPM folded by factors of 2 into this octave
TEMPO_CLASS_EDGES = (94.5, 117.5)  # class boundaries inside it: 72-94, 95-117, 118-143 (a third of 72-140 each)
TEMPO_CLASSES = ["72-94 BPM", "95-117 BPM", "118-143 BPM"]
_LABELS = {"builtin-tempo-class": "tempo_bpm"}  # tasks that read another task's label (layout.TASK_LABELS)


def fold_tempo(bpm: float) -> float:
    """``bpm * 2**k`` inside ``TEMPO_OCTAVE`` (the same tempo class at every metrical level)."""
    if not np.isfinite(bpm) or bpm <= 0:
        raise DataError(f"tempo {bpm!r}: expected a positive BPM")
    lo, hi = TEMPO_OCTAVE
    folded = float(bpm) * 2.0 ** -np.floor(np.log2(float(bpm) / lo))
    return folded / 2.0 if folded >= hi else folded * 2.0 if folded < lo else folded  # float round-off at the edges


def tempo_class(bpm: float) -> int:
    """Index into ``TEMPO_CLASSES`` of a quarter-note tempo (octave-folded)."""
    return int(np.searchsorted(TEMPO_CLASS_EDGES, fold_tempo(bpm), side="right"))


def _classes(root: Path, name: str) -> list[str]:

    info_path = root / "corpus.json"
    classes = (corpus_info(root).get("classes") or {}) if info_path.is_file() else {}
    return list(classes.get(name) or task_classes()[name])


def _load(root: Path | None, *, task: str, label_type: str, classes_name: str | None, skip_missing: bool = False,
          allow_outside_root: bool = False) -> TaskData:

    if root is None:
        raise DataError(f"task {task} needs a corpus folder: use '{task}:/path/to/CORPUS' "
                        "(build one with 'm3bert corpus build --preset small --out CORPUS')")
    root = Path(root)
    label = _LABELS.get(task) or TASK_LABELS[task]
    rows = [r for r in read_metadata(root) if row_has_label(r, label)]
    if classes_name == "tempo-class":
        classes = list(TEMPO_CLASSES)
    else:
        classes = _classes(root, classes_name) if classes_name else ["tempo_bpm"]
    index = {c: i for i, c in enumerate(classes)}
    clips, skipped = [], []
    for r in rows:
        path = label_path(root, r["path"], where=f"{root / 'metadata.jsonl'}: clip {r['clip_id']}",
                          allow_outside_root=allow_outside_root)
        if not path.is_file():
            if skip_missing:
                skipped.append((str(path), "audio file missing"))
                continue
            raise DataError(f"{root / 'metadata.jsonl'}: clip {r['clip_id']} points to {path}, which does not exist")
        value = r[label]
        if label_type == "regression":
            target: Any = np.asarray([float(value)], dtype=np.float32)
        elif label_type == "multilabel":
            unknown = [v for v in value if v not in index]
            if unknown:
                raise DataError(f"clip {r['clip_id']}: parts {unknown} not in {classes}")
            target = np.zeros(len(classes), dtype=np.float32)
            target[[index[v] for v in value]] = 1.0
        elif classes_name == "tempo-class":
            target = tempo_class(float(value))
        else:
            name = pitch_name(int(value)) if label == "pitch" else value
            if name not in index:
                raise DataError(f"clip {r['clip_id']}: {label}={value!r} is not one of the task's classes {classes}")
            target = index[name]
        meta = {k: r.get(k) for k in ("kind", "family", "title", "source", "program", "transpose", "tempo_bpm", "key", "renderer")}
        clips.append(Clip(clip_id=r["clip_id"], path=path, target=target, split=r["split"], group=r["group"], meta=meta))
    if not clips:
        raise DataError(f"{root}: no clip carries a {label!r} label, expected some for task {task}")
    return TaskData(task=task, label_type=label_type, classes=classes, clips=clips, skipped=skipped, root=str(root))


def _loader(task: str, label_type: str, classes_name: str | None):
    def load(root: Path | None, **options: Any) -> TaskData:
        return _load(root, task=task, label_type=label_type, classes_name=classes_name, **options)

    load.__name__ = f"load_{task.replace('-', '_')}"
    return load


_SPECS = [
    ("builtin-dance", "multiclass", "high-level", ["accuracy", "macro_f1"], "dance",
     "Irish/Scottish dance type (reel, jig, hornpipe, slip jig, strathspey) of O'Neill's and Ryan's tunes"),
    ("builtin-key", "multiclass", "score", ["key_weighted", "accuracy"], "key",
     "24-class key of folk tunes and Bach chorales, transposed renders relabelled"),
    ("builtin-instrument", "multiclass", "acoustic", ["accuracy", "macro_f1"], "instrument",
     "General MIDI program (12 programs, 8 families) playing a solo tune or note"),
    ("builtin-tags", "multilabel", "acoustic", ["roc_auc_macro", "pr_auc_macro"], "tags",
     "which of melody / accompaniment / bass / drums play in a chorale render"),
    ("builtin-pitch", "multiclass", "acoustic", ["accuracy", "macro_f1"], "pitch",
     "MIDI pitch of single notes across programs (NSynth-like)"),
    ("builtin-tempo", "regression", "score", ["r2"], None,
     "tempo in quarter-note BPM set at render (72-140)"),
    ("builtin-tempo-class", "multiclass", "score", ["accuracy", "macro_f1"], "tempo-class",
     "quarter-note tempo modulo octaves in three classes (72-94, 95-117, 118-143 BPM)"),
    ("builtin-style", "multiclass", "high-level", ["accuracy", "macro_f1"], "style",
     "Essen folksong region (China, Germany, Lorraine, Luxembourg, Ireland)"),
]

for _name, _type, _tax, _metrics, _classes_name, _desc in _SPECS:
    register_task(Task(name=_name, label_type=_type, taxonomy=_tax, metrics=_metrics,
                       loader=_loader(_name, _type, _classes_name), description=_desc))
