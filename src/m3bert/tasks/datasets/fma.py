"""FMA small / medium top-genre classification (Defferrard et al. 2017), official split.

Layout of ``root``: ``fma_metadata/tracks.csv`` and the audio archive ``fma_small/`` or
``fma_medium/`` with ``<first 3 digits>/<6-digit id>.mp3`` (``000/000002.mp3``).

``tracks.csv`` has three header lines: the column group (``track``, ``album``, ``artist``,
``set``), the column name, and ``track_id,,,...``; quoted cells may span lines. Columns are
found by (group, name): ``('set','subset')``, ``('set','split')``, ``('track','genre_top')``.
Subsets are nested (small in medium), so the medium task takes ``subset in {small, medium}``.
Split: ``('set','split')`` (``training`` / ``validation`` / ``test``; artist-filtered).
Classes: the ``genre_top`` values of the selected tracks, sorted (8 for small, 16 for medium).

Three small-subset files contain no audio (mdeff/fma issues #44 and #70); they are always left
out and recorded in ``skipped``.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, first_existing, need_root
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

SUBSETS = {"small": ("small",), "medium": ("small", "medium")}
SPLIT_NAMES = {"training": "train", "validation": "valid", "test": "test"}
NO_AUDIO = {"099134", "108925", "133297"}
COLUMNS = {("set", "subset"): "subset", ("set", "split"): "split", ("track", "genre_top"): "genre_top"}


def audio_rel(track_id: int) -> str:
    tid = f"{track_id:06d}"
    return f"{tid[:3]}/{tid}.mp3"


def read_tracks(path: Path) -> list[tuple[int, int, dict[str, str]]]:
    """``(line_no, track_id, {subset, split, genre_top})`` for every row of ``tracks.csv``."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            groups, names, third = next(reader), next(reader), next(reader)
        except StopIteration:
            raise DataError(f"{path}: fewer than the 3 header lines of FMA's tracks.csv") from None
        if not third or third[0].strip() != "track_id":
            raise DataError(f"{path}:3: first cell {third[:1]!r}, expected 'track_id' (FMA's 3-line header)")
        col: dict[str, int] = {}
        for i, (g, n) in enumerate(zip(groups, names)):
            if (g.strip(), n.strip()) in COLUMNS:
                col[COLUMNS[(g.strip(), n.strip())]] = i
        missing = [f"{g}.{n}" for (g, n), k in COLUMNS.items() if k not in col]
        if missing:
            raise DataError(f"{path}:1-2: header lacks column(s) {missing}")
        out = []
        while True:
            line_no = reader.line_num + 1  # where the row starts (quoted cells may span lines)
            try:
                row = next(reader)
            except StopIteration:
                break
            if not row or not any(x.strip() for x in row):
                continue
            if len(row) <= max(col.values()):
                raise DataError(f"{path}:{line_no}: {len(row)} fields, expected {len(names)}")
            tid = row[0].strip()
            if not tid.isdigit():
                raise DataError(f"{path}:{line_no}: track_id={tid!r}, expected an integer")
            out.append((line_no, int(tid), {k: row[i].strip() for k, i in col.items()}))
    return out


def load_fma_genre(root: Path | None, *, subset: str, skip_missing: bool = False, audio_dir: str | None = None) -> TaskData:
    task = f"fma-{subset}-genre"
    root = need_root(root, task)
    tracks_csv = first_existing([root / "fma_metadata" / "tracks.csv", root / "tracks.csv"], "FMA fma_metadata/tracks.csv")
    audio_root = Path(audio_dir).expanduser() if audio_dir else first_existing(
        [root / f"fma_{subset}"] + ([root / "fma_large", root / "fma_full"] if subset == "medium" else [root / "fma_medium", root / "fma_large", root / "fma_full"]),
        f"FMA audio folder fma_{subset}/")
    wanted = SUBSETS[subset]
    rows = []
    for line_no, tid, rec in read_tracks(tracks_csv):
        if rec["subset"] not in wanted:
            continue
        where = f"{tracks_csv}:{line_no}"
        if rec["split"] not in SPLIT_NAMES:
            raise DataError(f"{where}: track {tid} set.split={rec['split']!r}, expected one of {list(SPLIT_NAMES)}")
        if not rec["genre_top"]:
            raise DataError(f"{where}: track {tid} in subset {rec['subset']!r} has an empty track.genre_top")
        rows.append((tid, SPLIT_NAMES[rec["split"]], rec["genre_top"]))
    classes = sorted({g for _, _, g in rows})
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for tid, split, genre in rows:
        rel = audio_rel(tid)
        if f"{tid:06d}" in NO_AUDIO:
            skipped.append((rel, "known to contain no audio (mdeff/fma #44, #70)"))
            continue
        path = audio_root / rel
        if not audio.ok(path, item=rel):
            continue
        clips.append(Clip(clip_id=f"{tid:06d}", path=path, target=classes.index(genre), split=split, group=f"{tid:06d}",
                          meta={"genre": genre}))
    return TaskData(task=task, label_type="multiclass", classes=classes, clips=clips, skipped=skipped, root=str(root))


for _subset, _desc in [("small", "FMA small top-genre (8 classes), official split"),
                       ("medium", "FMA medium top-genre (16 classes), official split")]:
    register_task(Task(
        name=f"fma-{_subset}-genre",
        label_type="multiclass",
        taxonomy="high-level",
        metrics=["accuracy", "macro_f1"],
        loader=partial(load_fma_genre, subset=_subset),
        description=_desc,
        options={"skip_missing": False},
    ))
