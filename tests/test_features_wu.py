"""Wu et al. (2021)'s worker targets (``m3bert.features.wu``): librosa references, the frame contract,
the fast prosody path against pYIN, and the errors on bad input."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
from conftest import make_song

from m3bert.core.errors import AudioError, ConfigError
from m3bert.features import available_feature_sets, feature_set_from_dict, get_feature_set
from m3bert.features.wu import (
    FEATURE_SET_NAMES,
    PROSODY_GROUPS,
    WORKER_FEATURES,
    ProsodyConfig,
    cmnd_voicing,
    interpolated_log_f0,
    worker_dims,
    worker_features,
)

SR = 16000
HOP = 160
KEYS = ["lps", "mfcc", "chroma", "tempogram", "prosody"]
C2, C7 = librosa.note_to_hz("C2"), librosa.note_to_hz("C7")


def _t(seconds: float) -> np.ndarray:
    return np.arange(round(seconds * SR)) / SR


def harmonic_tone(f0: float = 220.0, seconds: float = 1.0) -> np.ndarray:
    t = _t(seconds)
    return sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 5))


def tone_with_silence() -> np.ndarray:
    """0.4 s digital silence, 0.8 s harmonic 220 Hz tone, 0.4 s silence (frames 0-39, 40-119, 120-160)."""
    return np.concatenate([np.zeros(6400), harmonic_tone(seconds=0.8), np.zeros(6400)]).astype(np.float32)


TONE = slice(48, 112)  # frames whose 2048-sample window lies inside the tone
SILENCE = np.r_[0:33, 128:161]  # frames whose window does not reach it (n_fft / 2 = 6.4 frames)


def click_track(bpm: float = 120.0, seconds: float = 6.0) -> np.ndarray:
    times = np.arange(0.25, seconds, 60.0 / bpm)
    return librosa.clicks(times=times, sr=SR, length=int(seconds * SR)).astype(np.float32)


SIGNALS = {
    "sine": lambda: (0.5 * np.sin(2 * np.pi * 440.0 * _t(1.0))).astype(np.float32),
    "chirp": lambda: (0.5 * librosa.chirp(fmin=100, fmax=4000, sr=SR, duration=1.0)).astype(np.float32),
    "clicks": click_track,
    "tone_silence": tone_with_silence,
}


def librosa_reference(key: str, y: np.ndarray) -> np.ndarray:
    """The paper's librosa call, (n_frames, C): sr 16000, n_fft 2048, hop 160, defaults otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key == "lps":
            out = librosa.power_to_db(np.abs(librosa.stft(y, n_fft=2048, hop_length=HOP)) ** 2)
        elif key == "mfcc":
            out = librosa.feature.mfcc(y=y, sr=SR, n_fft=2048, hop_length=HOP)
        elif key == "chroma":
            out = librosa.feature.chroma_stft(y=y, sr=SR, n_fft=2048, hop_length=HOP)
        else:
            out = librosa.feature.tempogram(y=y, sr=SR, hop_length=HOP)
    return out.T


@pytest.fixture(scope="module")
def pyin_runs() -> dict[str, tuple[np.ndarray, ...]]:
    """librosa.pyin at its defaults (C2-C7) on the prosody test signals: (y, f0, voiced, prob)."""
    sigs = {"tone_silence": tone_with_silence(),
            "chirp": (0.3 * librosa.chirp(fmin=110, fmax=880, sr=SR, duration=1.0)).astype(np.float32),
            "melody": make_song(3, 1.5, sample_rate=SR)}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, y in sigs.items():
            out[name] = (y, *librosa.pyin(y, fmin=C2, fmax=C7, sr=SR, frame_length=2048, hop_length=HOP))
    return out


