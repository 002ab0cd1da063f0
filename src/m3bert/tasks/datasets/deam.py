"""DEAM (Aljanaki et al. 2017): static song-level valence/arousal, chunked as in the M3BERT paper.

Layout of ``root`` (the unzipped ``DEAM_audio.zip`` + ``DEAM_Annotations.zip``):

* ``MEMD_audio/<song_id>.mp3`` (1,802 files);
* ``annotations/annotations averaged per song/song_level/static_annotations_averaged_songs_1_2000.csv``
  and ``..._2000_2058.csv`` (folder names with spaces; the Kaggle re-packaging uses
  ``annotations_averaged_per_song``; both are found, also under ``DEAM_Annotations/``).

The static CSVs have leading spaces in the header (``song_id, valence_mean, ...``) and the
2015 file has eight extra columns, so columns are selected by stripped name. Targets are
``[valence_mean, arousal_mean]`` on the 1-9 SAM scale (the probe standardises them on train).

Labels, a deliberate difference from the paper: these are DEAM's *static* song-level
annotations, the **averages over annotators** ``valence_mean`` / ``arousal_mean`` of the
"averaged per song" files, one ``[valence, arousal]`` pair per song shared by all its chunks.
The M3BERT paper instead fused the annotators' ratings into *triplet-embedding* labels
("triplet embeddings of these labels were computed as in other studies", Booth et al. 2018,
majority-vote triplet embeddings); those are not distributed with DEAM and are not rebuilt here,
so numbers on this task are not directly comparable with the paper's.

Chunking (M3BERT paper: "after breaking long songs into smaller 30 s chunks, the DEAM dataset
consisted of 2099 excerpts"): each song is cut into its full ``chunk_seconds`` chunks
(:func:`~m3bert.tasks.datasets._common.chunk_spans`); every chunk is a clip whose group is the
song. Split: no official split; the paper's random split by song into five parts, 3/1/1, seeded
(``TaskData.split_source == "random"``). Durations come from ``soundfile.info`` (headers only,
no decoding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import (
    AudioChecker,
    chunk_clips,
    header_index,
    need_root,
    parse_float,
    read_csv_rows,
    split_groups,
)
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

TARGETS = ["valence", "arousal"]
COLUMNS = ["song_id", "valence_mean", "arousal_mean"]


def find_static_files(root: Path) -> list[Path]:
    """The averaged song-level static annotation CSVs under any of the known annotation folders."""
    bases = [root / "annotations", root / "DEAM_Annotations" / "annotations", root / "DEAM_Annotations", root]
    found: list[Path] = []
    for base in bases:
        for sub in ("annotations averaged per song", "annotations_averaged_per_song"):
            found += sorted((base / sub / "song_level").glob("static_annotations_averaged_songs_*.csv"))
        if found:
            return found
    raise DataError(
        "DEAM static annotations not found: expected 'annotations/annotations averaged per song/song_level/"
        f"static_annotations_averaged_songs_1_2000.csv' (and _2000_2058.csv) under {root}"
    )


def read_static(paths: list[Path]) -> dict[str, tuple[np.ndarray, str]]:
    """song id -> (``[valence, arousal]`` float32, where) from all static files."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for path in paths:
        rows = read_csv_rows(path)
        if not rows:
            raise DataError(f"{path}: empty file")
        col = header_index(rows[0], COLUMNS, path=path)
        for line_no, row in enumerate(rows[1:], start=2):
            if not row or not any(x.strip() for x in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) <= max(col.values()):
                raise DataError(f"{where}: {len(row)} fields, expected {len(rows[0])}")
            sid = row[col["song_id"]].strip()
            if not sid.isdigit():
                raise DataError(f"{where}: song_id={sid!r}, expected an integer")
            sid = str(int(sid))
            if sid in out:
                raise DataError(f"{where}: song_id {sid} already annotated at {out[sid][1]}")
            y = [parse_float(row[col[f"{t}_mean"]], where=where, field=f"{t}_mean", lo=1.0, hi=9.0) for t in TARGETS]
            out[sid] = (np.asarray(y, dtype=np.float32), where)
    return out


def load_deam_va(
    root: Path | None,
    *,
    skip_missing: bool = False,
    seed: int = 0,
    chunk_seconds: float | None = 30.0,
) -> TaskData:
    root = need_root(root, "deam-va")
    static = read_static(find_static_files(root))
    audio_dir = root / "MEMD_audio" if (root / "MEMD_audio").is_dir() else root / "DEAM_audio" / "MEMD_audio"
    split_of = split_groups(static.keys(), seed=seed)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for sid in sorted(static, key=int):
        y, _ = static[sid]
        path = audio_dir / f"{sid}.mp3"
        if chunk_seconds is None:
            if not audio.ok(path, item=f"song {sid}"):
                continue
            duration = None
        else:
            duration = audio.duration(path, item=f"song {sid}")
            if duration is None:
                continue
        for k, start, end in chunk_clips(duration or 0.0, chunk_seconds):
            clips.append(Clip(clip_id=f"{sid}#{k}", path=path, target=y.copy(), split=split_of[sid], group=sid,
                              start=start, end=end, meta={"duration": duration}))
    return TaskData(task="deam-va", label_type="regression", classes=list(TARGETS), clips=clips, skipped=skipped, root=str(root),
                    split_source="random")


register_task(Task(
    name="deam-va",
    label_type="regression",
    taxonomy="high-level",
    metrics=["r2"],
    loader=load_deam_va,
    description="DEAM static valence/arousal regression, 30 s chunks, random 3/1/1 split by song (seeded)",
    options={"skip_missing": False, "seed": 0},
))
