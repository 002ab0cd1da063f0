"""MagnaTagATune top-50 tagging (Law et al. 2009) with the standard 12:1:3 folder split.

Layout of ``root``: ``annotations_final.csv`` (tab-separated despite the name, every field
double-quoted, ``clip_id``, 188 tags, ``mp3_path``) and the audio tree ``mp3/<0-f>/<name>.mp3``
(or the ``<0-f>/`` folders directly under ``root``).

Split (MARBLE, musicnn, jukemir): folders ``0``-``b`` train, ``c`` valid, ``d``-``f`` test. All
clips of a song (and of an album) sit in one folder, so this split is leakage-free; the group is
the song (the file name without its ``-<start>-<end>`` suffix).

Vocabulary: the 50 most frequent tags over all 25,863 rows, as a fixed ordered list
(``TOP50``), because three frequency ties make an argsort-based selection implementation
dependent. MARBLE keeps clips without any top-50 tag (18,706 / 1,825 / 5,329 after the corrupt
ones); Won et al. drop them (15,247 / 1,529 / 4,332): ``drop_untagged=True``.

The three corrupt MP3s listed by jukemir are always left out and recorded in ``skipped``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import AudioChecker, first_existing, label_path, need_root, read_csv_rows
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

# by descending count over all 25,863 rows of annotations_final.csv (counted on the jukemir metadata);
# the three ties are kept in this order: pop / no vocal (995 each), male voice / female vocal (644),
# female voice / metal (505). The same 50 tags as the list of Lee et al. / Won et al.
# (github.com/minzwon/sota-music-tagging-models, split/mtat/top50_tags.txt, camel-cased names), which
# orders the first tie the other way (noVocal before pop); MARBLE picks them with an np.argsort whose tie
# order depends on the implementation.
TOP50 = [
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "pop", "no vocal",
    "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "female voice", "metal", "choral",
]
CORRUPT = {
    "35644": "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
    "55753": "8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_noster-204-233.mp3",
    "57881": "9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_petit_rien_xiveme_ordre_couperin-88-117.mp3",
}
FOLDER_SPLIT = {**{f: "train" for f in "0123456789ab"}, "c": "valid", **{f: "test" for f in "def"}}


def song_of(mp3_path: str) -> str:
    """``f/artist-album-01-title-30-59.mp3`` -> ``f/artist-album-01-title`` (the song)."""
    stem = mp3_path[:-4] if mp3_path.endswith(".mp3") else mp3_path
    parts = stem.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else stem


def load_mtt_top50(root: Path | None, *, skip_missing: bool = False, drop_untagged: bool = False,
                   allow_outside_root: bool = False) -> TaskData:
    root = need_root(root, "mtt-top50")
    ann = first_existing([root / "annotations_final.csv"], "MagnaTagATune annotations_final.csv")
    rows = read_csv_rows(ann, delimiter="\t")
    if not rows:
        raise DataError(f"{ann}: empty file")
    header = [h.strip() for h in rows[0]]
    if header[0] != "clip_id" or header[-1] != "mp3_path":
        raise DataError(f"{ann}:1: header starts {header[:2]} and ends {header[-1:]}, expected 'clip_id' ... 'mp3_path' (tab-separated)")
    missing = [t for t in TOP50 if t not in header]
    if missing:
        raise DataError(f"{ann}:1: header lacks top-50 tag column(s) {missing}")
    cols = np.array([header.index(t) for t in TOP50])
    mp3_dir = root / "mp3" if (root / "mp3").is_dir() else root

    skipped: list[tuple[str, str]] = []
    audio = AudioChecker(skip_missing=skip_missing, skipped=skipped)
    clips: list[Clip] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{ann}:{line_no}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} fields, expected {len(header)} like the header")
        clip_id, rel = row[0].strip(), row[-1].strip()
        if not clip_id.isdigit() or clip_id in seen:
            raise DataError(f"{where}: clip_id={clip_id!r}, expected a unique integer id")
        seen.add(clip_id)
        folder = rel.split("/", 1)[0]
        if folder not in FOLDER_SPLIT or not rel.endswith(".mp3"):
            raise DataError(f"{where}: mp3_path={rel!r}, expected '<0-f>/<name>.mp3'")
        values = [row[i].strip() for i in cols]
        bad = [(TOP50[k], v) for k, v in enumerate(values) if v not in ("0", "1")]
        if bad:
            raise DataError(f"{where}: tag value(s) {bad}, expected '0' or '1'")
        target = np.asarray([v == "1" for v in values], dtype=np.float32)
        if drop_untagged and not target.any():
            continue
        if clip_id in CORRUPT:
            skipped.append((f"{clip_id} ({rel})", "known corrupt MP3 (jukemir list)"))
            continue
        path = label_path(mp3_dir, rel, where=where, field="mp3_path", allow_outside_root=allow_outside_root)
        if not audio.ok(path, item=f"{clip_id} ({rel})"):
            continue
        clips.append(Clip(clip_id=clip_id, path=path, target=target, split=FOLDER_SPLIT[folder], group=song_of(rel)))
    return TaskData(task="mtt-top50", label_type="multilabel", classes=list(TOP50), clips=clips, skipped=skipped, root=str(root))


register_task(Task(
    name="mtt-top50",
    label_type="multilabel",
    taxonomy="high-level",
    metrics=["roc_auc_macro", "pr_auc_macro"],
    loader=load_mtt_top50,
    description="MagnaTagATune top-50 tagging, folder split 0-b/c/d-f (12:1:3)",
    options={"skip_missing": False},
    score_metrics=["roc_auc_macro", "pr_auc_macro"],
))
