"""GiantSteps key (test) + GiantSteps MTG key (train/valid), 24 key classes, as jukemir/MARBLE.

Layout of ``root``: the two GitHub repositories with their audio downloaded
(``audio_dl.sh``), side by side; folder names may carry the commit suffix of a zip download:

* ``giantsteps-key-dataset*/annotations/key/<id>.LOFI.key`` (``"D major"``, no newline) and
  ``.../audio/<id>.LOFI.mp3`` -> the 604 test tracks;
* ``giantsteps-mtg-key-dataset*/annotations/annotations.txt`` (TSV ``ID, MANUAL KEY, C``),
  ``.../annotations/beatport_metadata.txt`` (TSV with ``ARTIST``) and ``.../audio/<id>.LOFI.mp3``.

Protocol (Korzeniowski & Widmer 2018, jukemir, MARBLE-v1): MTG rows with confidence ``C == 2``
and a single key (no ``/``, not ``-``) are used (1,159 tracks); they are split by artist: each
comma-separated ``ARTIST`` is hashed (``sha1(name.lower()) % 116``; < 100 -> train, else valid)
and collaborators of valid artists are moved to valid (two passes), giving 923 / 236. The MTG
rows left out by that rule are the protocol, not errors, and are not listed as skipped.

Keys: sharps are spelled as flats (``C# -> Db``), lowercase tonics and trailing whitespace are
accepted; classes are ``C major, Db major, ..., B major, C minor, ..., B minor``.
Audio is cut into full ``chunk_seconds`` (30 s) clips, the remainder dropped, as jukemir's
``giantsteps_clips``; the group is the track.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, chunk_clips, header_index, need_root, read_csv_rows, read_lines
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

TONICS = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
KEYS = [f"{t} major" for t in TONICS] + [f"{t} minor" for t in TONICS]
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def parse_key(text: str) -> int | None:
    """``"C# minor"``, ``"d minor\\t2\\t"``, ``"Eb major "`` -> index into ``KEYS``; None if unparsable."""
    fields = text.replace("\t", " ").split()
    if len(fields) < 2:
        return None
    tonic, mode = fields[0], fields[1].lower()
    if mode not in ("major", "minor") or not tonic or tonic[0].upper() not in _LETTER_PC:
        return None
    pc = _LETTER_PC[tonic[0].upper()]
    for acc in tonic[1:]:
        if acc in "#♯":
            pc += 1
        elif acc in "b♭":
            pc -= 1
        else:
            return None
    return (pc % 12) + (12 if mode == "minor" else 0)


def _find_repo(root: Path, prefix: str) -> Path:
    found = sorted(p for p in root.glob(prefix + "*") if p.is_dir())
    if root.name.startswith(prefix):
        found.insert(0, root)
    if not found:
        raise DataError(f"GiantSteps: no folder {prefix}* in {root} (put both dataset repositories side by side there)")
    return found[0]


def artist_splits(beatport_rows: list[dict[str, str]]) -> dict[str, str]:
    """jukemir's artist -> split map (sha1 % 116 buckets, then two passes of collaborator moves)."""
    artist_to_split: dict[str, str] = {}
    lists = [[a.strip() for a in r["ARTIST"].strip().split(",")] for r in beatport_rows]
    for artists in lists:
        for a in artists:
            h = int(hashlib.sha1(a.lower().encode("utf-8")).hexdigest(), 16)
            artist_to_split[a] = "train" if h % 116 < 100 else "valid"
    for _ in range(2):
        for artists in lists:
            if any(artist_to_split[a] == "valid" for a in artists):
                for a in artists:
                    artist_to_split[a] = "valid"
    return artist_to_split


def _tsv_dicts(path: Path, columns: list[str]) -> list[tuple[int, dict[str, str]]]:
    rows = read_csv_rows(path, delimiter="\t")
    if not rows:
        raise DataError(f"{path}: empty file")
    col = header_index(rows[0], columns, path=path)
    out = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) <= max(col.values()):
            raise DataError(f"{path}:{line_no}: {len(row)} fields, expected {len(rows[0])} (tab-separated)")
        out.append((line_no, {n: row[i] for n, i in col.items()}))
    return out


