"""GiantSteps key loader: key parsing, MTG protocol filter, artist split, 30 s clips."""

from __future__ import annotations

import pytest

from dataset_fixtures import GS_KEYS, make_giantsteps
from m3bert.tasks.datasets.giantsteps import KEYS, load_giantsteps_key, parse_key
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_parse_key():
    assert KEYS[:3] == ["C major", "Db major", "D major"] and KEYS[12] == "C minor" and len(KEYS) == 24
    assert KEYS[parse_key("C# major ")] == "Db major"
    assert KEYS[parse_key("d minor\t2\t")] == "D minor"
    assert KEYS[parse_key("A# minor")] == "Bb minor"
    assert KEYS[parse_key("Cb major")] == "B major"
    assert parse_key("H major") is None and parse_key("C dorian") is None and parse_key("-") is None


def test_giantsteps_load(tmp_path):
    mtg = make_giantsteps(tmp_path)
    data = load_task(f"giantsteps-key:{tmp_path}")
    assert data.classes == KEYS
    tracks = {}
    for c in data.clips:
        tracks.setdefault(c.group, []).append(c)
    # test: 45 s -> 1 clip, 65 s -> 2, 59 s -> 1 (full 30 s clips only)
    assert {g: len(v) for g, v in tracks.items() if g.startswith("gs:")} == {"gs:1224698": 1, "gs:3424038": 2, "gs:4452003": 1}
    for tid, (key, _) in GS_KEYS.items():
        assert all(KEYS[c.target] == key and c.split == "test" for c in tracks[f"gs:{tid}"])
    assert [(c.start, c.end) for c in tracks["gs:3424038"]] == [(0.0, 30.0), (30.0, 60.0)]
    kept = {f"mtg:{i}": exp for i, (_, exp) in mtg.items() if exp is not None}
    assert {g for g in tracks if g.startswith("mtg:")} == set(kept)
    for g, key in kept.items():
        assert [KEYS[c.target] for c in tracks[g]] == [key]
    split = {g: v[0].split for g, v in tracks.items()}
    assert split["mtg:5061"] == split["mtg:5881"] == "train"
    assert split["mtg:6001"] == split["mtg:6002"] == "valid"  # collaborator moved to valid
    whole = load_giantsteps_key(tmp_path, chunk_seconds=None)
    assert len(whole.clips) == 7 and all(c.start is None for c in whole.clips)
    assert get_task("giantsteps-key").metrics[:2] == ["key_weighted", "accuracy"]


def test_giantsteps_errors(tmp_path):
    make_giantsteps(tmp_path)
    mtg = next(tmp_path.glob("giantsteps-mtg-key-dataset*"))
    (mtg / "audio" / "5881.LOFI.mp3").unlink()
    with pytest.raises(DataError, match=r"mtg:5881: audio file not found"):
        load_giantsteps_key(tmp_path)
    assert [s[0] for s in load_giantsteps_key(tmp_path, skip_missing=True).skipped] == ["mtg:5881"]
    ann = mtg / "annotations" / "annotations.txt"
    ann.write_text(ann.read_text().replace("A major\t2", "A mayor\t2"))
    with pytest.raises(DataError, match=r"annotations\.txt:3: MANUAL KEY='A mayor'"):
        load_giantsteps_key(tmp_path, skip_missing=True)
    ann.write_text(ann.read_text().replace("A mayor\t2", "A major\tx"))
    with pytest.raises(DataError, match=r"annotations\.txt:3: ID='5881' C='x'"):
        load_giantsteps_key(tmp_path, skip_missing=True)
    gs = next(tmp_path.glob("giantsteps-key-dataset*"))
    ann.write_text(ann.read_text().replace("A major\tx", "A major\t2"))
    (gs / "annotations" / "key" / "1224698.LOFI.key").write_text("Db")
    with pytest.raises(DataError, match=r"1224698\.LOFI\.key: key 'Db'"):
        load_giantsteps_key(tmp_path, skip_missing=True)
