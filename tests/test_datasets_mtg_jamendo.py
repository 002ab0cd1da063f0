"""MTG-Jamendo loaders on a fixture copy of the repository's split-0 files and audio tree."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_fixtures import MTG_ROWS, make_mtg_jamendo, mtg_path
from m3bert.tasks.datasets.mtg_jamendo import load_mtg
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_mtg_moodtheme(tmp_path):
    make_mtg_jamendo(tmp_path)
    data = load_task(f"mtg-moodtheme:{tmp_path}")
    assert data.label_type == "multilabel"
    assert data.classes == ["background", "documentary", "emotional", "happy", "space"]
    assert [len(data.split(s)) for s in ("train", "valid", "test")] == [3, 1, 2]
    by_id = {c.clip_id: c for c in data.clips}
    for track, artist, split, tags in MTG_ROWS["moodtheme"]:
        clip = by_id[f"track_{track:07d}"]
        names = [data.classes[i] for i in np.flatnonzero(clip.target)]
        assert names == sorted(t.split("---")[1] for t in tags)
        assert clip.split == {"validation": "valid"}.get(split, split)
        assert clip.path == tmp_path / "audio" / mtg_path(track)
        assert clip.target.dtype == np.float32 and clip.meta["artist"] == f"artist_{artist:06d}"
    assert by_id["track_1009600"].path.parent.name == "00"  # id % 100 folder


def test_mtg_top50_keeps_categories_and_low_quality(tmp_path):
    make_mtg_jamendo(tmp_path, audio="mtg_audio", low_only=True)
    data = load_mtg(tmp_path, subset="top50", audio_dir=str(tmp_path / "mtg_audio"))
    assert data.classes == ["genre---rock", "instrument---guitar", "instrument---voice", "mood/theme---happy"]
    assert all(c.path.name.endswith(".low.mp3") for c in data.clips)
    test = data.split("test")[0]
    assert test.target.tolist() == [1, 0, 1, 1]
    # the data/ folder itself is accepted as root
    assert len(load_mtg(tmp_path / "data", subset="top50", audio_dir=str(tmp_path / "mtg_audio")).clips) == 3


def test_mtg_tasks_registered():
    for name, tax in [("mtg-moodtheme", "high-level"), ("mtg-genre", "high-level"), ("mtg-instrument", "acoustic"), ("mtg-top50", "high-level")]:
        t = get_task(name)
        assert t.label_type == "multilabel" and t.taxonomy == tax and t.metrics[:2] == ["roc_auc_macro", "pr_auc_macro"]


def _corrupt(tmp_path, old, new):
    p = tmp_path / "data" / "splits" / "split-0" / "autotagging_moodtheme-train.tsv"
    text = p.read_bytes().decode()
    assert old in text
    p.write_bytes(text.replace(old, new, 1).encode())
    return p


@pytest.mark.parametrize("old,new,msg", [
    ("mood/theme---space", "genre---rock", r"'genre---rock' is not a 'mood/theme' tag"),
    ("mood/theme---space", "space", r"tag 'space', expected '<category>---<tag>'"),
    ("212.7", "abc", r"DURATION='abc'"),
])
def test_mtg_malformed_rows(tmp_path, old, new, msg):
    make_mtg_jamendo(tmp_path)
    _corrupt(tmp_path, old, new)
    with pytest.raises(DataError, match=r"autotagging_moodtheme-train\.tsv:\d+: .*" + msg):
        load_mtg(tmp_path, subset="moodtheme")


def test_mtg_missing_audio_and_missing_split_file(tmp_path):
    audio = make_mtg_jamendo(tmp_path)
    (audio / mtg_path(5634)).unlink()
    with pytest.raises(DataError, match=r"track_0005634 \(34/5634\.mp3\): audio file not found"):
        load_mtg(tmp_path, subset="moodtheme")
    data = load_mtg(tmp_path, subset="moodtheme", skip_missing=True)
    assert len(data.clips) == 5 and data.skipped[0][0] == "track_0005634 (34/5634.mp3)"
    with pytest.raises(DataError, match=r"autotagging_genre-train\.tsv not found"):
        load_mtg(tmp_path, subset="genre")
