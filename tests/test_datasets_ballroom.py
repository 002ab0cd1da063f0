"""Extended Ballroom loaders: XML labels, duplicate grouping, 3/1/1 split, 9-class subset."""

from __future__ import annotations

import pytest

from dataset_fixtures import make_extended_ballroom
from m3bert.tasks.datasets.ballroom import GENRES9, GENRES13, load_ballroom
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_ballroom13(tmp_path):
    songs = make_extended_ballroom(tmp_path)
    data = load_task(f"ballroom-ext:{tmp_path}")
    assert data.classes == GENRES13 and len(data.clips) == 39
    by_id = {c.clip_id: c for c in data.clips}
    for sid, (genre, link) in songs.items():
        c = by_id[sid]
        assert data.classes[c.target] == genre and c.path.is_file()
        if link is not None:
            assert c.group == by_id[link].group == min(sid, link, key=int) and c.split == by_id[link].split
    assert by_id["100634"].path.name == "Waltz.100634.mp3"
    n_groups = len({c.group for c in data.clips})
    assert n_groups == 37
    per_split = {s: len({c.group for c in data.split(s)}) for s in ("train", "valid", "test")}
    assert per_split == {"train": 22, "valid": 8, "test": 7}  # round(37*3/5)=22, round(37*4/5)=30


def test_ballroom9_and_seed(tmp_path):
    make_extended_ballroom(tmp_path)
    data = load_task(f"ballroom-ext9:{tmp_path}")
    assert data.classes == GENRES9 and len(GENRES9) == 9 and len(data.clips) == 27
    assert {data.classes[c.target] for c in data.clips} == set(GENRES9)
    a = {c.clip_id: c.split for c in load_ballroom(tmp_path, seed=1).clips}
    b = {c.clip_id: c.split for c in load_ballroom(tmp_path, seed=2).clips}
    assert a != b and a == {c.clip_id: c.split for c in load_ballroom(tmp_path, seed=1).clips}
    assert get_task("ballroom-ext9").primary_metric == "macro_f1" and get_task("ballroom-ext").options["seed"] == 0


def test_ballroom_errors(tmp_path):
    make_extended_ballroom(tmp_path)
    (tmp_path / "Tango" / "100628.mp3").unlink()
    with pytest.raises(DataError, match=r"Tango/100628: audio file not found: .*100628\.mp3 or .*Tango\.100628\.mp3"):
        load_ballroom(tmp_path)
    data = load_ballroom(tmp_path, skip_missing=True)
    assert len(data.clips) == 38 and data.skipped[0][0] == "Tango/100628"
    xml = tmp_path / "extendedballroom_v1.1.xml"
    xml.write_text(xml.read_text().replace('id="100610"', 'id="10061x"'))
    with pytest.raises(DataError, match=r"<Pasodoble> child <song id='10061x'>"):
        load_ballroom(tmp_path, skip_missing=True)
    xml.write_text(xml.read_text().replace("<Jive>", "<Disco>").replace("</Jive>", "</Disco>"))
    with pytest.raises(DataError, match=r"genre element <Disco>"):
        load_ballroom(tmp_path, skip_missing=True)
