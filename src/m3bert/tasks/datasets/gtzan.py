"""GTZAN genre (Tzanetakis & Cook 2002) with the fault-filtered split of Kereliuk, Sturm & Larsen.

Why the filtered split: GTZAN has repeated, mislabelled and distorted excerpts and no artist
separation (Sturm); random splits inflate accuracy. The artist-filtered, fault-removed
443/197/290 lists (``m3bert/data/gtzan_fault_filtered``, copied verbatim from
coreyker/dnn-mgr) are what the M3BERT paper, MARBLE and jukemir use.

Accepted layouts of ``root``:

* Marsyas/opihi ``genres/<genre>/<genre>.NNNNN.wav`` (``root`` = the folder holding ``genres/``
  or ``genres/`` itself);
* Kaggle ``Data/genres_original/<genre>/...`` (``root`` = the folder holding ``Data/``, or
  ``Data/``, or ``genres_original/``);
* older copies with ``.au`` files of the same stems.

``jazz/jazz.00054.wav`` is unreadable in the Kaggle copy; MARBLE drops it from train (442
clips). With ``drop_known_corrupt=True`` (default) it is left out and recorded in
``TaskData.skipped`` for every copy, so numbers are comparable across copies.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, need_root
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
KNOWN_CORRUPT = {"jazz.00054": "known corrupt/unreadable in the Kaggle copy (MARBLE drops it from train)"}
SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}


def split_lists() -> dict[str, list[str]]:
    """The packaged fault-filtered lists: split -> ``["blues/blues.00029.wav", ...]``."""
    base = resources.files("m3bert").joinpath("data", "gtzan_fault_filtered")
    out = {}
    for split, name in SPLIT_FILES.items():
        text = base.joinpath(name).read_text(encoding="utf-8")
        out[split] = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return out


def find_genre_dir(root: Path) -> Path:
    """The folder whose children are the ten genre folders, for either layout."""
    candidates = [root / "genres", root / "Data" / "genres_original", root / "genres_original", root]
    for c in candidates:
        if all((c / g).is_dir() for g in GENRES):
            return c
    raise DataError(
        f"GTZAN: no folder with the 10 genre sub-folders ({', '.join(GENRES)}) found; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def load_gtzan_genre(root: Path | None, *, skip_missing: bool = False, drop_known_corrupt: bool = True) -> TaskData:
    root = need_root(root, "gtzan-genre")
    genre_dir = find_genre_dir(root)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    seen: set[str] = set()
    for split, entries in split_lists().items():
        for line_no, rel in enumerate(entries, start=1):
            where = f"gtzan_fault_filtered/{SPLIT_FILES[split]}:{line_no}"
            parts = rel.split("/")
            if len(parts) != 2 or parts[0] not in GENRES or not parts[1].startswith(parts[0] + "."):
                raise DataError(f"{where}: entry {rel!r}, expected '<genre>/<genre>.NNNNN.wav' with a GTZAN genre")
            genre, fname = parts
            stem = fname.rsplit(".", 1)[0]
            if stem in seen:
                raise DataError(f"{where}: {stem} is listed twice")
            seen.add(stem)
            if drop_known_corrupt and stem in KNOWN_CORRUPT:
                skipped.append((rel, KNOWN_CORRUPT[stem]))
                continue
            path = audio.find([genre_dir / genre / f"{stem}.wav", genre_dir / genre / f"{stem}.au"], item=rel)
            if path is None:
                continue
            clips.append(Clip(clip_id=stem, path=path, target=GENRES.index(genre), split=split, group=stem,
                              meta={"genre": genre}))
    return TaskData(task="gtzan-genre", label_type="multiclass", classes=list(GENRES), clips=clips,
                    skipped=skipped, root=str(root))


register_task(Task(
    name="gtzan-genre",
    label_type="multiclass",
    taxonomy="high-level",
    metrics=["accuracy", "macro_f1"],
    loader=load_gtzan_genre,
    description="GTZAN 10-genre classification, fault-filtered split (Kereliuk et al.; 443/197/290, 442 train without jazz.00054)",
    options={"skip_missing": False},
))
