"""The on-disk layout of a built-in corpus and its label vocabulary (the one owner of both).

::

    CORPUS/audio/{tune,ensemble,note}/<clip_id>.wav
    CORPUS/metadata.jsonl            one JSON row per clip (labels, split, piece/group, render settings)
    CORPUS/splits/{train,valid,test}.txt   audio paths relative to CORPUS, one per line
    CORPUS/corpus.json               preset, seed, renderer (+ soundfont), counts, failures, timings, versions

Readers (``m3bert.tasks.builtin``) and the builder (``m3bert.corpus.build``) both import from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from m3bert.core.errors import DataError
from m3bert.core.io import read_json, read_jsonl
from m3bert.corpus import scores as sc

FORMAT = "m3bert-builtin-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")

# General MIDI programs (0-based) and their names, for the melody-instrument task: 12 programs, 8 families
GM_NAMES = {
    0: "Acoustic Grand Piano", 6: "Harpsichord", 11: "Vibraphone", 19: "Church Organ", 21: "Accordion",
    24: "Acoustic Guitar (nylon)", 32: "Acoustic Bass", 33: "Electric Bass (finger)", 40: "Violin", 42: "Cello",
    43: "Contrabass", 48: "String Ensemble 1", 56: "Trumpet", 65: "Alto Sax", 68: "Oboe", 70: "Bassoon",
    71: "Clarinet", 73: "Flute",
}
MELODY_PROGRAMS = (0, 6, 11, 19, 21, 24, 40, 56, 65, 68, 71, 73)
ENSEMBLE_PROGRAMS = {  # role -> programs that usually play it
    "melody": (40, 56, 68, 71, 73),
    "accompaniment": (0, 19, 24, 48),
    "bass": (32, 33, 42, 43, 70),
}
TAG_CLASSES = ["melody", "accompaniment", "bass", "drums"]
ROLE_GAIN = {"melody": 1.0, "accompaniment": 0.6, "bass": 0.8, "drums": 0.7}


def program_label(program: int) -> str:
    return f"{program:03d} {GM_NAMES.get(program, 'GM program')}"


INSTRUMENT_CLASSES = [program_label(p) for p in MELODY_PROGRAMS]


def pitch_name(midi: int) -> str:
    names = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    return f"{names[midi % 12]}{midi // 12 - 1}"


def task_classes() -> dict[str, list[str]]:
    return {"dance": list(sc.DANCE_CLASSES), "key": list(sc.KEY_CLASSES), "instrument": list(INSTRUMENT_CLASSES),
            "tags": list(TAG_CLASSES), "pitch": [pitch_name(p) for p in range(128)], "style": list(sc.STYLE_CLASSES)}



# task -> metadata field holding its label
TASK_LABELS = {
    "builtin-dance": "dance",
    "builtin-key": "key",
    "builtin-instrument": "instrument",
    "builtin-tags": "parts",
    "builtin-pitch": "pitch",
    "builtin-tempo": "tempo_bpm",
    "builtin-style": "style",
}


def row_has_label(row: dict[str, Any], label: str) -> bool:
    return row.get(label) is not None


# the type of every field a reader of metadata.jsonl relies on (null = "no such label")
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "clip_id": (str,), "path": (str,), "split": (str,), "group": (str,), "dance": (str,), "key": (str,),
    "instrument": (str,), "style": (str,), "parts": (list,), "pitch": (int,), "tempo_bpm": (int, float),
    "duration": (int, float), "program": (int,), "transpose": (int,),
}


def read_metadata(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``root/metadata.jsonl``; ``DataError`` naming the file/line when malformed."""
    path = Path(root) / "metadata.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a corpus folder built by 'm3bert corpus build'")
    rows = []
    for i, row in read_jsonl(path, example='{"clip_id": ..., "path": ..., "split": ..., "group": ...}'):
        for key in ("clip_id", "path", "split", "group"):
            if key not in row:
                raise DataError(f"{path}:{i}: missing field {key!r}")
        for key, kinds in FIELD_TYPES.items():
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                expected = " or ".join(k.__name__ for k in kinds)
                raise DataError(f"{path}:{i}: field {key!r} = {value!r}; expected {expected} (or null)")
        rows.append(row)
    return rows


def corpus_info(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / "corpus.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a finished corpus (run 'm3bert corpus build' again to resume)")
    return read_json(path)
