"""Extended Ballroom (Marchand & Peeters 2016): 13 dance classes, and the 9-class subset.

Layout of ``root``: ``extendedballroom_v1.1.xml`` (any ``extendedballroom*.xml``) and the audio
the official downloader writes, ``<Genre>/<id>.mp3`` (a locally modified downloader writes
``<Genre>/<Genre>.<id>.mp3``; both are accepted). Genre folder names are the XML element names.

XML: ``<ballroom><Waltz><song id=... bpm=... artist=...><version id=.../><exact id=.../>``.
The ``version``/``exact``/``time``/``karaoke`` children link a song to other recordings of the
same music (``exact`` = identical audio). Linked songs are merged into one *group* (union-find),
so duplicates never straddle train and test.

Split: none official; the M3BERT paper's random split by song into five parts 3/1/1, seeded
(over the groups above; ``TaskData.split_source == "random"``). ``ballroom-ext9`` drops the four smallest classes (Slowwaltz 65,
Pasodoble 53, Salsa 47, Wcswing 23 songs) as Wu et al. 2021 (following their ref. [30]).
Some download links are dead: ``skip_missing=True`` records the absent files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, need_root, split_groups
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

GENRES13 = ["Chacha", "Foxtrot", "Jive", "Pasodoble", "Quickstep", "Rumba", "Salsa", "Samba", "Slowwaltz", "Tango",
            "Viennesewaltz", "Waltz", "Wcswing"]
DROPPED_IN_9 = ("Pasodoble", "Salsa", "Slowwaltz", "Wcswing")
GENRES9 = [g for g in GENRES13 if g not in DROPPED_IN_9]
LINKS = ("version", "exact", "time", "karaoke")


def find_xml(root: Path) -> Path:
    found = sorted(root.glob("extendedballroom*.xml"))
    if not found:
        raise DataError(f"Extended Ballroom: no extendedballroom*.xml (e.g. extendedballroom_v1.1.xml) in {root}")
    return found[-1]  # the highest version when several are present


def parse_xml(path: Path) -> list[tuple[str, str, list[str], dict[str, str]]]:
    """``(genre, song id, linked ids, attributes)`` for every song of the XML."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DataError(f"{path}: not well-formed XML ({exc})") from None
    out = []
    seen: dict[str, str] = {}
    for genre_el in tree.getroot():
        genre = genre_el.tag
        if genre not in GENRES13:
            raise DataError(f"{path}: genre element <{genre}>, expected one of {GENRES13}")
        for song in genre_el:
            sid = (song.get("id") or "").strip()
            if song.tag != "song" or not sid.isdigit():
                raise DataError(f"{path}: <{genre}> child <{song.tag} id={sid!r}>, expected <song id='<digits>'>")
            if sid in seen:
                raise DataError(f"{path}: song id {sid} appears in <{seen[sid]}> and <{genre}>")
            seen[sid] = genre
            links = [(c.get("id") or "").strip() for c in song if c.tag in LINKS]
            out.append((genre, sid, [x for x in links if x], dict(song.attrib)))
    return out


def _groups(songs: list[tuple[str, str, list[str], dict[str, str]]]) -> dict[str, str]:
    """song id -> group id (the smallest id of its linked component)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, sid, links, _ in songs:
        for other in links:
            a, b = find(sid), find(other)
            if a != b:
                lo, hi = sorted((a, b), key=int)
                parent[hi] = lo
    return {sid: find(sid) for _, sid, _, _ in songs}


def load_ballroom(root: Path | None, *, classes: str = "13", skip_missing: bool = False, seed: int = 0) -> TaskData:
    task = "ballroom-ext" if classes == "13" else "ballroom-ext9"
    genres = GENRES13 if classes == "13" else GENRES9
    root = need_root(root, task)
    songs = parse_xml(find_xml(root))
    group_of = _groups(songs)
    songs = [s for s in songs if s[0] in genres]
    split_of = split_groups({group_of[sid] for _, sid, _, _ in songs}, seed=seed)
    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    for genre, sid, _, attrs in songs:
        path = audio.find([root / genre / f"{sid}.mp3", root / genre / f"{genre}.{sid}.mp3"], item=f"{genre}/{sid}")
        if path is None:
            continue
        g = group_of[sid]
        clips.append(Clip(clip_id=sid, path=path, target=genres.index(genre), split=split_of[g], group=g,
                          meta={"bpm": attrs.get("bpm"), "artist": attrs.get("artist")}))
    return TaskData(task=task, label_type="multiclass", classes=list(genres), clips=clips, skipped=skipped, root=str(root),
                    split_source="random")


register_task(Task(
    name="ballroom-ext",
    label_type="multiclass",
    taxonomy="high-level",
    metrics=["accuracy", "macro_f1"],
    loader=partial(load_ballroom, classes="13"),
    description="Extended Ballroom 13 dance classes, random 3/1/1 split by song (duplicates grouped, seeded)",
    options={"skip_missing": False, "seed": 0},
))
register_task(Task(
    name="ballroom-ext9",
    label_type="multiclass",
    taxonomy="high-level",
    metrics=["macro_f1", "accuracy"],
    loader=partial(load_ballroom, classes="9"),
    description="Extended Ballroom 9 classes (Wu et al. 2021: 4 smallest dropped), random 3/1/1 split by song (seeded)",
    options={"skip_missing": False, "seed": 0},
))
