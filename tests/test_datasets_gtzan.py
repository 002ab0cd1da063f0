"""GTZAN loader on fixture trees in the Marsyas and Kaggle layouts."""

from __future__ import annotations

from collections import Counter

import pytest

from dataset_fixtures import make_gtzan
from m3bert.tasks.datasets.gtzan import GENRES, load_gtzan_genre, split_lists
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import ConfigError, DataError

# per-split per-genre counts of the published lists (coreyker/dnn-mgr, packaged in m3bert/data/gtzan_fault_filtered)
EXPECTED = {
    "train": [46, 48, 45, 42, 47, 43, 44, 41, 43, 44],
    "valid": [23, 20, 23, 22, 18, 17, 20, 13, 17, 24],
    "test": [31, 31, 30, 29, 27, 27, 27, 30, 26, 32],
}


def test_packaged_lists_are_the_published_ones():
    lists = split_lists()
    assert {k: len(v) for k, v in lists.items()} == {"train": 443, "valid": 197, "test": 290}
    all_items = [x for v in lists.values() for x in v]
    assert len(set(all_items)) == 930
    for split, counts in EXPECTED.items():
        c = Counter(x.split("/")[0] for x in lists[split])
        assert [c[g] for g in GENRES] == counts


@pytest.mark.parametrize("layout,ext", [("marsyas", ".wav"), ("kaggle", ".wav"), ("marsyas", ".au")])
def test_gtzan_layouts(tmp_path, layout, ext):
    make_gtzan(tmp_path, layout=layout, ext=ext)
    data = load_task(f"gtzan-genre:{tmp_path}")
    assert data.task == "gtzan-genre" and data.label_type == "multiclass" and data.classes == GENRES
    counts = {s: len(data.split(s)) for s in ("train", "valid", "test")}
    assert counts == {"train": 442, "valid": 197, "test": 290}  # jazz.00054 dropped
    assert data.skipped == [("jazz/jazz.00054.wav", data.skipped[0][1])] and "corrupt" in data.skipped[0][1]
    for split, expected in EXPECTED.items():
        c = Counter(data.classes[c.target] for c in data.split(split))
        exp = dict(zip(GENRES, expected))
        if split == "train":
            exp["jazz"] -= 1
        assert c == exp
    for clip in data.clips:
        assert clip.path.suffix == ext and clip.path.is_file()
        assert clip.path.parent.name == data.classes[clip.target] == clip.clip_id.split(".")[0]
        assert clip.group == clip.clip_id
    # files outside the filtered lists are not used
    assert not any(c.clip_id in ("classical.00042", "disco.00050") for c in data.clips)


def test_gtzan_root_can_be_the_genre_folder(tmp_path):
    genre_dir = make_gtzan(tmp_path, layout="kaggle")
    assert len(load_gtzan_genre(genre_dir).clips) == 929


def test_gtzan_keep_jazz_00054(tmp_path):
    make_gtzan(tmp_path)
    data = load_gtzan_genre(tmp_path, drop_known_corrupt=False)
    assert len(data.split("train")) == 443 and data.skipped == []


def test_gtzan_missing_audio(tmp_path):
    genre_dir = make_gtzan(tmp_path)
    (genre_dir / "rock" / "rock.00050.wav").unlink()
    listed = [x for v in split_lists().values() for x in v]
    assert "rock/rock.00050.wav" in listed
    with pytest.raises(DataError, match=r"rock/rock\.00050\.wav.*not found"):
        load_gtzan_genre(tmp_path)
    data = load_gtzan_genre(tmp_path, skip_missing=True)
    assert len(data.clips) == 928
    assert ("rock/rock.00050.wav" in [s[0] for s in data.skipped])


def test_gtzan_errors(tmp_path):
    with pytest.raises(DataError, match="genre sub-folders"):
        load_gtzan_genre(tmp_path)
    with pytest.raises(ConfigError, match="needs a dataset path"):
        load_task("gtzan-genre")
    task = get_task("gtzan-genre")
    assert task.taxonomy == "high-level" and task.primary_metric == "accuracy"
