"""IRMAS loader: training labels from folders/brackets, single-label test subset, errors."""

from __future__ import annotations

from collections import Counter

import pytest

from dataset_fixtures import IRMAS_TRAIN, make_irmas
from m3bert.tasks.datasets.irmas import INSTRUMENTS, load_irmas_instrument
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError


def test_irmas_load(tmp_path):
    make_irmas(tmp_path)
    data = load_task(f"irmas-instrument:{tmp_path}", valid_fraction=0.25)
    assert data.classes == INSTRUMENTS
    train = [c for c in data.clips if c.meta["source"] == "training"]
    assert sorted(c.clip_id for c in train) == sorted(IRMAS_TRAIN)
    for c in train:
        assert INSTRUMENTS[c.target] == c.clip_id.split("/")[0] and c.split in ("train", "valid")
    by = {c.clip_id: c for c in train}
    assert by["cel/[cel][cla]0001__1.wav"].group == by["cel/[cel][cla]0001__2.wav"].group
    assert INSTRUMENTS[by["cla/[cla][cla]0101__3.wav"].target] == "cla"
    groups = {c.group: c.split for c in train}
    assert Counter(groups.values()) == {"train": 8, "valid": 3}  # 11 recordings, round(11*0.75)=8
    test = data.split("test")
    # the two-instrument excerpt is left out; the repeated 'pia' lines count as one label
    assert sorted((c.clip_id.split("/")[-1], INSTRUMENTS[c.target]) for c in test) == [
        ("(02) dont kill the whale-1.wav", "voi"), ("02 - And The Body Will Die-9.wav", "gel"), ("Song, A & B-3.wav", "pia")]
    assert data.skipped == []


def test_irmas_training_only(tmp_path):
    make_irmas(tmp_path)
    data = load_irmas_instrument(tmp_path, test_set="training").validate()
    assert len(data.clips) == len(IRMAS_TRAIN)
    assert Counter({c.group: c.split for c in data.clips}.values()) == {"train": 7, "valid": 2, "test": 2}


def test_irmas_errors(tmp_path):
    make_irmas(tmp_path)
    (tmp_path / "IRMAS-TestingData-Part3" / "Part3" / "Song, A & B-3.wav").unlink()
    with pytest.raises(DataError, match=r"Part3/Song, A & B-3\.wav: audio file not found"):
        load_irmas_instrument(tmp_path)
    assert len(load_irmas_instrument(tmp_path, skip_missing=True).split("test")) == 2
    (tmp_path / "IRMAS-TestingData-Part1" / "Part1" / "02 - And The Body Will Die-9.txt").write_text("gel\t\ndrums\n")
    with pytest.raises(DataError, match=r"Die-9\.txt:2: instrument code 'drums'"):
        load_irmas_instrument(tmp_path, skip_missing=True)
    (tmp_path / "IRMAS-TrainingData" / "sax" / "[tru][jaz_blu]0700__1.wav").write_bytes(b"x" * 10)
    with pytest.raises(DataError, match=r"sax/\[tru\]\[jaz_blu\]0700__1\.wav: first bracket \['tru'\], expected \[sax\]"):
        load_irmas_instrument(tmp_path, skip_missing=True)
