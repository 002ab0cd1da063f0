"""VocalSet technique and singer loaders: folder labels, singer splits, quirks."""

from __future__ import annotations

from collections import Counter

import pytest

from dataset_fixtures import VOCALSET_SINGERS, make_vocalset
from m3bert.tasks.datasets.vocalset import TECHNIQUES10, load_vocalset
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_vocalset_technique(tmp_path):
    make_vocalset(tmp_path)
    data = load_task(f"vocalset-technique:{tmp_path}")
    assert data.classes == TECHNIQUES10
    assert len(data.clips) == 20 * 6  # the 'forte' folder is not a technique class; the (1) copy is dropped
    split_of_singer = {c.meta["singer"]: c.split for c in data.clips}
    assert sorted(s for s, sp in split_of_singer.items() if sp == "test") == sorted(["female2", "female8", "male3", "male5", "male10"])
    assert Counter(split_of_singer.values()) == {"train": 9, "valid": 6, "test": 5}
    for c in data.clips:
        assert data.classes[c.target] == c.path.parent.name and c.group == c.meta["singer"] == c.clip_id.split("/")[0]
    assert any(c.path.name == "m9_caro_vibrato.wav" and c.meta["singer"] == "male8" for c in data.clips)
    other = {c.meta["singer"]: c.split for c in load_vocalset(tmp_path, target="technique", seed=7).clips}
    assert other != split_of_singer and {s for s, sp in other.items() if sp == "test"} == {s for s, sp in split_of_singer.items() if sp == "test"}
    assert get_task("vocalset-technique").taxonomy == "performance"


def test_vocalset_singer(tmp_path):
    full = make_vocalset(tmp_path)
    data = load_task(f"vocalset-singer:{full}")  # FULL/ itself as root
    assert data.classes == VOCALSET_SINGERS and len(data.clips) == 20 * 7
    for split in ("train", "valid", "test"):
        assert {data.classes[c.target] for c in data.split(split)} == set(VOCALSET_SINGERS)
    per_singer = Counter((data.classes[c.target], c.split) for c in data.clips)
    # 7 recordings per singer, 12:8:5 -> round(7*12/25)=3 train, round(7*20/25)-3=3 valid, 1 test
    assert all((per_singer[(s, "train")], per_singer[(s, "valid")], per_singer[(s, "test")]) == (3, 3, 1) for s in VOCALSET_SINGERS)
    assert all(c.group == c.clip_id for c in data.clips)
    assert get_task("vocalset-singer").taxonomy == "acoustic"


def test_vocalset_errors(tmp_path):
    full = make_vocalset(tmp_path)
    (full / "male4" / "scales" / "straight" / "m4_scales_straight_a.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"male4/scales/straight/m4_scales_straight_a\.wav: audio file is empty"):
        load_vocalset(tmp_path, target="technique")
    data = load_vocalset(tmp_path, target="technique", skip_missing=True)
    assert len(data.clips) == 119 and data.skipped[0][0] == "male4/scales/straight/m4_scales_straight_a.wav"
    (tmp_path / "test_singers_technique.txt").write_text("female2\nsinger x\n")
    with pytest.raises(DataError, match=r"test_singers_technique\.txt: singer name\(s\) \['singer x'\]"):
        load_vocalset(tmp_path, target="technique", skip_missing=True)
    with pytest.raises(DataError, match=r"no singer folders"):
        load_vocalset(full / "female1", target="singer")