@pytest.fixture(scope="module")
def prosody_of_tone() -> dict[str, np.ndarray]:
    """``wu_prosody`` of the tone in silence by each F0 method, (n_frames, 4)."""
    y = tone_with_silence()
    return {m: worker_features(y, names=["prosody"], configs={"prosody": {"f0_method": m}})["prosody"]
            for m in ("yin", "pyin")}


# --------------------------------------------------------------------------- registry, dims, configs


def test_sets_are_registered_with_the_papers_geometry_and_dims():
    assert WORKER_FEATURES == {"L": "lps", "M": "mfcc", "C": "chroma", "T": "tempogram", "P": "prosody"}
    dims = worker_dims()
    assert dims == {"lps": 1025, "mfcc": 20, "chroma": 12, "tempogram": 384, "prosody": 4}
    for key in KEYS:
        name = FEATURE_SET_NAMES[key]
        assert name == f"wu_{key}" and name in available_feature_sets()
        fs = get_feature_set(name)
        c = fs.config
        assert (c.sample_rate, c.n_fft, c.hop_length, c.cmvn) == (16000, 2048, 160, "none")
        assert fs.n_channels == dims[key] and fs.frame_rate == 100.0 and fs.min_samples == 1
        again = feature_set_from_dict(fs.to_dict())
        assert again.config == fs.config and again.config_hash() == fs.config_hash()
    assert get_feature_set("wu_prosody").spec.group_names == list(PROSODY_GROUPS)
    assert worker_dims({"mfcc": {"n_mfcc": 13}, "tempogram": {"win_length": 200}})["mfcc"] == 13
    # the F0 method is part of the identity, so stores built with either never mix
    assert get_feature_set("wu_prosody").config_hash() != get_feature_set("wu_prosody", f0_method="pyin").config_hash()


