"""The tempogram-stats baseline (evaluate.rhythm) and the octave-robust tempo classes (builtin-tempo-class)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.baselines import available_baselines, get_baseline
from m3bert.evaluate.rhythm import TempogramStatsBaseline, bpm_grid
from m3bert.tasks import load_task
from m3bert.tasks.builtin import TEMPO_CLASSES, fold_tempo, tempo_class
from m3bert.tasks.registry import Clip

SR = 22050


def clicks(bpm: float, seconds: float = 8.0, *, offset: float = 0.1) -> np.ndarray:
    """A click track: a 1 kHz blip every beat."""
    x = np.zeros(int(seconds * SR), np.float32)
    k = np.arange(200)
    blip = np.exp(-k / 30.0) * np.sin(2 * np.pi * 1000 * k / SR)
    for t in np.arange(offset, seconds, 60.0 / bpm):
        i = int(t * SR)
        n = min(len(x) - i, len(blip))
        x[i:i + n] += blip[:n]
    return x


@pytest.fixture(scope="module")
def base():
    return TempogramStatsBaseline()


def _blocks(base: TempogramStatsBaseline, vec: np.ndarray) -> dict[str, np.ndarray]:
    out, pos = {}, 0
    for name, width in base.block_names:
        out[name] = vec[pos:pos + width]
        pos += width
    assert pos == vec.shape[-1]
    return out


@pytest.mark.parametrize("bpm", [75.0, 100.0, 120.0, 150.0, 200.0])
def test_click_track_features_peak_at_its_tempo(base, bpm):
    """The ACF x DFT product peaks at the grid tempo nearest the click rate (not at its octaves), and
    the octave-folded block at its tempo class modulo an octave."""
    b = _blocks(base, base.pool(clicks(bpm), "mean")[0])
    nearest = int(np.argmin(np.abs(np.log2(base.bpm / bpm))))
    assert int(np.argmax(b["product"])) == nearest
    # the octaves are clearly lower than the tempo itself in the product
    for octave in (bpm / 2, bpm * 2):
        if base.bpm[0] <= octave <= base.bpm[-1]:
            k = int(np.argmin(np.abs(np.log2(base.bpm / octave))))
            assert b["product"][k] < 0.8 * b["product"][nearest]
    assert int(np.argmax(b["cyclic"])) == nearest % base.bins_per_octave
    # each half on its own keeps its known ambiguity: the DFT has energy at 2x, the ACF at 1/2 x
    assert b["acf"][nearest] > 0.5 and b["dft"][nearest] > 0.5


def test_tempo_is_preserved_where_frame_statistics_lose_it(base):
    """Two click tracks at different tempi: nearly the same mean spectrum, very different tempogram."""
    a = base.pool(clicks(90.0), "mean")[0]
    b = base.pool(clicks(135.0), "mean")[0]
    pa, pb = _blocks(base, a)["product"], _blocks(base, b)["product"]
    assert abs(int(np.argmax(pa)) - int(np.argmax(pb))) >= 6  # 90 vs 135 BPM: 7 bins at 12 per octave
    assert np.corrcoef(pa, pb)[0, 1] < 0.5


def test_poolings_shapes_and_consistency(base, tmp_path):
    wave = clicks(110.0, seconds=6.0)
    path = tmp_path / "c.wav"
    sf.write(path, wave, SR)
    clip = Clip("c", path, 0, "train", "g")
    d = sum(w for _, w in base.block_names)
    mean = base.embed_clip(clip, pooling="mean")
    meanstd = base.embed_clip(clip, pooling="meanstd")
    slices = base.embed_clip(clip, pooling="slices-meanstd")
    assert mean.shape == (1, d) and meanstd.shape == (1, 2 * d) and slices.shape == (1, 2 * d)
    np.testing.assert_allclose(meanstd[0, :d], mean[0], rtol=1e-5, atol=1e-6)
    assert np.all(meanstd[0, d:] >= 0) and meanstd[0, d:].max() > 0
    assert np.all(np.isfinite(slices))
    with pytest.raises(ConfigError, match="cannot pool"):
        base.embed_clip(clip, pooling="max")
    assert base.layer_names == ["tempogram-stats"] and base.cache_key.startswith("baseline:tempogram-stats:")


def test_registered_and_configurable():
    assert "tempogram-stats" in available_baselines()
    rep = get_baseline("tempogram-stats", bins_per_octave=6)
    assert rep.bins_per_octave == 6 and rep.cache_key != TempogramStatsBaseline().cache_key
    np.testing.assert_allclose(bpm_grid(30, 480, 12)[[0, 12, 24, 48]], [30, 60, 120, 480])
    with pytest.raises(ConfigError, match="bpm"):
        bpm_grid(100, 50, 12)
    with pytest.raises(ConfigError, match="win_length"):
        TempogramStatsBaseline(bpm_min=5.0)  # a 12 s lag does not fit a 4.5 s window
    with pytest.raises(DataError, match="at least"):
        TempogramStatsBaseline().frames(np.zeros(100, np.float32))


def test_tempo_classes_are_octave_robust():
    assert [tempo_class(b) for b in (72, 94, 95, 117, 118, 140)] == [0, 0, 1, 1, 2, 2]
    for bpm in (72.0, 80.0, 101.0, 130.0, 143.0):
        assert fold_tempo(bpm) == pytest.approx(bpm)
        for factor in (0.25, 0.5, 2.0, 4.0):  # the same tempo at another metrical level: the same class
            assert fold_tempo(bpm * factor) == pytest.approx(bpm)
            assert tempo_class(bpm * factor) == tempo_class(bpm)
    with pytest.raises(DataError, match="positive"):
        fold_tempo(0.0)


def test_builtin_tempo_class_task_reads_the_corpus_tempo(tmp_path):
    rows = []
    for i, (bpm, split) in enumerate([(72, "train"), (100, "train"), (130, "valid"), (96, "test"), (140.0, "test")]):
        path = tmp_path / "audio" / f"t{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, clicks(bpm, seconds=1.0), SR)
        rows.append({"clip_id": f"t{i}", "path": f"audio/t{i}.wav", "split": split, "group": f"g{i}", "tempo_bpm": bpm,
                     "kind": "tune"})
    rows.append({"clip_id": "n0", "path": "audio/t0.wav", "split": "train", "group": "n", "tempo_bpm": None, "kind": "note"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    td = load_task(f"builtin-tempo-class:{tmp_path}")
    assert td.label_type == "multiclass" and td.classes == TEMPO_CLASSES
    assert [c.target for c in td.clips] == [0, 1, 2, 1, 2]  # the note (no tempo) is not a tempo clip
    reg = load_task(f"builtin-tempo:{tmp_path}")  # the regression task is unchanged
    assert reg.label_type == "regression" and float(reg.clips[1].target[0]) == 100.0
