"""MagnaTagATune top-50 loader on a fixture annotations_final.csv (190 quoted columns)."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_fixtures import MTT_CLIPS, make_mtt
from m3bert.tasks.datasets.mtt import TOP50, load_mtt_top50, song_of
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError


def test_top50_list():
    assert len(TOP50) == 50 == len(set(TOP50))
    assert TOP50[:3] == ["guitar", "classical", "slow"] and TOP50[-1] == "choral"


def test_mtt_load(tmp_path):
    make_mtt(tmp_path)
    data = load_task(f"mtt-top50:{tmp_path}")
    assert data.classes == TOP50
    by_id = {c.clip_id: c for c in data.clips}
    assert set(by_id) == {c for c, _, _ in MTT_CLIPS} - {"35644"}
    assert data.skipped == [("35644 (6/norine_braun-now_and_zen-08-gently-117-146.mp3)", "known corrupt MP3 (jukemir list)")]
    for clip_id, rel, tags in MTT_CLIPS:
        if clip_id == "35644":
            continue
        clip = by_id[clip_id]
        assert sorted(TOP50[i] for i in np.flatnonzero(clip.target)) == sorted(tags)
        assert clip.split == {"0": "train", "b": "train", "c": "valid", "d": "test", "f": "test"}[rel[0]]
    assert by_id["10"].group == by_id["11"].group == "0/some_artist-some_album-03-song_a"
    assert by_id["2"].group == by_id["6"].group != by_id["10"].group
    assert song_of("f/a-b-01-c-30-59.mp3") == "f/a-b-01-c"
    assert "20" not in {c.clip_id for c in load_mtt_top50(tmp_path, drop_untagged=True).clips}


def test_mtt_malformed_and_missing(tmp_path):
    ann = make_mtt(tmp_path)
    (tmp_path / "mp3" / "c" / "valid_artist-album_c-02-song_c-0-29.mp3").unlink()
    with pytest.raises(DataError, match=r"30 \(c/valid_artist.*\): audio file not found"):
        load_mtt_top50(tmp_path)
    data = load_mtt_top50(tmp_path, skip_missing=True)
    assert len(data.clips) == 6 and [s[0][:6] for s in data.skipped] == ["30 (c/", "35644 "]
    text = ann.read_text()
    ann.write_text(text.replace('"40"\t"0"', '"40"\t"x"', 1))
    with pytest.raises(DataError, match=r"annotations_final\.csv:8: tag value\(s\) \[\('choral', 'x'\)\]"):
        load_mtt_top50(tmp_path, skip_missing=True)
    ann.write_text(text.replace('\t"d/test_artist', '\t"0"\t"d/test_artist', 1))
    with pytest.raises(DataError, match=r"annotations_final\.csv:8: 191 fields, expected 190"):
        load_mtt_top50(tmp_path, skip_missing=True)
