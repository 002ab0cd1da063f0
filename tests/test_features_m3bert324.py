"""The m3bert324 feature set: fast path == librosa reference, batching, CMVN, config and identity."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_test_signal
from m3bert.audio import resample
from m3bert.core.errors import AudioError, ConfigError
from m3bert.features import feature_set_from_dict, get_feature_set

SR = 44100
STFT_GROUPS = ("chroma", "mfcc", "dmfcc", "mel")


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error in the Frobenius norm, ||a - b|| / ||b||."""
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.fixture(scope="module")
def fs():
    return get_feature_set("m3bert324")


@pytest.fixture(scope="module")
def signals():
    # lengths that are not multiples of the hop, tones + chirp + noise + transients
    return [make_test_signal(s, SR, seed=i) for i, s in enumerate([3.0, 2.3717, 4.05])]


@pytest.fixture(scope="module")
def reference_raw(fs, signals):
    return [fs.extract(x, sample_rate=SR, normalize=False, backend="reference") for x in signals]


def test_spec_layout(fs):
    assert fs.n_channels == 324 and fs.name == "m3bert324"
    assert [(g.name, g.start, g.stop) for g in fs.spec.groups] == [
        ("chroma", 0, 12), ("mfcc", 12, 32), ("dmfcc", 32, 52), ("mel", 52, 180), ("cqt", 180, 324)]
    assert len(fs.spec.channels("mel+cqt")) == 272
    assert fs.sample_rate == 44100 and fs.hop_length == 1024
    assert fs.frame_rate == pytest.approx(44100 / 1024)
    assert fs.n_frames(30 * SR) == 1292 and fs.n_frames(1293 * 1024) == 1294
    np.testing.assert_allclose(fs.frame_times_ms(3), [0.0, 1024 / 44.1, 2048 / 44.1])


def test_fast_matches_reference_per_group(fs, signals, reference_raw):
    for x, ref in zip(signals, reference_raw):
        fast = fs.extract(x, sample_rate=SR, normalize=False, backend="fast")
        assert fast.shape == ref.shape == (fs.n_frames(len(x)), 324) and fast.dtype == np.float32
        for name in STFT_GROUPS:
            sl = fs.spec.group(name).slice
            assert rel_err(fast[:, sl], ref[:, sl]) < 1e-4, name
            # also elementwise, relative to the group's range, so no single cell hides in the norm
            assert np.abs(fast[:, sl] - ref[:, sl]).max() <= 1e-4 * np.abs(ref[:, sl]).max(), name
        sl = fs.spec.group("cqt").slice
        assert rel_err(fast[:, sl], ref[:, sl]) < 1e-3
        assert np.abs(fast[:, sl] - ref[:, sl]).max() <= 1e-3 * np.abs(ref[:, sl]).max()


def test_reference_is_not_trivial(reference_raw, fs):
    ref = reference_raw[0]
    for g in fs.spec.groups:  # every group varies over time and across channels
        block = ref[:, g.slice]
        assert np.isfinite(block).all()
        assert block.std(axis=0).mean() > 1e-3 and block.mean(axis=1).std() > 1e-4, g.name
    # the two tones, A3 (220 Hz) and E5 (659.3 Hz), are the two strongest pitch classes
    assert set(np.argsort(ref[:, fs.spec.group("chroma").slice].mean(axis=0))[-2:]) == {4, 9}


def test_batched_equals_one_at_a_time(fs, signals):
    batched = fs.extract_batch(signals, sample_rate=SR)
    for x, b in zip(signals, batched):
        single = fs.extract(x, sample_rate=SR)
        np.testing.assert_allclose(b, single, rtol=0, atol=1e-5)


def test_clip_cmvn(fs, signals, reference_raw):
    out = fs.extract(signals[0], sample_rate=SR, backend="reference")
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    raw = reference_raw[0]
    np.testing.assert_allclose(out, (raw - raw.mean(0)) / raw.std(0), atol=1e-4)


