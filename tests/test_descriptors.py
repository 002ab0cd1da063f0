"""The ``descriptors`` feature set: every channel equals a direct librosa call, frames are the
model's frames, f0 can be turned off, and bad configs are refused."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import make_test_signal

from m3bert.core.errors import ConfigError
from m3bert.features import available_feature_sets, get_feature_set
from m3bert.features.descriptors import F0_GROUPS, MASKED_BY

SR, N_FFT, HOP = 44100, 2048, 1024
RTOL = 1e-5  # the feature set returns float32; every reference below is computed in float32/float64


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    return make_test_signal(2.5, seed=3)


@pytest.fixture(scope="module")
def frames(signal):
    fs = get_feature_set("descriptors")
    return fs, fs.extract(signal, sample_rate=SR)


def col(fs, X, name):
    return X[:, fs.spec.group(name).slice].T  # (n_channels, T), librosa's layout


def close(a, b, *, rtol=RTOL, atol=1e-6):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.abs(b).max())))


def test_registered_with_one_group_per_descriptor(frames, signal):
    fs, X = frames
    assert "descriptors" in available_feature_sets()
    assert fs.spec.group_names == ["centroid", "bandwidth", "rolloff", "flatness", "contrast", "onset_strength", "rms",
                                   "zcr", "f0", "voiced_prob", "voiced", "harmonicity", "percussiveness", "brightness",
                                   "tempo"]
    assert fs.spec.group("contrast").size == 7
    assert len(fs.channel_names) == fs.n_channels == X.shape[1] == 21
    assert X.dtype == np.float32 and np.isfinite(X).all()
    assert fs.config.cmvn == "none"
    assert MASKED_BY == {"f0": "voiced"}


def test_frames_are_the_models_frames(signal):
    """Same frame count as m3bert324, and an event lands in the same frame of both."""
    model_fs = get_feature_set("m3bert324")
    desc = get_feature_set("descriptors", f0=False)
    y = np.zeros(SR * 2, np.float32)
    y[int(1.3 * SR):int(1.3 * SR) + 512] = 0.8 * np.sin(np.arange(512) * 0.3)  # one short burst
    X = desc.extract(y, sample_rate=SR)
    M = model_fs.extract(y, sample_rate=SR, normalize=False)
    assert X.shape[0] == M.shape[0] == 1 + y.size // HOP
    mel = M[:, model_fs.spec.group("mel").slice].max(axis=1)
    assert int(np.argmax(col(desc, X, "rms")[0])) == int(np.argmax(mel))
    for n in (SR, SR + 1, SR + HOP - 1, 3 * HOP):  # any length
        assert desc.extract(make_test_signal(n / SR)[:n], sample_rate=SR).shape[0] == model_fs.n_frames(n)


def test_spectral_channels_equal_librosa(frames, signal):
    fs, X = frames
    y = signal
    kw = dict(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP)
    close(col(fs, X, "centroid"), librosa.feature.spectral_centroid(**kw))
    close(col(fs, X, "bandwidth"), librosa.feature.spectral_bandwidth(**kw))
    close(col(fs, X, "rolloff"), librosa.feature.spectral_rolloff(**kw, roll_percent=0.85))
    close(col(fs, X, "flatness"), librosa.feature.spectral_flatness(y=y, n_fft=N_FFT, hop_length=HOP))
    close(col(fs, X, "contrast"), librosa.feature.spectral_contrast(**kw, fmin=200.0, n_bands=6))
    close(col(fs, X, "onset_strength"), librosa.onset.onset_strength(**kw)[None])
    close(col(fs, X, "rms"), librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP))
    close(col(fs, X, "zcr"), librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP))


def test_energy_ratios_equal_their_definition(frames, signal):
    fs, X = frames
    D = librosa.stft(signal, n_fft=N_FFT, hop_length=HOP)
    H, P = librosa.decompose.hpss(D)
    e = (np.abs(D).astype(np.float64) ** 2).sum(axis=0)
    close(col(fs, X, "harmonicity")[0], (np.abs(H).astype(np.float64) ** 2).sum(axis=0) / e)
    close(col(fs, X, "percussiveness")[0], (np.abs(P).astype(np.float64) ** 2).sum(axis=0) / e)
    freqs = librosa.fft_frequencies(sr=SR, n_fft=N_FFT)
    close(col(fs, X, "brightness")[0], (np.abs(D[freqs >= 1500.0]).astype(np.float64) ** 2).sum(axis=0) / e)
    h, p = col(fs, X, "harmonicity")[0], col(fs, X, "percussiveness")[0]
    assert ((h >= 0) & (p >= 0) & (h + p <= 1 + 1e-6)).all()
    assert h.mean() > 0.5  # the test signal is mostly tones


def test_tempo_is_the_tempogram_peak(frames, signal):
    fs, X = frames
    tg = librosa.feature.tempogram(y=signal, sr=SR, hop_length=HOP, win_length=384)
    bpm = librosa.tempo_frequencies(tg.shape[0], hop_length=HOP, sr=SR)
    ok = np.flatnonzero((bpm >= 30) & (bpm <= 300))
    expected = bpm[ok][np.argmax(tg[ok], axis=0)]
    close(col(fs, X, "tempo")[0], expected)


def test_f0_is_pyin_with_zero_when_unvoiced(frames, signal):
    fs, X = frames
    f0, voiced, prob = librosa.pyin(signal, fmin=librosa.note_to_hz("C2"), fmax=librosa.note_to_hz("C7"), sr=SR,
                                    frame_length=2048, hop_length=HOP, resolution=0.25)
    got_f0, got_p, got_v = (col(fs, X, g)[0] for g in F0_GROUPS)  # f0, voiced_prob, voiced
    np.testing.assert_array_equal(got_v, voiced.astype(np.float32))
    close(got_p, np.nan_to_num(prob))
    close(got_f0, np.where(voiced, np.nan_to_num(f0), 0.0))
    assert voiced.any() and (got_f0[got_v == 1] > 60).all()


def test_f0_can_be_turned_off(signal, frames):
    fs, X = frames
    off = get_feature_set("descriptors", f0=False)
    Y = off.extract(signal, sample_rate=SR)
    assert not set(F0_GROUPS) & set(off.spec.group_names)
    assert Y.shape == (X.shape[0], X.shape[1] - 3)
    for g in off.spec.group_names:  # the other groups are unchanged
        np.testing.assert_array_equal(col(off, Y, g), col(fs, X, g))


def test_silence_and_other_rates_give_finite_values():
    fs = get_feature_set("descriptors", f0=False)
    X = fs.extract(np.zeros(SR, np.float32), sample_rate=SR)
    assert np.isfinite(X).all()
    for g in ("harmonicity", "percussiveness", "brightness", "tempo"):
        assert (col(fs, X, g) == 0).all(), g
    Y = fs.extract(make_test_signal(1.0, sample_rate=22050), sample_rate=22050)  # resampled to 44.1 kHz
    assert Y.shape[0] == 1 + 44100 // HOP


@pytest.mark.parametrize("bad, match", [
    (dict(cmvn="clip"), "cmvn must be 'none'"),
    (dict(brightness_hz=30000.0), "brightness_hz"),
    (dict(hop_length=4096), "hop_length"),
    (dict(f0="yes"), "f0 must be"),
    (dict(f0_fmin=20.0), "f0_frame_length"),
    (dict(nonsense=1), "unknown option"),
])
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        get_feature_set("descriptors", **bad)
