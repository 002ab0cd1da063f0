"""The Echo Nest Taste Profile Subset (MSD) as a cold-start recommendation task, ``taste-profile``.

Kim et al. (2020) learn from MSD listening profiles (the *taste* source) and evaluate content-based
cold-start recommendation (their target *Lastfm*, sec. 4.1: items unseen by the user model are
ranked from their audio, nDCG@500). This loader reads the MSD's listening data in its published
layout::

    ROOT/train_triplets.txt     user_id <TAB> song_id <TAB> play_count       (Taste Profile Subset)
    ROOT/unique_tracks.txt      track_id<SEP>song_id<SEP>artist<SEP>title      (MSD track list; optional)
    ROOT/audio/**/<ID>.<ext>    30 s previews named by MSD track id (TRAAAAW128F429D538.mp3, any
                                 depth, e.g. the MSD's A/B/C/ tree) or by the song id the triplets
                                 use (SOAAAGQ12A8C1420C8.wav)

The same layout holds any other listening data: Last.fm-1K (the paper's target) becomes it with
``cut -f1,5 userid-timestamp-artid-artname-traid-traname.tsv | sort | uniq -c |
awk '$3 != "" {print $2 "\t" $3 "\t" $1}' > train_triplets.txt`` and previews named by track MBID.

Only songs with audio are kept; then users with fewer than ``min_items`` songs and songs with fewer
than ``min_users`` users are removed, repeatedly until none is left (the paper filters "users who
listened to less than 5 tracks and tracks known to less than 5 users"). ``max_users`` keeps a
seeded random subset of users first (the full subset has 1M users).

Task data: one :class:`Clip` per song (group = song id), ``label_type = "regression"``, ``classes``
= the user ids, ``target`` = the song's play counts over those users (float32, mostly zero). The
split is a seeded random 70/10/20 of songs (``split_source = "random"``): the held-out songs are
the cold-start items. :mod:`m3bert.evaluate.recommendation` evaluates it as the paper does (WMF on
the training songs, audio -> item factors, nDCG over the held-out songs); ``bench`` probes can read
it too, scored by the registered ``ndcg`` metric (each song's predicted listener vector ranks the
test songs per user).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from m3bert.core.errors import DataError
from m3bert.tasks.datasets._common import need_root
from m3bert.tasks.metrics import Metric, register_metric
from m3bert.tasks.registry import Clip, Task, TaskData, register_task

NAME = "taste-profile"
TRIPLETS = "train_triplets.txt"
TRACKS = "unique_tracks.txt"
AUDIO_EXTS = (".mp3", ".wav", ".flac", ".ogg", ".m4a", ".au")
MSD_ID = re.compile(r"^(TR|SO)[A-Z0-9]{16}$")  # MSD track / song ids: 18 characters
NDCG_K = 500  # the paper's cut-off


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = NDCG_K) -> np.ndarray:
    """Per user (row) nDCG@k of ranking the columns by ``scores``; binary relevance; NaN for a
    user with no relevant column. ``scores, relevant (n_users, n_items)``."""
    scores = np.asarray(scores, np.float64)
    rel = np.asarray(relevant, bool)
    if scores.shape != rel.shape or scores.ndim != 2:
        raise DataError(f"ndcg: scores {scores.shape} and relevance {rel.shape} must be equal (n_users, n_items)")
    if not np.all(np.isfinite(scores)):
        raise DataError("ndcg: non-finite scores")
    k = int(min(k, scores.shape[1]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    gains = np.take_along_axis(rel, order, axis=1).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = gains @ discount
    n_rel = np.minimum(rel.sum(axis=1), k)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[n_rel]
    out = np.full(scores.shape[0], np.nan)
    ok = n_rel > 0
    out[ok] = dcg[ok] / ideal[ok]
    return out


def ndcg_metric(y_true: Any, y_pred: Any, *, classes: Any = None, target_mask: Any = None) -> float:
    """Mean over users (columns) with a relevant test song of nDCG@500 of ranking the songs (rows)."""
    t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise DataError(f"ndcg: y_true {t.shape} and y_pred {p.shape} must be (n_items, n_users)")
    per_user = ndcg_at_k(p.T, t.T > 0)
    if not np.isfinite(per_user).any():
        raise DataError("ndcg: no user has a relevant item among these songs")
    return float(np.nanmean(per_user))


register_metric(Metric("ndcg", ("regression",), ndcg_metric,
                       "nDCG@500 of ranking held-out songs per user (binary relevance: played), mean over users"))


def read_triplets(path: Path) -> list[tuple[str, str, float]]:
    """``user<TAB>song<TAB>count`` lines; a malformed line is a DataError naming file:line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise DataError(f"{path}:{n}: expected 'user<TAB>song<TAB>count', got {line.strip()[:80]!r}")
            user, song, count = parts
            try:
                c = float(count)
            except ValueError:
                raise DataError(f"{path}:{n}: play count {count!r} is not a number") from None
            if not np.isfinite(c) or c <= 0:
                raise DataError(f"{path}:{n}: play count {count!r}; expected a positive number")
            if not user or not song:
                raise DataError(f"{path}:{n}: empty user or song id")
            out.append((user, song, c))
    return out


