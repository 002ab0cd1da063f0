"""Writers of tiny fixture copies of the real MIR datasets, in their real on-disk layouts.

Each ``make_<dataset>(root, ...)`` writes the metadata files exactly as the dataset ships them
(names, folder nesting, header quirks, CRLF, quoting) and tiny synthetic audio files (a few
hundredths of a second of noise written with soundfile), never third-party audio. Layouts follow
mirdata, MARBLE, jukemir and the datasets' own repositories, as each loader's module docstring
describes.
They return what the tests need to check the loaders (expected labels, ids).
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

# ---------------------------------------------------------------------------------------------
# audio


@lru_cache(maxsize=None)
def _encoded(suffix: str, seconds: float, sample_rate: int) -> bytes:
    """Bytes of a short noise file in the format of ``suffix`` (encoded once, then copied)."""
    fmt = {".wav": "WAV", ".au": "AU", ".mp3": "MP3", ".ogg": "OGG", ".flac": "FLAC"}[suffix]
    n = max(1, int(round(seconds * sample_rate)))
    x = (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format=fmt)
    return buf.getvalue()


def write_audio(path: Path, *, seconds: float = 0.05, sample_rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encoded(path.suffix.lower(), float(seconds), int(sample_rate)))
    return path


def write_text(path: Path, text: str, *, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    path.write_bytes(text.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------
# GTZAN


def make_gtzan(root: Path, *, layout: str = "marsyas", ext: str = ".wav") -> Path:
    """All 930 files of the fault-filtered lists (plus a few outside them and a stray non-audio
    file) as ``genres/<genre>/<genre>.NNNNN.wav`` (marsyas) or ``Data/genres_original/...``
    (kaggle, with the images folder and feature CSVs next to it). Returns the genre folder."""
    from m3bert.tasks.datasets.gtzan import split_lists

    genre_dir = root / "genres" if layout == "marsyas" else root / "Data" / "genres_original"
    for entries in split_lists().values():
        for rel in entries:
            write_audio((genre_dir / rel).with_suffix(ext))
    for extra in ("classical/classical.00042", "disco/disco.00050"):  # in GTZAN but not in the filtered lists
        write_audio((genre_dir / extra).with_suffix(ext))
    write_text(genre_dir / "blues" / ".DS_Store", "junk")
    if layout == "kaggle":
        write_text(root / "Data" / "features_30_sec.csv", "filename,length,label\nblues.00000.wav,661794,blues\n")
        (root / "Data" / "images_original" / "blues").mkdir(parents=True, exist_ok=True)
    return genre_dir


# ---------------------------------------------------------------------------------------------
# MTG-Jamendo

MTG_HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"

# (track number, artist number, split, tags) per subset; ragged tag columns as in the real files
MTG_ROWS = {
    "moodtheme": [
        (948, 87, "train", ["mood/theme---background"]),
        (5634, 811, "train", ["mood/theme---documentary", "mood/theme---emotional", "mood/theme---space"]),
        (1009600, 9001, "train", ["mood/theme---happy", "mood/theme---background"]),
        (1234563, 4000, "validation", ["mood/theme---emotional"]),
        (78963, 5000, "test", ["mood/theme---happy", "mood/theme---space"]),
        (41, 6000, "test", ["mood/theme---documentary"]),
    ],
    "top50tags": [
        (948, 87, "train", ["genre---rock", "instrument---guitar"]),
        (5634, 811, "validation", ["mood/theme---happy"]),
        (1009600, 9001, "test", ["genre---rock", "mood/theme---happy", "instrument---voice"]),
    ],
}


def mtg_path(track: int) -> str:
    return f"{track % 100:02d}/{track}.mp3"


def make_mtg_jamendo(root: Path, *, audio: str = "audio", low_only: bool = False) -> Path:
    """The repository (``data/splits/split-0/*.tsv``, CRLF, plus ``split-1`` and a
    ``data/autotagging.tsv``) and ``<root>/<audio>/NN/<id>.mp3`` (or only ``.low.mp3``)."""
    for subset, rows in MTG_ROWS.items():
        for split in ("train", "validation", "test"):
            lines = [MTG_HEADER]
            for track, artist, s, tags in rows:
                if s == split:
                    fields = [f"track_{track:07d}", f"artist_{artist:06d}", f"album_{artist:06d}", mtg_path(track), "212.7"]
                    lines.append("\t".join(fields + tags))
            write_text(root / "data" / "splits" / "split-0" / f"autotagging_{subset}-{split}.tsv", "\n".join(lines) + "\n", crlf=True)
            write_text(root / "data" / "splits" / "split-1" / f"autotagging_{subset}-{split}.tsv", MTG_HEADER + "\n", crlf=True)
    write_text(root / "data" / "autotagging.tsv", MTG_HEADER + "\n", crlf=True)
    tracks = {t for rows in MTG_ROWS.values() for t, *_ in rows}
    for t in tracks:
        rel = mtg_path(t)
        write_audio(root / audio / (rel.replace(".mp3", ".low.mp3") if low_only else rel))
    return root / audio


# ---------------------------------------------------------------------------------------------
# MagnaTagATune

# (clip_id, mp3_path, top-50 tags)
MTT_CLIPS = [
    ("2", "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3", ["classical", "violin"]),
    ("6", "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-88-117.mp3", ["classical"]),
    ("10", "0/some_artist-some_album-03-song_a-0-29.mp3", ["rock", "guitar", "male voice"]),
    ("11", "0/some_artist-some_album-03-song_a-30-59.mp3", ["rock", "female vocal", "no voice"]),
    ("20", "b/other-album_b-01-song_b-0-29.mp3", []),  # untagged in the top 50
    ("30", "c/valid_artist-album_c-02-song_c-0-29.mp3", ["techno", "beat", "choral"]),
    ("40", "d/test_artist-album_d-05-song_d-0-29.mp3", ["metal", "pop", "no vocal"]),
    ("35644", "6/norine_braun-now_and_zen-08-gently-117-146.mp3", ["pop"]),  # known corrupt, zero bytes
]


def make_mtt(root: Path) -> Path:
    """``annotations_final.csv`` (190 quoted tab-separated columns, CRLF) and ``mp3/<0-f>/``."""
    from m3bert.tasks.datasets.mtt import TOP50

    tags = list(TOP50[::-1]) + [f"other tag {i}" for i in range(188 - len(TOP50))]  # not in frequency order
    header = ["clip_id"] + tags + ["mp3_path"]
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    w.writerow(header)
    for clip_id, rel, on in MTT_CLIPS:
        w.writerow([clip_id] + ["1" if t in on or t == "other tag 3" else "0" for t in tags] + [rel])
        if clip_id == "35644":
            (root / "mp3" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "mp3" / rel).write_bytes(b"")
        else:
            write_audio(root / "mp3" / rel)
    write_text(root / "annotations_final.csv", buf.getvalue())
    write_text(root / "clip_info_final.csv", '"clip_id"\t"track_number"\t"mp3_path"\r\n')
    return root / "annotations_final.csv"


# ---------------------------------------------------------------------------------------------
# DEAM

DEAM_SHORT = [2, 3, 5, 7, 10, 11, 12, 13, 17, 19, 20, 22, 1990]  # 45 s excerpts (2013/2014 sets)
DEAM_LONG = {2001: 95.0, 2058: 20.0}  # full songs of the 2015 set: 3 chunks, and shorter than one chunk


def deam_targets(sid: int) -> tuple[float, float]:
    return round(1 + (sid % 80) / 10, 1), round(9 - (sid % 70) / 10, 1)


def make_deam(root: Path) -> Path:
    """``MEMD_audio/<id>.mp3`` and the two static CSVs (leading-space headers; the 2015 file
    with extra columns in another order) under the space-laden annotation folders."""
    song_level = root / "annotations" / "annotations averaged per song" / "song_level"
    lines = ["song_id, valence_mean, valence_std, arousal_mean, arousal_std"]
    for sid in DEAM_SHORT:
        v, a = deam_targets(sid)
        lines.append(f"{sid},{v},0.94,{a},0.63")
        write_audio(root / "MEMD_audio" / f"{sid}.mp3", seconds=45.0)
    write_text(song_level / "static_annotations_averaged_songs_1_2000.csv", "\n".join(lines) + "\n")
    lines = ["song_id, valence_mean, valence_std, valence_max_mean, valence_max_std, arousal_mean, arousal_std, arousal_max_mean"]
    for sid, seconds in DEAM_LONG.items():
        v, a = deam_targets(sid)
        lines.append(f"{sid}, {v}, 1.1, 7, 1, {a}, 1.2, 6")
        write_audio(root / "MEMD_audio" / f"{sid}.mp3", seconds=seconds)
    write_text(song_level / "static_annotations_averaged_songs_2000_2058.csv", "\n".join(lines) + "\n")
    (root / "annotations" / "annotations averaged per song" / "dynamic (per second annotations)").mkdir(parents=True)
    return song_level


# ---------------------------------------------------------------------------------------------
# Emomusic

# song_id -> (artist, MediaEval 2013 set, mean_arousal, mean_valence)
EMOMUSIC_SONGS = {
    2: ("Kevin  MacLeod", "development", 3.1, 3.0),
    3: ("Kevin MacLeod ", "development", 4.2, 5.5),
    5: ("Jazz Trio #1", "development", 6.0, 6.5),
    10: ("Ümlaut Band", "development", 2.0, 7.0),
    11: ("The Blues Men", "development", 5.5, 4.5),
    12: ("Rock Band", "evaluation", 7.5, 3.2),
    1000: ("Other Artist", "evaluation", 1.5, 8.9),
}


def make_emomusic(root: Path) -> Path:
    """``clips_45seconds/<id>.mp3`` and ``songs_info.csv`` / ``static_annotations.csv`` at the
    root, with whitespace-padded values and a double space in a title."""
    info = ["song_id,file_name,Artist,Song title,start of the segment (min.sec),end of the segment (min.sec),Genre,Mediaeval 2013 set"]
    static = ["song_id,mean_arousal,std_arousal,mean_valence,std_valence"]
    for sid, (artist, subset, a, v) in EMOMUSIC_SONGS.items():
        info.append(f'{sid},{sid}.mp3,{artist},"Tonight  A Lonely Century",0.48,1.33,Blues,{subset}\t')
        static.append(f"{sid}, {a},0.99443, {v} ,0.66667")
        write_audio(root / "clips_45seconds" / f"{sid}.mp3")
    write_text(root / "songs_info.csv", "\n".join(info) + "\n")
    write_text(root / "static_annotations.csv", "\n".join(static) + "\n")
    write_text(root / "arousal_cont_average.csv", "song_id,sample_15000ms\n2,0.1\n")
    return root


# ---------------------------------------------------------------------------------------------
# Extended Ballroom


def make_extended_ballroom(root: Path, *, songs_per_genre: int = 3) -> dict[str, tuple[str, str | None]]:
    """``extendedballroom_v1.1.xml`` with every genre element, ``<version>``/``<exact>`` links,
    and ``<Genre>/<id>.mp3`` audio (the Waltz folder uses the ``<Genre>.<id>.mp3`` variant).
    Returns song id -> (genre, id of the song it is linked to or None)."""
    from m3bert.tasks.datasets.ballroom import GENRES13

    songs: dict[str, tuple[str, str | None]] = {}
    parts = ["<?xml version='1.0' encoding='utf-8'?>", "<ballroom>"]
    sid = 100601
    for g in GENRES13:
        parts.append(f"  <{g}>")
        for k in range(songs_per_genre):
            link = None
            children = ""
            if g == "Foxtrot" and k == 1:  # an exact duplicate of the previous Foxtrot song
                link = str(sid - 1)
                children = f'<exact id="{link}"/>'
            if g == "Quickstep" and k == 0:  # another version of the first Chacha song
                link = "100601"
                children = f'<version id="{link}"/><time id="999999"/>'
            attrs = f'album="Album {g}" artist="Artist {k}" bpm="{90 + k}" id="{sid}" title="T &amp; {k}" hash="0123abcd"'
            parts.append(f"    <song {attrs}>{children}</song>" if children else f"    <song {attrs}/>")
            songs[str(sid)] = (g, link)
            name = f"{g}.{sid}.mp3" if g == "Waltz" else f"{sid}.mp3"
            write_audio(root / g / name)
            sid += 1
        parts.append(f"  </{g}>")
    parts.append("</ballroom>")
    write_text(root / "extendedballroom_v1.1.xml", "\n".join(parts) + "\n")
    write_text(root / "getExtendedBallroomDataset.py", "# official downloader (not needed by the loader)\n")
    return songs


# ---------------------------------------------------------------------------------------------
# RWC instruments (user-provided CSV; audio named with the RWC-MDB-I code)

RWC_FILES = [
    ("RWC_I_01/011/011PFNOM.wav", "piano"), ("RWC_I_01/011/011PFNOF.wav", "piano"), ("RWC_I_01/012/012PFNOP.wav", "piano"),
    ("RWC_I_05/151/151VNSPP.wav", "violin"), ("RWC_I_05/151/151VNNOM.wav", "violin"), ("RWC_I_05/152/152VNNOF.wav", "violin"),
    ("RWC_I_08/212/212TRC2F.wav", "trumpet"), ("RWC_I_08/212/212TRNOM.wav", "trumpet"), ("RWC_I_08/213/213TRNOP.wav", "trumpet"),
    ("RWC_I_08/213/213TRNOM_1.wav", "trumpet"), ("RWC_I_08/213/213TRNOM_2.wav", "trumpet"),  # notes cut from one recording
]


def make_rwc(root: Path, *, extra_columns: str = "") -> Path:
    """``metadata.csv`` (path,instrument[,...]) next to an ``RWC_I_NN/<num>/<code>.wav`` tree."""
    lines = ["path,instrument" + ("," + extra_columns if extra_columns else "")]
    for rel, inst in RWC_FILES:
        write_audio(root / rel, seconds=1.0)
        lines.append(f"{rel},{inst}")
    return write_text(root / "metadata.csv", "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# NSynth

# the official valid and test splits share instruments (bass_synthetic_009 has notes in both), as in
# the real data; train is instrument-disjoint from both
NSYNTH_NOTES = {
    "train": ["bass_synthetic_033-022-050", "bass_synthetic_033-100-127", "guitar_acoustic_010-060-075", "synth_lead_synthetic_001-064-100"],
    "valid": ["keyboard_electronic_002-021-025", "vocal_acoustic_000-108-127", "bass_synthetic_009-009-025"],
    "test": ["mallet_acoustic_047-009-050", "brass_acoustic_046-120-100", "keyboard_electronic_001-064-050",
             "bass_synthetic_009-010-025"],
}


def nsynth_entry(note_str: str) -> dict:
    from m3bert.tasks.datasets.nsynth import FAMILIES

    inst, pitch, vel = note_str.rsplit("-", 2)
    family = next(f for f in sorted(FAMILIES, key=len, reverse=True) if inst.startswith(f + "_"))
    source = inst[len(family) + 1:].rsplit("_", 1)[0]
    return {
        "note": 201034, "sample_rate": 16000, "instrument_family": FAMILIES.index(family),
        "qualities": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "instrument_source_str": source, "note_str": note_str,
        "instrument_family_str": family, "instrument_str": inst, "pitch": int(pitch), "instrument": 417,
        "velocity": int(vel), "instrument_source": ["acoustic", "electronic", "synthetic"].index(source), "qualities_str": ["dark"],
    }


def make_nsynth(root: Path) -> Path:
    """``nsynth-{train,valid,test}/examples.json`` and ``audio/<note_str>.wav`` (16 kHz)."""
    for split, notes in NSYNTH_NOTES.items():
        d = root / f"nsynth-{split}"
        write_text(d / "examples.json", json.dumps({n: nsynth_entry(n) for n in notes}, indent=4))
        for n in notes:
            write_audio(d / "audio" / f"{n}.wav", sample_rate=16000)
    return root


# ---------------------------------------------------------------------------------------------
# GiantSteps key + GiantSteps MTG key


def artist_bucket(name: str) -> int:
    import hashlib

    return int(hashlib.sha1(name.lower().encode("utf-8")).hexdigest(), 16) % 116


def pick_artists() -> tuple[str, str, str]:
    """Two artist names in the train buckets and one in the valid buckets of the jukemir hash."""
    train = [f"DJ Train {i}" for i in range(400) if artist_bucket(f"DJ Train {i}") < 100][:2]
    valid = next(f"MC Valid {i}" for i in range(400) if artist_bucket(f"MC Valid {i}") >= 100)
    return train[0], train[1], valid


GS_KEYS = {"1224698": ("Db major", 45.0), "3424038": ("A minor", 65.0), "4452003": ("Eb minor", 59.0)}


def make_giantsteps(root: Path) -> dict[str, tuple[str, str | None]]:
    """Both repositories (zip-download folder names) with audio; returns MTG id -> (artist, key
    or None when the protocol excludes the row)."""
    gs = root / "giantsteps-key-dataset-c8cb8aad2cb53f165be51ea099d0dc75c64a844f"
    for tid, (key, seconds) in GS_KEYS.items():
        write_text(gs / "annotations" / "key" / f"{tid}.LOFI.key", key)  # no trailing newline
        write_text(gs / "annotations" / "genre" / f"{tid}.LOFI.genre", "breaks")
        write_text(gs / "md5" / f"{tid}.LOFI.md5", "0" * 32)
        write_audio(gs / "audio" / f"{tid}.LOFI.mp3", seconds=seconds)
    mtg = root / "giantsteps-mtg-key-dataset-fd7b8c584f7bd6d720d170c325a6d42c9bf75a6b"
    a, b, v = pick_artists()
    rows = [  # id, artist field, MANUAL KEY, C, expected key (None = excluded by the protocol)
        ("5061", a, "D# minor", "2", "Eb minor"),
        ("5881", a, "A major", "2", "A major"),
        ("6001", f"{b}, {v}", "C# major ", "2", "Db major"),  # collaborator of a valid artist -> valid
        ("6002", b, "G minor", "2", "G minor"),  # b was moved to valid through 6001
        ("6003", v, "F minor / G# major", "2", None),
        ("6004", a, "-", "0", None),
        ("6005", a, "B minor", "1", None),
        ("6006", v, "", "2", None),
    ]
    ann = ["ID\tMANUAL KEY\tC"] + [f"{i}\t{k}\t{c}" for i, _, k, c, _ in rows]
    write_text(mtg / "annotations" / "annotations.txt", "\n".join(ann) + "\n")
    meta = ["ID\tARTIST\tSONG TITLE\tMIX\tLABEL\tBP GENRE\tBP BPM\tBP KEY"]
    meta += [f"{i}\t{art}\tSong {i}\tOriginal Mix\tLabel\tTechno\t128\tD min" for i, art, *_ in rows]
    write_text(mtg / "annotations" / "beatport_metadata.txt", "\n".join(meta) + "\n")
    for i, _, k, _, _ in rows:
        write_text(mtg / "annotations" / "key" / f"{i}.LOFI.key", f"{k.strip().lower()}\t2\t")
        write_audio(mtg / "audio" / f"{i}.LOFI.mp3", seconds=35.0)
    return {i: (art, exp) for i, art, _, _, exp in rows}


# ---------------------------------------------------------------------------------------------
# FMA

# track_id -> (subset, split, genre_top)
FMA_TRACKS = {
    2: ("small", "training", "Hip-Hop"), 5: ("small", "training", "Hip-Hop"), 10: ("small", "validation", "Pop"),
    140: ("small", "test", "Folk"), 1039: ("small", "training", "Rock"), 99134: ("small", "training", "Electronic"),
    3: ("medium", "training", "Jazz"), 20: ("medium", "test", "Blues"), 1040: ("medium", "validation", "Rock"),
    4: ("large", "training", ""), 7: ("large", "test", "Experimental"),
}


def make_fma(root: Path) -> Path:
    """``fma_metadata/tracks.csv`` (3-line header, quoted multi-line cells, list literals) and
    ``fma_small/`` + ``fma_medium/`` trees (medium holds the small tracks too)."""
    cols = [("album", "comments"), ("album", "date_created"), ("artist", "bio"), ("artist", "id"), ("set", "split"),
            ("set", "subset"), ("track", "bit_rate"), ("track", "genre_top"), ("track", "genres"), ("track", "title")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([""] + [g for g, _ in cols])
    w.writerow([""] + [n for _, n in cols])
    w.writerow(["track_id"] + [""] * len(cols))
    for tid, (subset, split, genre) in FMA_TRACKS.items():
        w.writerow([tid, 0, "2008-11-26 01:44:45", "<p>An artist,\nwith a bio on two lines</p>", tid % 7, split, subset,
                    256000, genre, "[21]", f"Track {tid}"])
        for sub, members in (("fma_small", ("small",)), ("fma_medium", ("small", "medium"))):
            if subset in members:
                t = f"{tid:06d}"
                write_audio(root / sub / t[:3] / f"{t}.mp3")
    write_text(root / "fma_small" / "README.txt", "fma_small\n")
    return write_text(root / "fma_metadata" / "tracks.csv", buf.getvalue())


# ---------------------------------------------------------------------------------------------
# OpenMIC-2018

OPENMIC_CLASSES = ["accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar", "mallet_percussion",
                   "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone", "trumpet", "ukulele", "violin", "voice"]
# sample_key -> {instrument: relevance}
OPENMIC_LABELS = {
    "000046_3840": {"clarinet": 0.17104999999999998, "piano": 0.85},
    "000135_483840": {"guitar": 1.0, "voice": 0.5},
    "000139_119040": {"drums": 0.0},
    "000141_130560": {"trumpet": 0.66, "violin": 0.2, "voice": 0.9},
    "000190_330240": {"synthesizer": 0.75},
    "095253_134400": {"piano": 1.0},
    "113025_99840": {"trumpet": 1.0, "cello": 0.1},
}
OPENMIC_TRAIN = ["000046_3840", "000135_483840", "000139_119040", "000141_130560", "000190_330240"]
OPENMIC_TEST = ["095253_134400", "113025_99840"]


def make_openmic(root: Path, *, readme_partition_names: bool = False) -> Path:
    """``openmic-2018/`` with class-map.json, aggregated labels, partitions and ``audio/NNN/*.ogg``."""
    d = root / "openmic-2018"
    write_text(d / "class-map.json", json.dumps({c: i for i, c in enumerate(OPENMIC_CLASSES)}))
    lines = ["sample_key,instrument,relevance,num_responses"]
    for key, labs in OPENMIC_LABELS.items():
        lines += [f"{key},{inst},{rel},3" for inst, rel in labs.items()]
        write_audio(d / "audio" / key[:3] / f"{key}.ogg")
    write_text(d / "openmic-2018-aggregated-labels.csv", "\n".join(lines) + "\n")
    names = ("train01.txt", "test01.txt") if readme_partition_names else ("split01_train.csv", "split01_test.csv")
    write_text(d / "partitions" / names[0], "\n".join(OPENMIC_TRAIN) + "\n")
    write_text(d / "partitions" / names[1], "\n".join(OPENMIC_TEST) + "\n")
    write_text(d / "openmic-2018-metadata.csv", "track_id,sample_key,start_time\n46,000046_3840,3.84\n")
    return d


# ---------------------------------------------------------------------------------------------
# IRMAS

IRMAS_TRAIN = [
    "cel/[cel][cla]0001__1.wav", "cel/[cel][cla]0001__2.wav", "cel/031__[cel][nod][cla]0020__1.wav",
    "cla/[cla][pop_roc]0100__1.wav", "cla/[cla][cla]0101__3.wav", "gel/[gel][dru][pop_roc]0200__1.wav",
    "gel/[gel][nod][jaz_blu]0201__2.wav", "voi/[voi][pop_roc]0300__1.wav", "voi/[voi][lat_sou]0301__1.wav",
    "pia/[pia][cla]0400__1.wav", "sax/[sax][jaz_blu]0500__1.wav", "tru/[tru][jaz_blu]0600__1.wav",
]
# (part folder, inner folder, name, label lines as written: trailing tabs)
IRMAS_TEST = [
    ("IRMAS-TestingData-Part1", "Part1", "02 - And The Body Will Die-8", ["gel\t", "voi\t"]),
    ("IRMAS-TestingData-Part1", "Part1", "02 - And The Body Will Die-9", ["gel\t"]),
    ("IRMAS-TestingData-Part2", "IRTestingData-Part2", "(02) dont kill the whale-1", ["voi\t"]),
    ("IRMAS-TestingData-Part3", "Part3", "Song, A & B-3", ["pia", "pia"]),
]


def make_irmas(root: Path) -> Path:
    """``IRMAS-TrainingData/<code>/`` (all 11 folders, some empty) and three testing parts with
    their inconsistent inner folder names and tab-trailed label files."""
    from m3bert.tasks.datasets.irmas import INSTRUMENTS

    for code in INSTRUMENTS:
        (root / "IRMAS-TrainingData" / code).mkdir(parents=True, exist_ok=True)
    for rel in IRMAS_TRAIN:
        write_audio(root / "IRMAS-TrainingData" / rel)
    for part, inner, name, lines in IRMAS_TEST:
        write_audio(root / part / inner / f"{name}.wav")
        write_text(root / part / inner / f"{name}.txt", "\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# VocalSet

VOCALSET_SINGERS = [f"female{i}" for i in range(1, 10)] + [f"male{i}" for i in range(1, 12)]
# (context, technique, file-name pattern); {p} = the singer prefix (f1, m3, ...)
VOCALSET_FILES = [
    ("arpeggios", "belt", "{p}_arpeggios_belt_c_a.wav"),
    ("arpeggios", "breathy", "{p}_arpeggios_breathy_a.wav"),
    ("long_tones", "vibrato", "{p}_long_vibrato_e.wav"),
    ("scales", "straight", "{p}_scales_straight_a.wav"),
    ("scales", "vocal_fry", "{p}_scales_vocal_fry_o.wav"),
    ("excerpts", "vibrato", "{p}_caro_vibrato.wav"),
    ("long_tones", "forte", "{p}_long_forte_a.wav"),  # not one of the 10 techniques
]


def make_vocalset(root: Path) -> Path:
    """``FULL/<singer>/<context>/<technique>/*.wav`` for all 20 singers, with the known quirks:
    a ``(1)`` duplicate, a mismatched singer prefix, ``__MACOSX`` and ``.DS_Store``; plus the
    published ``test_singers_technique.txt``."""
    full = root / "FULL"
    for singer in VOCALSET_SINGERS:
        p = ("f" if singer.startswith("female") else "m") + singer.lstrip("femal")  # female3 -> f3
        for context, technique, pattern in VOCALSET_FILES:
            name = pattern.format(p="m9" if singer == "male8" and context == "excerpts" else p)
            write_audio(full / singer / context / technique / name)
    write_audio(full / "female2" / "scales" / "straight" / "f2_scales_straight_a(1).wav")
    write_text(full / "female1" / ".DS_Store", "junk")
    write_audio(root / "__MACOSX" / "FULL" / "female1" / "._f1_arpeggios_belt_c_a.wav")
    write_text(root / "test_singers_technique.txt", "female2\nfemale8\nmale3\nmale5\nmale10\n")
    write_text(root / "train_singers_technique.txt", "female1\n")
    return full
