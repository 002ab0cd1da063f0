"""OpenMIC-2018 loader: masked multilabel targets, official partition, seeded valid."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_fixtures import OPENMIC_CLASSES, OPENMIC_LABELS, OPENMIC_TEST, make_openmic
from m3bert.tasks.datasets.openmic import load_openmic_instrument
from m3bert.tasks.registry import load_task
from m3bert.core.errors import DataError


@pytest.mark.parametrize("readme_names", [False, True])
def test_openmic_load(tmp_path, readme_names):
    make_openmic(tmp_path, readme_partition_names=readme_names)
    data = load_task(f"openmic-instrument:{tmp_path}", valid_fraction=0.4)
    assert data.classes == OPENMIC_CLASSES and len(data.clips) == 7
    for c in data.clips:
        labs = OPENMIC_LABELS[c.clip_id]
        for i, name in enumerate(OPENMIC_CLASSES):
            assert c.target_mask[i] == (name in labs)
            assert c.target[i] == (name in labs and labs[name] >= 0.5)
        assert c.group == c.clip_id.split("_")[0]
        assert (c.split == "test") == (c.clip_id in OPENMIC_TEST)
    assert sum(c.split == "valid" for c in data.clips) == 2  # round(5 * 0.4)
    by = {c.clip_id: c for c in data.clips}
    assert by["000135_483840"].target[OPENMIC_CLASSES.index("voice")] == 1  # relevance 0.5 is positive
    assert np.sum(by["000139_119040"].target_mask) == 1 and np.sum(by["000139_119040"].target) == 0


def test_openmic_errors(tmp_path):
    d = make_openmic(tmp_path)
    (d / "audio" / "000" / "000190_330240.ogg").unlink()
    with pytest.raises(DataError, match=r"000190_330240: audio file not found"):
        load_openmic_instrument(d)
    assert load_openmic_instrument(d, skip_missing=True).skipped[0][0] == "000190_330240"
    lab = d / "openmic-2018-aggregated-labels.csv"
    lab.write_text(lab.read_text().replace("000190_330240,synthesizer", "000190_330240,synth"))
    with pytest.raises(DataError, match=r"aggregated-labels\.csv:10: instrument='synth'"):
        load_openmic_instrument(d, skip_missing=True)
    lab.write_text(lab.read_text().replace("000190_330240,synth,0.75", "000190_330240,synthesizer,1.75"))
    with pytest.raises(DataError, match=r"aggregated-labels\.csv:10: relevance='1.75'"):
        load_openmic_instrument(d, skip_missing=True)
    lab.write_text(lab.read_text().replace("000190_330240,synthesizer,1.75", "000190_330240,synthesizer,0.75"))
    part = d / "partitions" / "split01_test.csv"
    part.write_text(part.read_text() + "12345\n")
    with pytest.raises(DataError, match=r"split01_test\.csv:3: sample_key='12345'"):
        load_openmic_instrument(d, skip_missing=True)