def read_tracks(path: Path) -> dict[str, str]:
    """MSD ``unique_tracks.txt`` -> {track id: song id}."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("<SEP>")
            if len(parts) < 2 or not MSD_ID.match(parts[0]) or not MSD_ID.match(parts[1]):
                raise DataError(f"{path}:{n}: expected 'TRACKID<SEP>SONGID<SEP>artist<SEP>title', got {line.strip()[:80]!r}")
            out[parts[0]] = parts[1]
    return out


def find_audio(root: Path, track_song: dict[str, str]) -> dict[str, Path]:
    """{song id: preview file} from ``ROOT/audio``: files named by MSD track id (mapped through
    ``unique_tracks.txt``) or by the song id the triplets use (any depth; e.g. Last.fm-1K track MBIDs)."""
    audio = root / "audio"
    if not audio.is_dir():
        raise DataError(f"{NAME}: no audio folder {audio}; expected previews named <TRACK_ID>.mp3 (or by song id) under it")
    found: dict[str, Path] = {}
    for p in sorted(audio.rglob("*")):
        if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
            continue
        found.setdefault(track_song.get(p.stem, p.stem), p)
    return found


def core_filter(pairs: dict[tuple[str, str], float], *, min_users: int, min_items: int) -> dict[tuple[str, str], float]:
    """Drop users with < ``min_items`` songs and songs with < ``min_users`` users until stable."""
    while True:
        users: dict[str, int] = {}
        songs: dict[str, int] = {}
        for u, s in pairs:
            users[u] = users.get(u, 0) + 1
            songs[s] = songs.get(s, 0) + 1
        kept = {(u, s): c for (u, s), c in pairs.items() if users[u] >= min_items and songs[s] >= min_users}
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def load_taste_profile(root: Path | None, *, min_users: int = 5, min_items: int = 5, max_users: int = 0,
                       seed: int = 0, skip_missing: bool = False) -> TaskData:
    root = need_root(root, NAME)
    triplets = root / TRIPLETS
    if not triplets.is_file():
        raise DataError(f"{NAME}: {triplets} not found; expected the Taste Profile 'user<TAB>song<TAB>count' file")
    track_song = read_tracks(root / TRACKS) if (root / TRACKS).is_file() else {}
    audio = find_audio(root, track_song)
    rows = read_triplets(triplets)
    rng = np.random.default_rng(int(seed))
    if max_users:
        all_users = sorted({u for u, _, _ in rows})
        if len(all_users) > max_users:
            keep = set(rng.choice(all_users, size=int(max_users), replace=False).tolist())
            rows = [r for r in rows if r[0] in keep]
    pairs: dict[tuple[str, str], float] = {}
    no_audio = set()
    for u, s, c in rows:
        if s not in audio:
            no_audio.add(s)
            continue
        pairs[(u, s)] = pairs.get((u, s), 0.0) + c
    pairs = core_filter(pairs, min_users=int(min_users), min_items=int(min_items))
    if not pairs:
        raise DataError(f"{NAME}: no (user, song) pair left after keeping songs with audio ({len(audio)}) and the "
                        f"{min_users}/{min_items} user/song filter; {len(no_audio)} song id(s) had no preview")
    users = sorted({u for u, _ in pairs})
    songs = sorted({s for _, s in pairs})
    uix = {u: i for i, u in enumerate(users)}
    targets = {s: np.zeros(len(users), np.float32) for s in songs}
    for (u, s), c in pairs.items():
        targets[s][uix[u]] = c
    order = rng.permutation(len(songs))
    n_test, n_valid = int(round(0.2 * len(songs))), int(round(0.1 * len(songs)))
    split = {}
    for rank, j in enumerate(order):
        split[songs[j]] = "test" if rank < n_test else ("valid" if rank < n_test + n_valid else "train")
    clips = [Clip(clip_id=s, path=audio[s], target=targets[s], split=split[s], group=s) for s in songs]
    skipped = [(s, "no audio preview") for s in sorted(no_audio)] if skip_missing else []
    return TaskData(task=NAME, label_type="regression", classes=users, clips=clips, skipped=skipped, root=str(root),
                    split_source="random")


register_task(Task(name=NAME, label_type="regression", taxonomy="high-level", metrics=["ndcg"],
                   loader=load_taste_profile, options={"seed": 0},
                   description="MSD Taste Profile: cold-start song recommendation from audio (nDCG@500 over held-out songs)"))