@pytest.mark.parametrize("name, overrides, match", [
    ("wu_lps", {"hop_length": 4096}, "wu_lps.hop_length"),
    ("wu_lps", {"sample_rate": 0}, "wu_lps.sample_rate"),
    ("wu_mfcc", {"n_mfcc": 200}, "wu_mfcc.n_mfcc"),
    ("wu_chroma", {"tuning": 0.7}, "wu_chroma.tuning"),
    ("wu_tempogram", {"win_length": 0}, "wu_tempogram.win_length"),
    ("wu_prosody", {"f0_method": "crepe"}, "wu_prosody.f0_method"),
    ("wu_prosody", {"f0_fmin": 5.0}, "does not fit in n_fft"),
    ("wu_prosody", {"f0_fmax": 9000.0}, "f0_fmax"),
    ("wu_prosody", {"n_mfcc": 20}, "unknown option"),
])
def test_bad_configs_are_refused_by_name(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_feature_set(name, **overrides)


# --------------------------------------------------------------------------- librosa references


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_every_spectral_set_equals_its_librosa_reference(signal):
    y = SIGNALS[signal]()
    together = worker_features(y, names=["lps", "mfcc", "chroma", "tempogram"])  # one shared STFT
    for key in ["lps", "mfcc", "chroma", "tempogram"]:
        ref = librosa_reference(key, y)
        fs = get_feature_set(FEATURE_SET_NAMES[key])
        got = fs.extract(y, sample_rate=SR)
        assert got.dtype == np.float32 and got.shape == ref.shape == (1 + y.size // HOP, fs.n_channels)
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * scale, err_msg=f"{key} on {signal}")
        np.testing.assert_array_equal(together[key], got)
        np.testing.assert_array_equal(fs.extract(y, sample_rate=SR, backend="reference"), got)


def test_prosody_pyin_path_is_pase_prosody_from_librosa(pyin_runs, prosody_of_tone):
    y, f0, voiced, prob = pyin_runs["tone_silence"]
    got = prosody_of_tone["pyin"]
    assert got.shape == (1 + y.size // HOP, 4)
    lf0, vp, energy, zcr = got.T
    np.testing.assert_allclose(vp, np.nan_to_num(prob), atol=1e-6)
    np.testing.assert_allclose(energy, librosa.feature.rms(y=y, frame_length=2048, hop_length=HOP)[0], atol=1e-7)
    np.testing.assert_allclose(zcr, librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=HOP)[0],
                               atol=1e-7)
    np.testing.assert_allclose(lf0[voiced], np.log(f0[voiced]), atol=1e-5)
    first, last = np.flatnonzero(voiced)[[0, -1]]  # held before the first and after the last voiced frame
    assert np.allclose(lf0[:first], np.log(f0[first]), atol=1e-5) and np.allclose(lf0[last:], np.log(f0[last]), atol=1e-5)


def test_interpolated_log_f0_is_pases_interpolation():
    f0 = np.array([np.nan, 100.0, np.nan, np.nan, 800.0, np.nan, 50.0])
    voiced = np.array([0, 1, 0, 0, 1, 0, 0], dtype=bool)  # frame 6 has an f0 but is unvoiced: ignored
    lf0 = interpolated_log_f0(f0, voiced, floor_hz=60.0)
    l1, l4 = np.log(100.0), np.log(800.0)
    np.testing.assert_allclose(lf0, [l1, l1, l1 + (l4 - l1) / 3, l1 + 2 * (l4 - l1) / 3, l4, l4, l4])
    np.testing.assert_allclose(interpolated_log_f0(f0, np.zeros(7, bool), floor_hz=60.0), np.log(60.0))


# --------------------------------------------------------------------------- the frame contract


@pytest.mark.parametrize("n", [1, 100, 159, 160, 1000, 2047, 2048, 2049, 4801])
def test_frame_count_is_one_plus_n_over_160_for_any_length(n):
    rng = np.random.default_rng(n)
    y = (0.3 * np.sin(2 * np.pi * 330.0 * np.arange(n) / SR) + 0.01 * rng.standard_normal(n)).astype(np.float32)
    out = worker_features(y, names=KEYS)
    for key in KEYS:
        assert out[key].shape == (1 + n // 160, worker_dims()[key]) and out[key].dtype == np.float32
        assert np.isfinite(out[key]).all()
        assert get_feature_set(FEATURE_SET_NAMES[key]).n_frames(n) == 1 + n // 160
    if n in (100, 2049):  # the reference F0 path keeps the contract too
        pyin = worker_features(y, names=["prosody"], configs={"prosody": {"f0_method": "pyin"}})["prosody"]
        assert pyin.shape == (1 + n // 160, 4)


def test_frame_t_is_centred_on_sample_160t():
    y = np.zeros(SR, dtype=np.float32)
    for k in (20, 37, 61):
        y[:] = 0
        y[160 * k] = 1.0  # an impulse at the centre of frame k
        energy = worker_features(y, names=["lps"])["lps"].max(axis=1)
        assert int(np.argmax(energy)) == k


# --------------------------------------------------------------------------- behaviour


def test_tempogram_of_a_120_bpm_click_track_peaks_at_half_a_second():
    tg = get_feature_set("wu_tempogram").extract(click_track(120.0, 6.0), sample_rate=SR)
    mean = tg[150:450].mean(axis=0)  # frames whose 3.84 s window lies inside the track
    lag = 10 + int(np.argmax(mean[10:]))  # skip the trivial peak at lag 0
    assert lag == 50  # 0.5 s = 50 frames of 10 ms = 120 BPM
    assert librosa.tempo_frequencies(384, hop_length=HOP, sr=SR)[lag] == pytest.approx(120.0)


@pytest.mark.parametrize("method", ["yin", "pyin"])
def test_prosody_recovers_220_hz_and_voicing_of_a_tone_in_silence(method, prosody_of_tone):
    lf0, vp, energy, zcr = prosody_of_tone[method].T
    cents = 1200 * np.abs(np.log2(np.exp(lf0[TONE]) / 220.0))
    assert cents.max() < 6.0  # pYIN's grid is 10 cents
    assert vp[TONE].min() > 0.9 and vp[SILENCE].max() == 0.0
    assert energy[TONE].min() > 0.1 and energy[SILENCE].max() == 0.0 and zcr[SILENCE].max() == 0.0
    # silence holds the F0 of the first / last voiced frame, at the tone's edges (within 15 cents)
    np.testing.assert_allclose(lf0[SILENCE], np.log(220.0), atol=15 / 1200 * np.log(2))


def test_yin_path_f0_equals_librosa_yin(pyin_runs):
    for y, *_ in pyin_runs.values():
        f0, _ = cmnd_voicing(y, ProsodyConfig())
        ref = librosa.yin(y, fmin=C2, fmax=C7, sr=SR, frame_length=2048, hop_length=HOP)
        np.testing.assert_allclose(f0, ref, rtol=1e-6)  # float32 rounding; without librosa's E[0] = 0, ~4e-6


@pytest.mark.parametrize("signal, min_agreement, min_within", [("tone_silence", 0.98, 1.0), ("chirp", 0.98, 1.0),
                                                              ("melody", 0.9, 0.9)])
def test_fast_prosody_agrees_with_pyin(pyin_runs, signal, min_agreement, min_within):
    """The "yin" path against the reference: voiced_prob equal; voiced flags agree on >= min_agreement of
    the frames and F0 is within 5 cents (pYIN's grid is 10) on >= min_within of the frames both call
    voiced (measured 0.99 / 1.00 / 0.99 and 1.00 / 1.00 / 0.98; six melodies 0.88-0.99 and 0.87-1.00, the
    misses at note changes, where pYIN's HMM keeps pitch continuity and YIN decides frame by frame)."""
    y, f0, voiced, prob = pyin_runs[signal]
    cfg = ProsodyConfig()
    f0_fast, prob_fast = cmnd_voicing(y, cfg)
    np.testing.assert_allclose(prob_fast, prob, atol=1e-6)
    voiced_fast = prob_fast >= cfg.voiced_threshold
    assert np.mean(voiced_fast == voiced) >= min_agreement
    both = voiced & voiced_fast
    assert both.sum() > 0.5 * both.size
    assert np.mean(1200 * np.abs(np.log2(f0_fast[both] / f0[both])) <= 5.0 + 1e-3) >= min_within
    lf0_fast = worker_features(y, names=["prosody"])["prosody"][:, 0]
    assert np.median(1200 / np.log(2) * np.abs(lf0_fast - interpolated_log_f0(f0, voiced, floor_hz=C2))) < 5.0


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_a_clear_error():
    y = tone_with_silence()
    with pytest.raises(AudioError, match="empty"):
        worker_features(np.zeros(0, np.float32), names=["lps"])
    bad = y.copy()
    bad[1234] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        worker_features(bad, names=["prosody"])
    with pytest.raises(AudioError, match="non-finite"):
        get_feature_set("wu_mfcc").extract(bad, sample_rate=SR)
    with pytest.raises(AudioError, match=r"sample_rate 44100 Hz.*16000 Hz; resample first"):
        worker_features(y, names=["lps"], sample_rate=44100)
    with pytest.raises(AudioError, match="sample_rate must be an integer"):
        worker_features(y, names=["lps"], sample_rate=0)
    with pytest.raises(AudioError, match=r"shape \(n_samples,\)"):
        worker_features(np.stack([y, y]), names=["lps"])
    with pytest.raises(ConfigError, match=r"unknown worker feature 'W'.*waveform reconstruction"):
        worker_features(y, names=["W"])
    with pytest.raises(ConfigError, match="sequence of keys"):
        worker_features(y, names="lps")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pitch'\]"):
        worker_features(y, names=["lps"], configs={"pitch": {}})
    with pytest.raises(ConfigError, match="frame grids"):
        worker_features(y, names=["lps", "mfcc"], configs={"mfcc": {"hop_length": 320}})
