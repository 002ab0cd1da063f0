"""Emomusic loader: targets, jukemir artist-hash split, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dataset_fixtures import EMOMUSIC_SONGS, make_emomusic
from m3bert.tasks.datasets.emomusic import load_emomusic_va, normalise_artist
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError


def test_normalise_artist():
    assert normalise_artist("Kevin  MacLeod ") == "kevin macleod"
    assert normalise_artist("Jazz Trio #1") == "jazz trio"
    assert normalise_artist("Ümlaut Band") == "mlaut band"


def test_emomusic_load(tmp_path):
    make_emomusic(tmp_path)
    data = load_task(f"emomusic-va:{tmp_path}")
    assert data.classes == ["valence", "arousal"] and len(data.clips) == len(EMOMUSIC_SONGS)
    for c in data.clips:
        artist, subset, a, v = EMOMUSIC_SONGS[int(c.clip_id)]
        assert np.allclose(c.target, [v, a])
        if subset == "evaluation":
            assert c.split == "test"
        else:
            h = int(hashlib.sha1(" ".join(artist.lower().replace("#1", "").replace("ü", "").split()).encode()).hexdigest(), 16)
            assert c.split == ("train" if h % 10 < 8 else "valid")
    by_id = {c.clip_id: c for c in data.clips}
    assert by_id["2"].group == by_id["3"].group == "artist:kevin macleod" and by_id["2"].split == by_id["3"].split
    assert by_id["1000"].path == tmp_path / "clips_45seconds" / "1000.mp3"


def test_emomusic_errors(tmp_path):
    make_emomusic(tmp_path)
    (tmp_path / "clips_45seconds" / "5.mp3").unlink()
    with pytest.raises(DataError, match=r"song 5: audio file not found"):
        load_emomusic_va(tmp_path)
    assert [s[0] for s in load_emomusic_va(tmp_path, skip_missing=True).skipped] == ["song 5"]
    f = tmp_path / "static_annotations.csv"
    f.write_text(f.read_text().replace("11, 5.5", "11, n/a"))
    with pytest.raises(DataError, match=r"static_annotations\.csv:6: mean_arousal='n/a'"):
        load_emomusic_va(tmp_path, skip_missing=True)
    f.write_text(f.read_text().replace("11, n/a", "11, 5.5"))
    g = tmp_path / "songs_info.csv"
    g.write_text(g.read_text().replace("Blues,evaluation", "Blues,eval", 1))
    with pytest.raises(DataError, match=r"songs_info\.csv:7: 'Mediaeval 2013 set'='eval'"):
        load_emomusic_va(tmp_path, skip_missing=True)
