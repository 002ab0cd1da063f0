"""NSynth (Engel et al. 2017): instrument family (11 classes) and pitch (128 MIDI classes).

Layout of ``root``: the three official archives unpacked side by side,
``nsynth-{train,valid,test}/examples.json`` + ``nsynth-{split}/audio/<note_str>.wav``.
``examples.json`` is one object keyed by ``note_str`` with ``instrument_family``,
``instrument_family_str``, ``instrument_str``, ``pitch``, ``velocity``, ...

Groups: the official train split is instrument-disjoint from valid and test, but **valid and
test share instruments** (``bass_synthetic_009-009-025`` is a valid note,
``bass_synthetic_009-010-025`` a test note). So the group is ``instrument_str`` in train and
``<split>:<instrument_str>`` in valid and test: the official split is kept as published, and a
train instrument that appears in valid or test (which the official split never has) is still a
DataError naming the entry. Pitch targets are the MIDI number itself, 0-127 (the test set has
pitches below 21 and above 108, so the full range is kept). ``synth_lead`` is absent from
valid/test; it stays a class so indices match the dataset's ``instrument_family``.
A ``note_str`` that would leave ``audio/`` is an error unless ``allow_outside_root=True``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, first_existing, label_path, need_root
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

FAMILIES = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal"]
PITCHES = [str(p) for p in range(128)]
SPLITS = {"train": "nsynth-train", "valid": "nsynth-valid", "test": "nsynth-test"}


def read_examples(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is {type(data).__name__}, expected an object keyed by note_str")
    return data


def load_nsynth(root: Path | None, *, target: str, skip_missing: bool = False, allow_outside_root: bool = False) -> TaskData:
    task = f"nsynth-{target}"
    root = need_root(root, task)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    train_instruments: set[str] = set()
    for split, folder in SPLITS.items():  # train first: valid/test instruments are checked against it
        ex_path = first_existing([root / folder / "examples.json"], f"NSynth {folder}/examples.json")
        for note_str, ex in read_examples(ex_path).items():
            where = f"{ex_path}: entry {note_str!r}"
            if not isinstance(ex, dict):
                raise DataError(f"{where}: value is {type(ex).__name__}, expected an object")
            if target == "family":
                fam, fam_str = ex.get("instrument_family"), ex.get("instrument_family_str")
                if not isinstance(fam, int) or not 0 <= fam < len(FAMILIES) or FAMILIES[fam] != fam_str:
                    raise DataError(f"{where}: instrument_family={fam!r} instrument_family_str={fam_str!r}, "
                                    f"expected a consistent pair from {FAMILIES}")
                y = fam
            else:
                pitch = ex.get("pitch")
                if not isinstance(pitch, int) or isinstance(pitch, bool) or not 0 <= pitch <= 127:
                    raise DataError(f"{where}: pitch={pitch!r}, expected a MIDI number 0-127")
                y = pitch
            inst = ex.get("instrument_str")
            if not isinstance(inst, str) or not inst:
                raise DataError(f"{where}: instrument_str={inst!r}, expected a non-empty string")
            if split == "train":
                train_instruments.add(inst)
                group = inst
            elif inst in train_instruments:
                raise DataError(f"{where}: group {inst!r} appears in splits 'train' and {split!r}; the official "
                                "NSynth train split is instrument-disjoint from valid and test")
            else:
                group = f"{split}:{inst}"  # valid and test share instruments in the official split
            path = label_path(root / folder / "audio", f"{note_str}.wav", where=where, field="note_str",
                              allow_outside_root=allow_outside_root)
            if not audio.ok(path, item=f"{folder}/{note_str}"):
                continue
            clips.append(Clip(clip_id=note_str, path=path, target=y, split=split, group=group,
                              meta={"velocity": ex.get("velocity"), "source": ex.get("instrument_source_str")}))
    classes = FAMILIES if target == "family" else PITCHES
    return TaskData(task=task, label_type="multiclass", classes=list(classes), clips=clips, skipped=skipped, root=str(root))


register_task(Task(
    name="nsynth-family",
    label_type="multiclass",
    taxonomy="acoustic",
    metrics=["accuracy", "macro_f1"],
    loader=partial(load_nsynth, target="family"),
    description="NSynth instrument family (11 classes), official instrument-disjoint split",
    options={"skip_missing": False},
))
register_task(Task(
    name="nsynth-pitch",
    label_type="multiclass",
    taxonomy="score",
    metrics=["accuracy", "macro_f1"],
    loader=partial(load_nsynth, target="pitch"),
    description="NSynth pitch (128 MIDI classes), official instrument-disjoint split",
    options={"skip_missing": False},
))
