"""DEAM loader: static V/A targets, 30 s chunking, seeded 3/1/1 song split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dataset_fixtures import DEAM_SHORT, deam_targets, make_deam
from m3bert.tasks.datasets._common import chunk_spans, split_groups
from m3bert.tasks.datasets.deam import load_deam_va
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_chunk_spans_rule():
    assert chunk_spans(45.0, 30.0) == [(0.0, 30.0)]
    assert chunk_spans(95.0, 30.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]
    assert chunk_spans(90.0, 30.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]
    assert chunk_spans(20.0, 30.0) == [(0.0, 20.0)]
    assert chunk_spans(0.0, 30.0) == []


def test_split_groups_is_3_1_1_and_seeded():
    groups = [f"s{i}" for i in range(100)]
    a = split_groups(groups, seed=3)
    assert Counter(a.values()) == {"train": 60, "valid": 20, "test": 20}
    assert a == split_groups(list(reversed(groups)), seed=3)  # order independent
    assert a != split_groups(groups, seed=4)
    assert Counter(split_groups(groups[:7], seed=0).values()) == {"train": 4, "valid": 2, "test": 1}


def test_deam_load(tmp_path):
    make_deam(tmp_path)
    data = load_task(f"deam-va:{tmp_path}")
    assert data.label_type == "regression" and data.classes == ["valence", "arousal"]
    per_song = Counter(c.group for c in data.clips)
    assert per_song == {**{str(s): 1 for s in DEAM_SHORT}, "2001": 3, "2058": 1}
    for c in data.clips:
        assert np.allclose(c.target, deam_targets(int(c.group)))
        assert c.path.name == f"{c.group}.mp3"
    chunks = sorted((c.start, c.end) for c in data.clips if c.group == "2001")
    assert chunks == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]
    short = next(c for c in data.clips if c.group == "2058")
    assert short.start == 0.0 and 19.5 < short.end < 20.5
    songs = {c.group: c.split for c in data.clips}
    assert Counter(songs.values()) == {"train": 9, "valid": 3, "test": 3}
    assert songs == split_groups(songs.keys(), seed=0)
    other = {c.group: c.split for c in load_deam_va(tmp_path, seed=1).clips}
    assert other != songs and Counter(other.values()) == Counter(songs.values())
    whole = load_deam_va(tmp_path, chunk_seconds=None)
    assert len(whole.clips) == 15 and all(c.start is None for c in whole.clips)
    t = get_task("deam-va")
    assert t.metrics == ["r2"] and t.options["seed"] == 0 and t.taxonomy == "high-level"


def test_deam_errors(tmp_path):
    song_level = make_deam(tmp_path)
    (tmp_path / "MEMD_audio" / "12.mp3").unlink()
    with pytest.raises(DataError, match=r"song 12: audio file not found: .*12\.mp3"):
        load_deam_va(tmp_path)
    data = load_deam_va(tmp_path, skip_missing=True)
    assert "12" not in {c.group for c in data.clips} and data.skipped[0][0] == "song 12"
    f = song_level / "static_annotations_averaged_songs_1_2000.csv"
    f.write_text(f.read_text().replace("\n13,", "\n13x,"))
    with pytest.raises(DataError, match=r"songs_1_2000\.csv:9: song_id='13x'"):
        load_deam_va(tmp_path, skip_missing=True)
    f.write_text(f.read_text().replace("\n13x,", "\n13,").replace("\n17,2.7,", "\n17,12.7,"))
    with pytest.raises(DataError, match=r"songs_1_2000\.csv:10: valence_mean='12.7'"):
        load_deam_va(tmp_path, skip_missing=True)
    (tmp_path / "MEMD_audio" / "2.mp3").write_bytes(b"not audio at all" * 10)
    f.write_text(f.read_text().replace("\n17,12.7,", "\n17,2.7,"))
    with pytest.raises(DataError, match=r"song 2: cannot read the audio header"):
        load_deam_va(tmp_path)
