"""NSynth family and pitch loaders."""

from __future__ import annotations

import json

import pytest

from dataset_fixtures import NSYNTH_NOTES, make_nsynth
from m3bert.tasks.datasets.nsynth import FAMILIES, load_nsynth
from m3bert.tasks.registry import get_task, load_task
from m3bert.core.errors import DataError


def test_nsynth_family_and_pitch(tmp_path):
    make_nsynth(tmp_path)
    fam = load_task(f"nsynth-family:{tmp_path}")
    pitch = load_task(f"nsynth-pitch:{tmp_path}")
    assert fam.classes == FAMILIES and len(pitch.classes) == 128
    expected = {n: s for s, notes in NSYNTH_NOTES.items() for n in notes}
    for data in (fam, pitch):
        assert {c.clip_id: c.split for c in data.clips} == expected
    by_id = {c.clip_id: c for c in fam.clips}
    assert FAMILIES[by_id["synth_lead_synthetic_001-064-100"].target] == "synth_lead"
    assert FAMILIES[by_id["bass_synthetic_033-022-050"].target] == "bass"
    assert by_id["bass_synthetic_033-022-050"].group == by_id["bass_synthetic_033-100-127"].group == "bass_synthetic_033"
    # valid and test share instruments in the real data: grouped by split there, so the official split loads
    assert by_id["bass_synthetic_009-009-025"].group == "valid:bass_synthetic_009"
    assert by_id["bass_synthetic_009-010-025"].group == "test:bass_synthetic_009"
    assert (by_id["bass_synthetic_009-009-025"].split, by_id["bass_synthetic_009-010-025"].split) == ("valid", "test")
    assert {c.clip_id: c.target for c in pitch.clips}["mallet_acoustic_047-009-050"] == 9
    assert {c.clip_id: c.target for c in pitch.clips}["brass_acoustic_046-120-100"] == 120
    assert get_task("nsynth-pitch").taxonomy == "score" and get_task("nsynth-family").taxonomy == "acoustic"


def test_nsynth_errors(tmp_path):
    make_nsynth(tmp_path)
    (tmp_path / "nsynth-test" / "audio" / "keyboard_electronic_001-064-050.wav").unlink()
    with pytest.raises(DataError, match=r"nsynth-test/keyboard_electronic_001-064-050: audio file not found"):
        load_nsynth(tmp_path, target="pitch")
    assert len(load_nsynth(tmp_path, target="pitch", skip_missing=True).clips) == 10
    p = tmp_path / "nsynth-valid" / "examples.json"
    ex = json.loads(p.read_text())
    ex["keyboard_electronic_002-021-025"]["pitch"] = 128
    ex["vocal_acoustic_000-108-127"]["instrument_family_str"] = "voice"
    p.write_text(json.dumps(ex))
    with pytest.raises(DataError, match=r"entry 'keyboard_electronic_002-021-025': pitch=128"):
        load_nsynth(tmp_path, target="pitch", skip_missing=True)
    with pytest.raises(DataError, match=r"entry 'vocal_acoustic_000-108-127': instrument_family=10 instrument_family_str='voice'"):
        load_nsynth(tmp_path, target="family", skip_missing=True)
    # an instrument in two splits breaks the official instrument-disjointness: caught by validate()
    p.write_text(json.dumps({"bass_synthetic_033-050-050": {**ex["keyboard_electronic_002-021-025"], "pitch": 50,
                                                            "instrument_str": "bass_synthetic_033"}}))
    (tmp_path / "nsynth-valid" / "audio" / "bass_synthetic_033-050-050.wav").write_bytes(b"x" * 100)
    with pytest.raises(DataError, match=r"group 'bass_synthetic_033' appears in splits 'train' and 'valid'"):
        load_task(f"nsynth-pitch:{tmp_path}", skip_missing=True)
