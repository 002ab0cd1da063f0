"""Issue 17: every representation pools like for like: ``mean`` and ``meanstd`` of its frames.

For each kind (an encoder from a model spec, the random-encoder baseline, the raw-feature and the
MFCC baselines) ``meanstd`` is exactly ``concat(mean, std)`` of its frame-level embeddings, and
``mean`` is exactly the first half of it (the raw baseline used to give mean+std under ``mean``).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.core.errors import ConfigError
from m3bert.evaluate.baselines import BASELINE_VERSION, get_baseline
from m3bert.evaluate.representations import HearRepresentation, ModelRepresentation, load_clip_audio
from m3bert.tasks.registry import Clip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "song.wav"
    sf.write(path, make_test_signal(5.0, 48000, seed=4), 48000, subtype="PCM_16")  # resampled by everyone
    return Clip("c", path, 0, "train", "g", start=0.5, end=3.7)


def _frame_stats(frames: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    x = frames.astype(np.float64)
    return x.mean(axis), x.std(axis)


@pytest.mark.parametrize("kind", ["model", "random"])
def test_encoders_meanstd_is_mean_and_std_of_their_frames(clip, kind):
    rep = (ModelRepresentation("random:m2bert-tiny:5") if kind == "model"
           else get_baseline("random"))  # the m2bert-small encoder with random weights
    emb = rep.embedder
    mean = rep.embed_clips([clip], pooling="mean")[0]
    ms = rep.embed_clips([clip], pooling="meanstd")[0]
    wave = load_clip_audio(clip, sample_rate=emb.sample_rate)
    frames, _ = emb.embed(wave, sample_rate=emb.sample_rate, level="frame", layers="all")  # (L, T, D)
    m, s = _frame_stats(frames, 1)
    L, D = frames.shape[0], frames.shape[2]
    assert mean.shape == (L, D) and ms.shape == (L, 2 * D)
    np.testing.assert_array_equal(ms, np.concatenate([m, s], axis=-1).astype(np.float32))
    np.testing.assert_array_equal(mean, ms[:, :D])


@pytest.mark.parametrize("name,width", [("raw", 324), ("mfcc", 60)])
def test_frame_baselines_meanstd_is_mean_and_std_of_their_frames(clip, name, width):
    rep = get_baseline(name)
    mean = rep.embed_clips([clip], pooling="mean")[0]
    ms = rep.embed_clips([clip], pooling="meanstd")[0]
    frames = rep.frames(load_clip_audio(clip, sample_rate=rep.sample_rate))  # (T, C)
    assert frames.shape[1] == width and mean.shape == (1, width) and ms.shape == (1, 2 * width)
    np.testing.assert_array_equal(ms[0], np.concatenate([frames.mean(0), frames.std(0)]).astype(np.float32))
    np.testing.assert_array_equal(mean[0], frames.mean(0).astype(np.float32))
    np.testing.assert_array_equal(mean, ms[:, :width])
    # Kim's slices: each 2.5 s slice's mean and std, then mean and std over slices (unchanged)
    assert rep.embed_clips([clip], pooling="slices-meanstd").shape == (1, 1, 4 * width)
    assert f"v{BASELINE_VERSION}" in rep.cache_key and BASELINE_VERSION >= 2  # old mean+std caches are not reused


def test_poolings_offered_and_refused():
    assert get_baseline("raw").poolings == ("mean", "meanstd", "slices-meanstd")
    assert get_baseline("mfcc").poolings == get_baseline("raw").poolings
    assert HearRepresentation.poolings == ("mean", "slices-meanstd")  # the scene API has no frames
    with pytest.raises(ConfigError, match="cannot pool 'max'"):
        get_baseline("raw").check_pooling("max")