def test_clip_cmvn_matches_float64_reference():
    """cmvn_clip keeps the frames float32 (speed) but equals the float64 formula to float32 rounding,
    also for large offsets (MFCC 0 of silence ~ -1131), near-constant and exactly constant channels."""
    from m3bert.features.normalize import cmvn_clip, std_floor

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4000, 40)) * rng.uniform(1e-3, 100, 40) + rng.uniform(-2000, 2000, 40)
    x[:, 0] = -1131.0
    x[:, 1] = -1131.0 + 4e-4 * rng.standard_normal(4000)
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    mean, std = x64.mean(0), x64.std(0)
    ref = (x64 - mean) / std_floor(mean, std, eps=1e-3)
    out = cmvn_clip(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    assert np.all(out[:, 0] == 0.0)


def speechpy_cmvn_no_variance(vec: np.ndarray) -> np.ndarray:
    """speechpy.processing.cmvn(vec, variance_normalization=False), written out (speechpy 2.x):
    ``mean_subtracted = vec - np.mean(vec, axis=0)``."""
    return vec - np.mean(vec, axis=0)


def test_seed_cmvn_is_the_seed_codes_speechpy_call(signals, reference_raw):
    """The seed code applies speechpy's cmvn to the (channels, frames) stack of its features:
    each frame loses its mean over channels, with no variance scaling (not per-channel CMVN)."""
    seed_fs = get_feature_set("m3bert324", cmvn="seed")
    assert get_feature_set("m3bert324").config.cmvn == "clip"  # the default is unchanged
    raw = reference_raw[1]  # (frames, channels)
    stacked = np.ascontiguousarray(raw.T)  # (channels, frames), as the seed code's np.vstack builds it
    expected = speechpy_cmvn_no_variance(stacked).T
    got = seed_fs.normalize(raw)
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_array_equal(got, expected)  # exactly, bit for bit
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=1e-3)  # per frame, across channels
    assert np.abs(got.mean(axis=0)).max() > 1.0  # not per-channel: channel means survive
    np.testing.assert_array_equal(seed_fs.extract(signals[1], sample_rate=SR, backend="reference"), expected)
    assert seed_fs.config_hash() != get_feature_set("m3bert324").config_hash()
    assert feature_set_from_dict(seed_fs.to_dict()).config.cmvn == "seed"


def test_other_sample_rate_is_resampled(fs, signals):
    x22 = make_test_signal(2.0, 22050, seed=9)
    direct = fs.extract(x22, sample_rate=22050, normalize=False)
    expected = fs.extract(resample(x22, orig_sample_rate=22050, sample_rate=SR), sample_rate=SR, normalize=False)
    np.testing.assert_array_equal(direct, expected)
    assert direct.shape[0] == fs.n_frames(2 * SR)


def test_silence_and_shortest_clip(fs):
    for backend in ("fast", "reference"):
        silent = fs.extract(np.zeros(SR, dtype=np.float32), sample_rate=SR, backend=backend)
        assert np.isfinite(silent).all() and np.abs(silent).max() < 0.1  # rounding noise stays ~0
    x = make_test_signal(2048 / SR, SR, seed=3)  # exactly one window -> 3 frames
    a = fs.extract(x, sample_rate=SR, normalize=False, backend="fast")
    b = fs.extract(x, sample_rate=SR, normalize=False, backend="reference")
    assert a.shape == (3, 324)
    assert rel_err(a[:, :180], b[:, :180]) < 1e-4
    with pytest.raises(AudioError, match="shorter than one analysis window"):
        fs.extract(x[:2047], sample_rate=SR)
    with pytest.raises(AudioError, match="non-finite"):
        fs.extract(np.full(4096, np.nan, dtype=np.float32), sample_rate=SR)


