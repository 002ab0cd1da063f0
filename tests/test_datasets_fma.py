"""FMA small/medium genre loaders on a fixture tracks.csv with the 3-line header."""

from __future__ import annotations

import pytest

from dataset_fixtures import FMA_TRACKS, make_fma
from m3bert.tasks.datasets.fma import audio_rel, load_fma_genre
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError

SPLIT = {"training": "train", "validation": "valid", "test": "test"}


def test_fma_small_and_medium(tmp_path):
    make_fma(tmp_path)
    assert audio_rel(2) == "000/000002.mp3" and audio_rel(99134) == "099/099134.mp3"
    small = load_task(f"fma-small-genre:{tmp_path}")
    assert small.classes == ["Electronic", "Folk", "Hip-Hop", "Pop", "Rock"]
    assert {c.clip_id for c in small.clips} == {"000002", "000005", "000010", "000140", "001039"}
    assert small.skipped == [("099/099134.mp3", small.skipped[0][1])]
    medium = load_task(f"fma-medium-genre:{tmp_path}")
    assert medium.classes == ["Blues", "Electronic", "Folk", "Hip-Hop", "Jazz", "Pop", "Rock"]
    assert len(medium.clips) == 8
    for data in (small, medium):
        for c in data.clips:
            subset, split, genre = FMA_TRACKS[int(c.clip_id)]
            assert c.split == SPLIT[split] and data.classes[c.target] == genre
            assert c.path.parent.parent.name == ("fma_small" if data is small else "fma_medium")


def test_fma_errors(tmp_path):
    tracks = make_fma(tmp_path)
    (tmp_path / "fma_small" / "000" / "000140.mp3").unlink()
    with pytest.raises(DataError, match=r"000/000140\.mp3: audio file not found"):
        load_fma_genre(tmp_path, subset="small")
    assert len(load_fma_genre(tmp_path, subset="small", skip_missing=True).clips) == 4
    text = tracks.read_text()
    tracks.write_text(text.replace("validation,small", "val,small"))
    with pytest.raises(DataError, match=r"tracks\.csv:8: track 10 set\.split='val'"):
        load_fma_genre(tmp_path, subset="small", skip_missing=True)
    tracks.write_text(text.replace("256000,Blues", "256000,"))
    load_fma_genre(tmp_path, subset="small", skip_missing=True)  # track 20 is medium only
    with pytest.raises(DataError, match=r"track 20 in subset 'medium' has an empty track\.genre_top"):
        load_fma_genre(tmp_path, subset="medium")
    tracks.write_text(text.replace("track_id", "id", 1))
    with pytest.raises(DataError, match=r"tracks\.csv:3: first cell \['id'\]"):
        load_fma_genre(tmp_path, subset="small")
