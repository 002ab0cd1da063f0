"""MTG-Jamendo auto-tagging (Bogdanov et al. 2019): mood/theme, genre, instrument, top-50 tags.

``root`` is the user's copy of the dataset *repository* (github.com/MTG/mtg-jamendo-dataset):
the official split-0 files ``data/splits/split-0/autotagging_<subset>-{train,validation,test}.tsv``
are read from it (``split_index`` picks another of the five official artist-disjoint splits).
Audio lives where ``scripts/download/download.py --unpack`` put it: ``NN/<id>.mp3`` (or the
low-quality ``NN/<id>.low.mp3``) under ``audio_dir`` (default: the first of ``root/audio``,
``root/mp3``, ``root`` that has the first track's file).

TSV quirks handled (all verified on the repository): CRLF endings; a 6-name header followed by
a variable number of tab-separated tag columns (``row[5:]``); tags written
``<category>---<tag>`` with category ``mood/theme`` containing a slash, so tags are split on
``---`` only. Class names are the tags of the subset's three split files, sorted; for the
single-category subsets the category prefix is dropped (``happy``), for top-50 (mixed
categories) the full ``genre---rock`` names are kept. A ``PATH`` that leaves the audio folder is an
error unless ``allow_outside_root=True``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, first_existing, label_path, multi_hot, need_root, read_lines
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
SPLIT_WORDS = {"train": "train", "valid": "validation", "test": "test"}
# subset -> (task name, file stem, required category or None for mixed, taxonomy, description)
SUBSETS = {
    "moodtheme": ("mtg-moodtheme", "autotagging_moodtheme", "mood/theme", "high-level", "MTG-Jamendo mood/theme tagging (56 tags, split-0)"),
    "genre": ("mtg-genre", "autotagging_genre", "genre", "high-level", "MTG-Jamendo genre tagging (87 tags, split-0)"),
    "instrument": ("mtg-instrument", "autotagging_instrument", "instrument", "acoustic", "MTG-Jamendo instrument tagging (40 tags, split-0)"),
    "top50": ("mtg-top50", "autotagging_top50tags", None, "high-level", "MTG-Jamendo top-50 tags (split-0)"),
}
CATEGORIES = ("genre", "instrument", "mood/theme")


def split_file(root: Path, stem: str, split: str, split_index: int) -> Path:
    """Path of an official split file; ``root`` may be the repository or its ``data/`` folder."""
    name = f"{stem}-{SPLIT_WORDS[split]}.tsv"
    return first_existing(
        [root / "data" / "splits" / f"split-{split_index}" / name, root / "splits" / f"split-{split_index}" / name],
        f"MTG-Jamendo split file {name}",
    )


def parse_split_file(path: Path, *, category: str | None) -> list[tuple[int, str, str, str, float, list[str]]]:
    """Rows ``(line_no, track_id, artist_id, rel_path, duration, tags)`` of one split TSV."""
    lines = read_lines(path)
    if not lines or lines[0].split("\t")[: len(HEADER)] != HEADER:
        got = lines[0].split("\t") if lines else []
        raise DataError(f"{path}:1: header {got!r}, expected {HEADER} (tab-separated)")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        where = f"{path}:{line_no}"
        if len(f) < 6:
            raise DataError(f"{where}: {len(f)} tab-separated fields, expected >= 6 (5 columns and at least one tag): {line!r}")
        track_id, artist_id, _album, rel, dur = (x.strip() for x in f[:5])
        if not track_id.startswith("track_") or not rel.endswith(".mp3"):
            raise DataError(f"{where}: TRACK_ID={track_id!r} PATH={rel!r}, expected 'track_NNNNNNN' and 'NN/<id>.mp3'")
        try:
            duration = float(dur)
        except ValueError:
            raise DataError(f"{where}: DURATION={dur!r}, expected seconds as a number") from None
        tags = []
        for raw in f[5:]:
            tag = raw.strip()
            if not tag:
                continue
            cat, sep, name = tag.partition("---")
            if not sep or not name or cat not in CATEGORIES:
                raise DataError(f"{where}: tag {tag!r}, expected '<category>---<tag>' with category in {CATEGORIES}")
            if category is not None and cat != category:
                raise DataError(f"{where}: tag {tag!r} is not a {category!r} tag, expected only {category}---* in this file")
            tags.append(name if category is not None else tag)
        if not tags:
            raise DataError(f"{where}: track {track_id} has no tags")
        rows.append((line_no, track_id, artist_id, rel, duration, tags))
    return rows


def load_mtg(
    root: Path | None,
    *,
    subset: str,
    skip_missing: bool = False,
    split_index: int = 0,
    audio_dir: str | None = None,
    low_quality: bool = False,
    allow_outside_root: bool = False,
) -> TaskData:
    task, stem, category, _, _ = SUBSETS[subset]
    root = need_root(root, task)
    paths = {s: split_file(root, stem, s, split_index) for s in SPLIT_WORDS}
    rows_by_split = {s: parse_split_file(p, category=category) for s, p in paths.items()}
    classes = sorted({t for rows in rows_by_split.values() for r in rows for t in r[5]})
    index = {t: i for i, t in enumerate(classes)}

    all_rows = [r for rows in rows_by_split.values() for r in rows]
    if audio_dir is not None:
        audio_root = Path(audio_dir).expanduser()
    else:
        audio_root = root / "audio"
        if all_rows:
            rel = all_rows[0][3]
            for cand in (root / "audio", root / "mp3", root):
                if (cand / rel).exists() or (cand / rel.replace(".mp3", ".low.mp3")).exists():
                    audio_root = cand
                    break

    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    seen: dict[str, str] = {}
    for split, rows in rows_by_split.items():
        path = paths[split]
        for line_no, track_id, artist_id, rel, duration, tags in rows:
            if track_id in seen:
                raise DataError(f"{path}:{line_no}: {track_id} already listed in {seen[track_id]}")
            seen[track_id] = path.name
            hi = label_path(audio_root, rel, where=f"{path}:{line_no}", field="PATH", allow_outside_root=allow_outside_root)
            lo = hi.with_name(hi.name[: -len(".mp3")] + ".low.mp3")
            found = audio.find([lo, hi] if low_quality else [hi, lo], item=f"{track_id} ({rel})")
            if found is None:
                continue
            clips.append(Clip(
                clip_id=track_id, path=found, target=multi_hot((index[t] for t in tags), len(classes)), split=split,
                group=track_id, meta={"artist": artist_id, "duration": duration, "tags": tags},
            ))
    return TaskData(task=task, label_type="multilabel", classes=classes, clips=clips, skipped=skipped, root=str(root))


for _subset, (_name, _stem, _cat, _tax, _desc) in SUBSETS.items():
    register_task(Task(
        name=_name,
        label_type="multilabel",
        taxonomy=_tax,
        metrics=["roc_auc_macro", "pr_auc_macro"],
        loader=partial(load_mtg, subset=_subset),
        description=_desc,
        options={"skip_missing": False},
        score_metrics=["roc_auc_macro", "pr_auc_macro"],
    ))
