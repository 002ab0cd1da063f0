"""Emomusic ("1000 Songs for Emotional Analysis of Music", Soleymani et al. 2013): static V/A.

Layout of ``root`` (as unpacked by MARBLE-v1/jukemir): ``clips_45seconds/<song_id>.mp3`` and the
annotation CSVs ``songs_info.csv`` and ``static_annotations.csv`` at the root (or in an
``annotations/`` folder). CSV values carry stray whitespace, so every field is stripped and
columns are selected by name.

Targets: ``[mean_valence, mean_arousal]`` (1-9 scale; the probe standardises on train).

Split: the one of Castellon et al. (jukemir) that MARBLE uses: MediaEval 2013 ``evaluation``
songs are the test set (125); ``development`` songs go to train/valid by a hash of the
normalised artist name (lowercase ASCII letters and spaces, spaces collapsed;
``int(sha1) % 10`` < 8 -> train, else valid), giving 504 / 115 on the full data. The group is
the artist, so no artist straddles train and valid.

A ``file_name`` that leaves ``clips_45seconds/`` is an error unless ``allow_outside_root=True``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import (
    AudioChecker,
    first_existing,
    header_index,
    label_path,
    need_root,
    parse_float,
    read_csv_rows,
)
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

TARGETS = ["valence", "arousal"]


def normalise_artist(artist: str) -> str:
    """jukemir's artist key: lowercase, ASCII letters and whitespace only, whitespace collapsed."""
    kept = "".join(c for c in artist.lower() if ord(c) < 128 and (c.isalpha() or c.isspace()))
    return " ".join(kept.split())


def artist_split(artist: str) -> str:
    """``train`` for 8 of 10 sha1 buckets of the normalised artist, ``valid`` for the other 2."""
    h = int(hashlib.sha1(normalise_artist(artist).encode("utf-8")).hexdigest(), 16)
    return "train" if h % 10 < 8 else "valid"


def _table(path: Path, columns: list[str]) -> dict[str, tuple[dict[str, str], str]]:
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty file")
    col = header_index(rows[0], columns, path=path)
    out: dict[str, tuple[dict[str, str], str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not any(x.strip() for x in row):
            continue
        where = f"{path}:{line_no}"
        if len(row) <= max(col.values()):
            raise DataError(f"{where}: {len(row)} fields, expected {len(rows[0])}")
        rec = {name: row[i].strip() for name, i in col.items()}
        if not rec["song_id"].isdigit():
            raise DataError(f"{where}: song_id={rec['song_id']!r}, expected an integer")
        sid = str(int(rec["song_id"]))
        if sid in out:
            raise DataError(f"{where}: song_id {sid} listed twice")
        out[sid] = (rec, where)
    return out


def load_emomusic_va(root: Path | None, *, skip_missing: bool = False, allow_outside_root: bool = False) -> TaskData:
    root = need_root(root, "emomusic-va")
    ann_dir = root if (root / "songs_info.csv").is_file() else root / "annotations"
    info = _table(first_existing([ann_dir / "songs_info.csv"], "Emomusic songs_info.csv"),
                  ["song_id", "file_name", "Artist", "Mediaeval 2013 set"])
    static = _table(first_existing([ann_dir / "static_annotations.csv"], "Emomusic static_annotations.csv"),
                    ["song_id", "mean_arousal", "mean_valence"])
    audio_dir = root / "clips_45seconds"
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for sid in sorted(static, key=int):
        rec, where = static[sid]
        if sid not in info:
            raise DataError(f"{where}: song_id {sid} has annotations but no row in songs_info.csv")
        meta, info_where = info[sid]
        subset = meta["Mediaeval 2013 set"]
        if subset not in ("development", "evaluation"):
            raise DataError(f"{info_where}: 'Mediaeval 2013 set'={subset!r}, expected 'development' or 'evaluation'")
        split = "test" if subset == "evaluation" else artist_split(meta["Artist"])
        y = np.asarray([parse_float(rec[f"mean_{t}"], where=where, field=f"mean_{t}", lo=1.0, hi=9.0) for t in TARGETS],
                       dtype=np.float32)
        path = label_path(audio_dir, meta["file_name"] or f"{sid}.mp3", where=info_where, field="file_name",
                          allow_outside_root=allow_outside_root)
        if not audio.ok(path, item=f"song {sid}"):
            continue
        group = "artist:" + (normalise_artist(meta["Artist"]) or f"song {sid}")
        clips.append(Clip(clip_id=sid, path=path, target=y, split=split, group=group,
                          meta={"artist": meta["Artist"], "set": subset}))
    # an artist with songs in both MediaEval sets would straddle test and train/valid: fall back
    # to the song as group for such artists (the official set assignment wins)
    splits_of: dict[str, set[str]] = {}
    for c in clips:
        splits_of.setdefault(c.group, set()).add(c.split)
    for c in clips:
        if len(splits_of[c.group]) > 1:
            c.group = f"song:{c.clip_id}"
    return TaskData(task="emomusic-va", label_type="regression", classes=list(TARGETS), clips=clips, skipped=skipped, root=str(root))


register_task(Task(
    name="emomusic-va",
    label_type="regression",
    taxonomy="high-level",
    metrics=["r2"],
    loader=load_emomusic_va,
    description="Emomusic static valence/arousal regression, jukemir/MARBLE split (MediaEval 2013 evaluation = test)",
    options={"skip_missing": False},
))
