"""IRMAS predominant-instrument recognition (Bosch et al. 2012), 11 single-label classes.

Layout of ``root``: ``IRMAS-TrainingData/<code>/<file>.wav`` (11 code folders) and, for the
test set, ``IRMAS-TestingData-Part{1,2,3}/<inner folder>/<name>.wav`` + ``<name>.txt`` (the
inner folder names differ: ``Part1``, ``IRTestingData-Part2``, ``Part3``).

Training files are 3 s excerpts with exactly one predominant instrument: the label is the
folder, and the first bracket of the file name (``[cel][cla]0001__1.wav``; the last bracket is
the genre, where ``[cla]`` means *classical*) must agree with it. Excerpts of one recording
(``...0001__1``, ``...0001__2``) share a group.

What is done with the multi-label testing set: this task is single-label (multiclass), so the
test split is the testing excerpts whose ``.txt`` lists exactly **one** instrument (the
single-predominant subset); excerpts with two or more predominant instruments are left out by
design (they would need a multilabel target; they are not errors and are not in ``skipped``).
``test_set="training"`` instead ignores the testing parts and splits the training data by
recording 3/1/1 (seeded; ``TaskData.split_source == "random"``). With the default, ``valid_fraction`` of the training recordings
(seeded) is the validation split.
"""

from __future__ import annotations

import re
from pathlib import Path

from m3bert.core.errors import ConfigError, DataError
from m3bert.tasks.datasets._common import AudioChecker, first_existing, need_root, read_lines, split_groups
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

INSTRUMENTS = ["cel", "cla", "flu", "gac", "gel", "org", "pia", "sax", "tru", "vio", "voi"]
NAMES = ["cello", "clarinet", "flute", "acoustic guitar", "electric guitar", "organ", "piano", "saxophone", "trumpet",
         "violin", "voice"]
BRACKET = re.compile(r"\[([a-z_]+)\]")
EXCERPT = re.compile(r"-\d+$")


def load_irmas_instrument(
    root: Path | None,
    *,
    skip_missing: bool = False,
    seed: int = 0,
    test_set: str = "single-label",
    valid_fraction: float = 0.2,
) -> TaskData:
    root = need_root(root, "irmas-instrument")
    if test_set not in ("single-label", "training"):
        raise ConfigError(f"test_set={test_set!r}, expected 'single-label' (testing excerpts with one label) or 'training'")
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction={valid_fraction!r}, expected a number in (0, 1)")
    train_dir = first_existing([root / "IRMAS-TrainingData"], "IRMAS IRMAS-TrainingData/ folder")
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)

    train_items = []  # (rel, path, label, group)
    for k, code in enumerate(INSTRUMENTS):
        folder = train_dir / code
        if not folder.is_dir():
            raise DataError(f"IRMAS: training folder {folder} not found (expected one folder per code: {INSTRUMENTS})")
        for path in sorted(folder.glob("*.wav")):
            rel = f"{code}/{path.name}"
            tags = BRACKET.findall(path.stem)
            if not tags or tags[0] != code:
                raise DataError(f"IRMAS training file {rel}: first bracket {tags[:1]!r}, expected [{code}] like its folder")
            if not audio.ok(path, item=rel):
                continue
            train_items.append((rel, path, k, "train:" + f"{code}/" + path.stem.rsplit("__", 1)[0]))

    weights = (1 - valid_fraction, valid_fraction, 0) if test_set == "single-label" else (3, 1, 1)
    split_of = split_groups({g for *_, g in train_items}, seed=seed, weights=weights)
    clips = [Clip(clip_id=rel, path=p, target=k, split=split_of[g], group=g, meta={"source": "training"})
             for rel, p, k, g in train_items]

    if test_set == "single-label":
        parts = sorted(p for p in root.glob("IRMAS-TestingData-Part*") if p.is_dir())
        if not parts:
            raise DataError(f"IRMAS: no IRMAS-TestingData-Part* folders in {root} (or use test_set='training')")
        for part in parts:
            for txt in sorted(part.glob("*/*.txt")) + sorted(part.glob("*.txt")):
                codes = []
                for line_no, line in enumerate(read_lines(txt), start=1):
                    code = line.strip()
                    if not code:
                        continue
                    if code not in INSTRUMENTS:
                        raise DataError(f"{txt}:{line_no}: instrument code {code!r}, expected one of {INSTRUMENTS}")
                    codes.append(code)
                if not codes:
                    raise DataError(f"{txt}: no instrument code, expected one per line")
                if len(set(codes)) != 1:
                    continue  # multi-instrument excerpt: not part of the single-label task (see module doc)
                wav = txt.with_suffix(".wav")
                rel = str(wav.relative_to(root))
                if not audio.ok(wav, item=rel):
                    continue
                group = "test:" + str(txt.relative_to(root).with_suffix("")).rsplit("/", 1)[0] + "/" + EXCERPT.sub("", txt.stem)
                clips.append(Clip(clip_id=rel, path=wav, target=INSTRUMENTS.index(codes[0]), split="test", group=group,
                                  meta={"source": "testing"}))
    return TaskData(task="irmas-instrument", label_type="multiclass", classes=list(INSTRUMENTS), clips=clips,
                    skipped=skipped, root=str(root), split_source="predefined" if test_set == "single-label" else "random")


register_task(Task(
    name="irmas-instrument",
    label_type="multiclass",
    taxonomy="acoustic",
    metrics=["accuracy", "macro_f1"],
    loader=load_irmas_instrument,
    description="IRMAS 11 predominant instruments: training data (seeded valid by recording), single-label testing excerpts as test",
    options={"skip_missing": False, "seed": 0},
))