def test_chroma1008_variant_and_estimated_tuning():
    x = make_test_signal(1.5, SR, seed=4)
    seed_fs = get_feature_set("m3bert324", cqt_variant="chroma1008", tuning=None)
    a = seed_fs.extract(x, sample_rate=SR, normalize=False, backend="fast")
    b = seed_fs.extract(x, sample_rate=SR, normalize=False, backend="reference")
    assert a.shape == b.shape == (seed_fs.n_frames(len(x)), 324)
    for name in STFT_GROUPS + ("cqt",):
        sl = seed_fs.spec.group(name).slice
        assert rel_err(a[:, sl], b[:, sl]) < 1e-4, name
    # folded + max-normalised per frame: the largest linear value of every frame is 1 -> ln(10 + 1e-6)
    cqt = b[:, seed_fs.spec.group("cqt").slice]
    np.testing.assert_allclose(cqt.max(axis=1), np.log(10 + 1e-6), rtol=1e-5)
    literal = get_feature_set("m3bert324").extract(x, sample_rate=SR, normalize=False)
    assert rel_err(literal[:, 180:], cqt) > 0.1


def test_config_validation_and_identity():
    with pytest.raises(ConfigError, match="unknown option"):
        get_feature_set("m3bert324", hop=512)
    with pytest.raises(ConfigError, match="cqt_variant"):
        get_feature_set("m3bert324", cqt_variant="nnaudio")
    with pytest.raises(ConfigError, match="cmvn"):
        get_feature_set("m3bert324", cmvn="global")
    with pytest.raises(ConfigError, match="unknown feature set"):
        get_feature_set("m3bert999")
    with pytest.raises(ConfigError, match="backend"):
        get_feature_set("m3bert324").extract(np.zeros(4096), sample_rate=SR, backend="gpu")
    a, b = get_feature_set("m3bert324"), get_feature_set("m3bert324", cqt_variant="chroma1008")
    assert a.config_hash() == get_feature_set("m3bert324").config_hash() != b.config_hash()
    d = a.to_dict()
    assert d["name"] == "m3bert324" and d["config"]["n_fft"] == 2048 and d["cmvn_stats"] is None


def test_corpus_cmvn_stats_round_trip(signals):
    fs = get_feature_set("m3bert324", cmvn="corpus")
    with pytest.raises(ConfigError, match="no statistics"):
        fs.extract(signals[0], sample_rate=SR)
    raw = fs.extract(signals[0], sample_rate=SR, normalize=False)
    h0 = fs.config_hash()
    fs.set_cmvn_stats(raw.mean(0), raw.std(0) + 1)
    assert fs.config_hash() != h0 and fs.config_hash(with_stats=False) == h0
    out = fs.extract(signals[0], sample_rate=SR)
    np.testing.assert_allclose(out, (raw - raw.mean(0)) / (raw.std(0) + 1), atol=1e-5)
    clone = feature_set_from_dict(fs.to_dict())
    assert clone.config_hash() == fs.config_hash()
    np.testing.assert_array_equal(clone.extract(signals[0], sample_rate=SR), out)
    with pytest.raises(ConfigError, match="shape"):
        fs.set_cmvn_stats(np.zeros(3), np.ones(3))


def test_fast_cqt_reproduces_librosa_cqt():
    """Own multirate CQT vs librosa.cqt on linear magnitudes (Frobenius-norm relative error, L1-normed
    wavelets as librosa), also off-tuning and for the shortest clip."""
    from m3bert.features import cqt, reference

    cfg = get_feature_set("m3bert324").config
    for seconds, tuning in [(3.3, 0.0), (1.7, 0.23), (2048 / SR, -0.4)]:
        x = make_test_signal(seconds, SR, seed=7)
        ref = reference.cqt_literal(x, cfg, tuning)
        got = cqt.literal_cqt_batch([x], cfg, [tuning])[0]
        assert got.shape == ref.shape
        assert rel_err(got, ref) < 1e-5