def load_giantsteps_key(root: Path | None, *, skip_missing: bool = False, chunk_seconds: float | None = 30.0) -> TaskData:
    root = need_root(root, "giantsteps-key")
    gs = _find_repo(root, "giantsteps-key-dataset")
    mtg = _find_repo(root, "giantsteps-mtg-key-dataset")
    tracks: list[tuple[str, str, int, Path]] = []  # (track id, split, key index, audio path)

    key_dir = gs / "annotations" / "key"
    key_files = sorted(key_dir.glob("*.LOFI.key"))
    if not key_files:
        raise DataError(f"GiantSteps key: no annotations/key/<id>.LOFI.key files in {gs}")
    for kf in key_files:
        tid = kf.name.split(".")[0]
        text = "\n".join(read_lines(kf)).strip()
        k = parse_key(text)
        if k is None or not tid.isdigit():
            raise DataError(f"{kf}: key {text!r}, expected '<tonic> major|minor' (e.g. 'Eb minor') in a file named <id>.LOFI.key")
        tracks.append((f"gs:{tid}", "test", k, gs / "audio" / f"{tid}.LOFI.mp3"))

    ann_path = mtg / "annotations" / "annotations.txt"
    meta_path = mtg / "annotations" / "beatport_metadata.txt"
    for p in (ann_path, meta_path):
        if not p.is_file():
            raise DataError(f"GiantSteps MTG key: {p} not found")
    meta_rows = _tsv_dicts(meta_path, ["ID", "ARTIST"])
    artist_of: dict[str, list[str]] = {}
    for line_no, r in meta_rows:
        tid = r["ID"].strip()
        if not tid.isdigit():
            raise DataError(f"{meta_path}:{line_no}: ID={r['ID']!r}, expected an integer")
        artist_of[str(int(tid))] = [a.strip() for a in r["ARTIST"].strip().split(",")]
    to_split = artist_splits([r for _, r in meta_rows])
    for line_no, r in _tsv_dicts(ann_path, ["ID", "MANUAL KEY", "C"]):
        where = f"{ann_path}:{line_no}"
        tid, key, conf = r["ID"].strip(), r["MANUAL KEY"].strip(), r["C"].strip()
        if not tid.isdigit() or conf not in ("0", "1", "2"):
            raise DataError(f"{where}: ID={r['ID']!r} C={r['C']!r}, expected an integer id and a confidence 0, 1 or 2")
        tid = str(int(tid))
        if conf != "2" or "/" in key or key in ("", "-"):
            continue  # low confidence or ambiguous: excluded by the protocol
        k = parse_key(key)
        if k is None:
            raise DataError(f"{where}: MANUAL KEY={r['MANUAL KEY']!r}, expected '<tonic> major|minor'")
        if tid not in artist_of:
            raise DataError(f"{where}: track {tid} has no row in {meta_path.name} (needed for the artist split)")
        splits = {to_split[a] for a in artist_of[tid]}
        split = "valid" if "valid" in splits else "train"
        tracks.append((f"mtg:{tid}", split, k, mtg / "audio" / f"{tid}.LOFI.mp3"))

    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for tid, split, k, path in tracks:
        if chunk_seconds is None:
            if not audio.ok(path, item=tid):
                continue
            spans = chunk_clips(0.0, None)
        else:
            duration = audio.duration(path, item=tid)
            if duration is None:
                continue
            spans = chunk_clips(duration, chunk_seconds)
        for i, s, e in spans:
            clips.append(Clip(clip_id=f"{tid}#{i}" if chunk_seconds is not None else tid, path=path, target=k,
                              split=split, group=tid, start=s, end=e, meta={"key": KEYS[k]}))
    return TaskData(task="giantsteps-key", label_type="multiclass", classes=list(KEYS), clips=clips, skipped=skipped, root=str(root))


register_task(Task(
    name="giantsteps-key",
    label_type="multiclass",
    taxonomy="high-level",
    metrics=["key_weighted", "accuracy"],
    loader=load_giantsteps_key,
    description="GiantSteps key (test) + GiantSteps-MTG key (train/valid, artist split), 24 keys, 30 s clips",
    options={"skip_missing": False},
))
