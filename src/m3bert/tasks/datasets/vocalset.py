"""VocalSet (Wilkins et al. 2018): singing technique (10 classes) and singer (20 classes).

Layout of ``root`` (``VocalSet11.zip`` unpacked): ``FULL/<singer>/<context>/<technique>/<file>.wav``
with singers ``female1``-``female9``, ``male1``-``male11`` and contexts ``arpeggios``,
``long_tones``, ``scales``, ``excerpts`` (``root`` may also be ``FULL/`` itself, or a v1.2
``data_by_singer/`` tree of the same shape). ``__MACOSX``, hidden files and the duplicated
``... (1).wav`` copies are ignored. Labels come from the folders, never from the file names,
whose singer prefixes are inconsistent (``male8/`` holds ``m9_caro_vibrato.wav``).

Splits, by singer as MARBLE:

* ``vocalset-technique``: the 10 techniques of Wilkins et al. / MARBLE. Test singers are those
  of the published ``test_singers_technique.txt`` (female2, female8, male3, male5, male10; read
  from the copy when present); the other 15 singers are split 9 train / 6 valid (thesis ch.
  3.1.3), seeded. The group is the singer, so no singer straddles splits.
* ``vocalset-singer``: all 20 singers appear in every split (MARBLE); each singer's recordings
  are split 12:8:5 (train/valid/test, MARBLE's 80/20 then 60/40), seeded
  (``TaskData.split_source == "random"``). The group is the recording, so chunks of one file
  never straddle splits.

MARBLE cuts 3 s chunks after voice-activity trimming; this loader gives whole recordings by
default (no audio is decoded here) and full fixed-length chunks with ``chunk_seconds``.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, chunk_clips, first_existing, need_root, read_lines, split_groups
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

TECHNIQUES10 = ["belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato", "vocal_fry"]
TEST_SINGERS = ["female2", "female8", "male3", "male5", "male10"]
SINGER = re.compile(r"^(female|male)(\d+)$")
DUPLICATE = re.compile(r"\s*\(\d+\)$")


def _singer_key(name: str) -> tuple[str, int]:
    m = SINGER.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


def scan(full: Path) -> list[tuple[str, str, str, Path]]:
    """``(singer, context, technique, path)`` of every usable recording under ``full``."""
    out = []
    singers = sorted((p for p in full.iterdir() if p.is_dir() and SINGER.match(p.name)), key=lambda p: _singer_key(p.name))
    if not singers:
        raise DataError(f"VocalSet: no singer folders (female1 ... male11) in {full}")
    for sdir in singers:
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
            for tdir in sorted(p for p in cdir.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
                names = {p.name for p in tdir.glob("*.wav")}
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    stem = name[:-4]
                    if DUPLICATE.search(stem) and DUPLICATE.sub("", stem) + ".wav" in names:
                        continue  # "f2_scales_vibrato_a(1).wav": a copy of an existing file
                    out.append((sdir.name, cdir.name, tdir.name, tdir / name))
    return out


def _test_singers(root: Path, full: Path) -> list[str]:
    for cand in (root / "test_singers_technique.txt", full.parent / "test_singers_technique.txt"):
        if cand.is_file():
            names = [ln.strip() for ln in read_lines(cand) if ln.strip()]
            bad = [n for n in names if not SINGER.match(n)]
            if bad or not names:
                raise DataError(f"{cand}: singer name(s) {bad or names!r}, expected lines like 'female2'")
            return names
    return list(TEST_SINGERS)


def load_vocalset(root: Path | None, *, target: str, skip_missing: bool = False, seed: int = 0,
                  chunk_seconds: float | None = None) -> TaskData:
    task = f"vocalset-{target}"
    root = need_root(root, task)
    full = first_existing([root / "FULL", root / "data_by_singer", root], "VocalSet FULL/ folder")
    recs = scan(full)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)

    if target == "technique":
        recs = [r for r in recs if r[2] in TECHNIQUES10]
        classes = list(TECHNIQUES10)
        test = set(_test_singers(root, full))
        others = sorted({r[0] for r in recs} - test, key=_singer_key)
        singer_split = {**split_groups(others, seed=seed, weights=(9, 6, 0)), **{s: "test" for s in test}}
        labelled = [(r, classes.index(r[2]), r[0], singer_split[r[0]]) for r in recs]
    else:
        classes = sorted({r[0] for r in recs}, key=_singer_key)
        labelled = []
        for singer in classes:
            mine = [r for r in recs if r[0] == singer]
            rel = {r: str(r[3].relative_to(full)) for r in mine}
            split_of = split_groups(rel.values(), seed=seed, weights=(12, 8, 5))
            labelled += [(r, classes.index(singer), rel[r], split_of[rel[r]]) for r in mine]

    clips: list[Clip] = []
    for (singer, context, technique, path), y, group, split in labelled:
        rel = str(path.relative_to(full))
        if chunk_seconds is None:
            if not audio.ok(path, item=rel):
                continue
            spans = chunk_clips(0.0, None)
        else:
            duration = audio.duration(path, item=rel)
            if duration is None:
                continue
            spans = chunk_clips(duration, chunk_seconds)
        for k, s, e in spans:
            clips.append(Clip(clip_id=rel if chunk_seconds is None else f"{rel}#{k}", path=path, target=y, split=split,
                              group=group, start=s, end=e, meta={"singer": singer, "context": context, "technique": technique}))
    return TaskData(task=task, label_type="multiclass", classes=classes, clips=clips, skipped=skipped, root=str(root),
                    split_source="predefined" if target == "technique" else "random")


register_task(Task(
    name="vocalset-technique",
    label_type="multiclass",
    taxonomy="performance",
    metrics=["accuracy", "macro_f1"],
    loader=partial(load_vocalset, target="technique"),
    description="VocalSet 10 singing techniques, split by singer (5 published test singers; 9/6 train/valid, seeded)",
    options={"skip_missing": False, "seed": 0},
))
register_task(Task(
    name="vocalset-singer",
    label_type="multiclass",
    taxonomy="acoustic",
    metrics=["accuracy", "macro_f1"],
    loader=partial(load_vocalset, target="singer"),
    description="VocalSet 20-singer identification, recordings split 12:8:5 per singer (seeded)",
    options={"skip_missing": False, "seed": 0},
))
