"""RWC instrument loader driven by the user metadata CSV."""

from __future__ import annotations

import pytest

from dataset_fixtures import RWC_FILES, make_rwc
from m3bert.tasks.datasets.rwc import default_group, load_rwc_instrument
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError


def test_rwc_default_split_and_groups(tmp_path):
    make_rwc(tmp_path)
    data = load_task(f"rwc-instrument:{tmp_path}")
    assert data.classes == ["piano", "trumpet", "violin"] and len(data.clips) == len(RWC_FILES)
    labels = dict(RWC_FILES)
    for c in data.clips:
        assert data.classes[c.target] == labels[c.clip_id] and c.path == tmp_path / c.clip_id
    groups = {c.clip_id: c.group for c in data.clips}
    assert groups["RWC_I_08/213/213TRNOM_1.wav"] == groups["RWC_I_08/213/213TRNOM_2.wav"] == "213TRNOM"
    assert default_group("x/notes.wav") == "x/notes.wav"
    assert len({c.group for c in data.clips}) == 10
    # the csv itself may be given; another seed gives another split
    same = load_rwc_instrument(tmp_path / "metadata.csv")
    assert [c.split for c in same.clips] == [c.split for c in data.clips]
    assert [c.split for c in load_rwc_instrument(tmp_path, seed=5).clips] != [c.split for c in data.clips]


def test_rwc_explicit_split_group_and_ranges(tmp_path):
    lines = ["path,instrument,group,split,start,end"]
    for k, (rel, inst) in enumerate(RWC_FILES):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        lines.append(f"{rel},{inst},{inst}{k % 3},{['train', 'validation', 'test'][k % 3]},0.25,0.75")
    make_rwc(tmp_path)
    (tmp_path / "meta2.csv").write_text("\n".join(lines) + "\n")
    data = load_rwc_instrument(tmp_path, metadata="meta2.csv").validate()
    assert [c.split for c in data.clips] == [["train", "valid", "test"][k % 3] for k in range(len(RWC_FILES))]
    assert all((c.start, c.end) == (0.25, 0.75) for c in data.clips)
    chunked = load_rwc_instrument(tmp_path, chunk_seconds=0.4)
    assert len(chunked.clips) == 2 * len(RWC_FILES)  # 1 s files -> two full 0.4 s chunks


def test_rwc_errors(tmp_path):
    csv = make_rwc(tmp_path)
    (tmp_path / RWC_FILES[4][0]).unlink()
    with pytest.raises(DataError, match=r"151VNNOM\.wav \(metadata\.csv:6\): audio file not found"):
        load_rwc_instrument(tmp_path)
    assert len(load_rwc_instrument(tmp_path, skip_missing=True).clips) == len(RWC_FILES) - 1
    csv.write_text(csv.read_text().replace("012PFNOP.wav,piano", "012PFNOP.wav,"))
    with pytest.raises(DataError, match=r"metadata\.csv:4: path='RWC_I_01/012/012PFNOP\.wav' instrument=''"):
        load_rwc_instrument(tmp_path, skip_missing=True)
    csv.write_text("file,label\na.wav,piano\n")
    with pytest.raises(DataError, match=r"header lacks column\(s\) \['path', 'instrument'\]"):
        load_rwc_instrument(tmp_path)
    with pytest.raises(DataError, match=r"metadata CSV not found"):
        load_rwc_instrument(tmp_path, metadata="nope.csv")
