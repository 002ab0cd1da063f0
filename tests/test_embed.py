"""Embedder: pure windowing/pooling functions, shapes, batching invariance, seeding, model
resolution and refusals. The long-audio agreement tests are in ``test_embed_long.py``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_test_signal
from m3bert.embed import (
    Embedder,
    load_model,
    parse_layers,
    pool_frames,
    window_owners,
    window_starts,
)
from m3bert.core.errors import AudioError, CheckpointError, ConfigError
from m3bert.features import get_feature_set
from m3bert.models import create_model
from m3bert.models.hub import resolve_model_dir

SR = 44100


_FEATURE_CACHE: dict = {}


def cache_features(fs):
    """Memoise ``fs.extract`` per (feature config, waveform, options): these tests are about the
    encoder side, and the (deterministic) feature extraction would otherwise dominate their run
    time. Returns ``fs``."""
    import hashlib

    extract, ident = fs.extract, fs.config_hash()

    def cached(waveform, **kw):
        key = (ident, hashlib.sha1(np.ascontiguousarray(waveform).tobytes()).hexdigest(), tuple(sorted(kw.items())))
        if key not in _FEATURE_CACHE:
            _FEATURE_CACHE[key] = extract(waveform, **kw)
        return _FEATURE_CACHE[key].copy()

    fs.extract = cached
    return fs


def cached_model(spec):
    m = load_model(spec)
    cache_features(m.feature_set)
    return m


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return cached_model("random:m2bert-tiny:3")


@pytest.fixture(scope="module")
def clips():
    """Four waveforms of different lengths (1.2 s .. 4 s)."""
    return [make_test_signal(s, seed=i) for i, s in enumerate((2.0, 1.2, 4.0, 2.0))]


def save_tiny(path, *, seed=0, **overrides):
    enc = create_model("m2bert-tiny", seed=seed, **overrides)
    enc.feature_config = get_feature_set("m3bert324").to_dict()
    enc.save_pretrained(path)
    return enc


# --------------------------------------------------------------------------- pure functions


def test_window_starts_cover_with_full_windows():
    assert window_starts(100, window=200, hop=150) == [0]
    assert window_starts(200, window=200, hop=150) == [0]
    starts = window_starts(1000, window=200, hop=150)
    assert starts == [0, 150, 300, 450, 600, 750, 800]
    assert all(s + 200 <= 1000 for s in starts)
    with pytest.raises(ConfigError):
        window_starts(10, window=100, hop=150)


def test_window_owners_pick_most_central_window():
    starts = window_starts(1000, window=200, hop=150)
    owners = window_owners(1000, starts, window=200)
    # every frame is owned by a window containing it, and no containing window is more central
    for t in range(1000):
        k = owners[t]
        assert starts[k] <= t < starts[k] + 200
        d = abs(t - (starts[k] + 99.5))
        for j, s in enumerate(starts):
            if s <= t < s + 200:
                assert d <= abs(t - (s + 99.5))
    # ownership is contiguous and monotone: a seam is a single switch between neighbours
    assert np.all(np.diff(owners) >= 0) and set(np.diff(owners)) <= {0, 1}
    # the switch between windows 0 and 1 lies half-way through their overlap (150..199)
    assert np.argmax(owners == 1) in (174, 175)


def test_pool_frames_mean_and_meanstd():
    x = np.random.default_rng(0).standard_normal((3, 50, 8)).astype(np.float32)
    np.testing.assert_allclose(pool_frames(x, "mean"), x.mean(axis=1), atol=1e-6)
    ms = pool_frames(x, "meanstd")
    assert ms.shape == (3, 16) and ms.dtype == np.float32
    np.testing.assert_allclose(ms[:, 8:], x.std(axis=1), atol=1e-6)
    with pytest.raises(ConfigError):
        pool_frames(x, "max")
    # exactly the float64 mean of the frames (pool_frames avoids the float64 copy; same additions)
    for shape in [(5, 1294, 24), (1, 20000, 1), (2, 9000, 3), (7, 3)]:
        y = (np.random.default_rng(1).standard_normal(shape) * 30).astype(np.float32)
        want = y.astype(np.float64).mean(axis=-2)
        np.testing.assert_array_equal(pool_frames(y, "mean"), want.astype(np.float32))
        np.testing.assert_array_equal(pool_frames(y, "meanstd")[..., : shape[-1]], want.astype(np.float32))


def test_parse_layers():
    assert parse_layers(-1, 5) == ([4], True)
    assert parse_layers("all", 3) == ([0, 1, 2], False)
    assert parse_layers("0,3", 5) == ([0, 3], False)
    assert parse_layers("-2", 5) == ([3], True)
    assert parse_layers([2], 5) == ([2], False)
    for bad in (5, [0, 9], "x", [], True):
        with pytest.raises(ConfigError):
            parse_layers(bad, 5)


# --------------------------------------------------------------------------- shapes and values


def test_shapes_levels_layers_pools(tiny, clips):
    x = clips[2]
    n_frames = 1 + x.size // 1024
    d = tiny.layer_dims[-1]
    assert tiny.sample_rate == SR and tiny.n_hidden_states == 3
    assert tiny.embed(x, sample_rate=SR).shape == (d,)
    assert tiny.embed(x, sample_rate=SR, pool="meanstd").shape == (2 * d,)
    assert tiny.embed(x, sample_rate=SR, layers="all").shape == (3, d)
    assert tiny.embed(x, sample_rate=SR, layers=[0, 2], pool="meanstd").shape == (2, 2 * d)
    frames, times = tiny.embed(x, sample_rate=SR, level="frame")
    assert frames.shape == (n_frames, d) and frames.dtype == np.float32
    np.testing.assert_allclose(times, np.arange(n_frames) * 1000.0 * 1024 / SR)
    allf, _ = tiny.embed(x, sample_rate=SR, level="frame", layers="all")
    assert allf.shape == (3, n_frames, d)
    np.testing.assert_array_equal(allf[-1], frames)
    # clip level is exactly the pooling of the frame level
    np.testing.assert_array_equal(tiny.embed(x, sample_rate=SR, layers="all", pool="meanstd"),
                                  pool_frames(allf, "meanstd"))
    assert tiny.output_shape(level="frame", layers="all", n_frames=7) == (3, 7, d)


def test_short_file_equals_direct_encoder_pass(tiny, clips):
    """A file shorter than the context is one window: the embedder is exactly
    encoder(CMVN(features)), with no hidden preprocessing."""
    x = clips[0]
    feats = tiny.feature_set.extract(x, sample_rate=SR, normalize=True)
    with torch.inference_mode():
        states = tiny.encoder(torch.from_numpy(feats)[None], torch.tensor([feats.shape[0]]))
    frames, _ = tiny.embed(x, sample_rate=SR, level="frame", layers="all")
    for i, s in enumerate(states):
        np.testing.assert_allclose(frames[i], s[0].numpy(), atol=1e-6)


def test_file_and_waveform_and_resampled_input_agree(tiny, tmp_path):
    x = make_test_signal(2.5, seed=7)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    from_file = tiny.embed(tmp_path / "a.wav")
    np.testing.assert_array_equal(from_file, tiny.embed(x, sample_rate=SR))
    np.testing.assert_array_equal(tiny.embed(str(tmp_path / "a.wav")), from_file)
    np.testing.assert_array_equal(tiny.embed(torch.from_numpy(x), sample_rate=SR), from_file)
    # a 48 kHz waveform is resampled to the model's rate, not misread
    import soxr

    x48 = soxr.resample(x, SR, 48000).astype(np.float32)
    v48 = tiny.embed(x48, sample_rate=48000)
    cos = float(v48 @ from_file / np.linalg.norm(v48) / np.linalg.norm(from_file))
    assert cos > 0.99


def test_bad_inputs_are_clear_errors(tiny, tmp_path):
    x = make_test_signal(1.0)
    with pytest.raises(AudioError, match="sample_rate"):
        tiny.embed(x)
    with pytest.raises(AudioError, match="mono"):
        tiny.embed(np.stack([x, x]), sample_rate=SR)
    bad = x.copy()
    bad[10] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        tiny.embed(bad, sample_rate=SR)
    with pytest.raises(AudioError, match="shorter than one analysis window"):
        tiny.embed(x[:1000], sample_rate=SR)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="junk.wav"):
        tiny.embed(tmp_path / "junk.wav")
    with pytest.raises(ConfigError, match="level"):
        tiny.embed(x, sample_rate=SR, level="song")
    with pytest.raises(ConfigError, match="out of range"):
        tiny.embed(x, sample_rate=SR, layers=7)


def test_embed_many_skips_bad_items_in_order(tiny, clips, tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF....nope")
    items = [clips[0], tmp_path / "junk.wav", clips[1]]
    res = list(tiny.iter_embed(items, sample_rate=SR, errors="skip", progress=False))
    assert [r.index for r in res] == [0, 1, 2]
    assert res[1].output is None and "junk.wav" in res[1].error
    np.testing.assert_array_equal(res[2].output, tiny.embed(clips[1], sample_rate=SR))
    with pytest.raises(AudioError):
        tiny.embed_many(items, sample_rate=SR, progress=False)


# --------------------------------------------------------------------------- batching


def test_batched_equals_one_by_one(tiny, clips):
    """Batching never changes an output: exact by default (equal-length windows only share a
    batch), within 1e-5 when mixed lengths are padded into one batch."""
    one = [tiny.embed(x, sample_rate=SR, level="frame", layers="all")[0] for x in clips]
    for bs in (1, 3, 8):
        many = tiny.embed_many(clips, sample_rate=SR, level="frame", layers="all", batch_size=bs, progress=False)
        for a, (b, _) in zip(one, many):
            np.testing.assert_array_equal(a, b)
    padded = Embedder(tiny.encoder, feature_set=tiny.feature_set, pad_batches=True)  # shares the cache
    many = padded.embed_many(clips, sample_rate=SR, level="frame", layers="all", batch_size=4, progress=False)
    worst = max(float(np.abs(a - b).max()) for a, (b, _) in zip(one, many))
    assert worst < 1e-5


def test_bf16_close_to_fp32(tiny, clips):
    a = tiny.embed(clips[0], sample_rate=SR)
    b = Embedder(tiny.encoder, feature_set=tiny.feature_set, dtype="bf16").embed(clips[0], sample_rate=SR)
    assert b.dtype == np.float32
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.99 < cos and not np.array_equal(a, b)  # bf16 really ran, and stays close
    with pytest.raises(ConfigError):
        Embedder(tiny.encoder, dtype="fp16")


# --------------------------------------------------------------------------- seeding and identity


def test_random_models_are_seeded(clips):
    a, b, c = (cached_model(f"random:m2bert-tiny:{s}") for s in (5, 5, 6))
    assert a.model_id == b.model_id != c.model_id
    np.testing.assert_array_equal(a.embed(clips[1], sample_rate=SR), b.embed(clips[1], sample_rate=SR))
    assert not np.allclose(a.embed(clips[1], sample_rate=SR), c.embed(clips[1], sample_rate=SR))
    assert load_model("random:m2bert-tiny").model_id == load_model("random:m2bert-tiny:0").model_id
    for bad in ("random:", "random:nope", "random:m2bert-tiny:x"):
        with pytest.raises(ConfigError):
            load_model(bad)


def test_model_id_tracks_weights_and_config(tmp_path):
    save_tiny(tmp_path / "m")
    m = load_model(tmp_path / "m")
    assert m.model_id == load_model("random:m2bert-tiny:0").model_id  # same weights, same id
    with torch.no_grad():
        m.encoder.layers[0].ff1.bias[0] += 1e-3
    m._model_id = None
    assert m.model_id != load_model(tmp_path / "m").model_id


# --------------------------------------------------------------------------- resolution and refusals


def test_resolve_model_run_and_checkpoint_dirs(tmp_path):
    run = tmp_path / "run"
    save_tiny(run / "checkpoints" / "last", seed=1)
    (run / "checkpoints" / "last" / "state.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"kind": "pretrain"}))
    assert resolve_model_dir(run) == run / "checkpoints" / "last"
    save_tiny(run / "checkpoints" / "best", seed=2)
    assert resolve_model_dir(run) == run / "checkpoints" / "best"
    assert resolve_model_dir(run / "checkpoints" / "last") == run / "checkpoints" / "last"
    assert load_model(run).model_id == load_model("random:m2bert-tiny:2").model_id
    assert load_model(run / "checkpoints" / "last").model_id == load_model("random:m2bert-tiny:1").model_id


def test_refuses_mismatched_model_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model directory"):
        load_model(tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match="without a usable checkpoint"):
        load_model(run)

    good = tmp_path / "good"
    save_tiny(good)

    wrong_format = tmp_path / "wrong_format"
    shutil.copytree(good, wrong_format)
    cfg = json.loads((wrong_format / "config.json").read_text())
    cfg["format"] = "something-else"
    (wrong_format / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format='something-else'"):
        load_model(wrong_format)

    wrong_arch = tmp_path / "wrong_arch"  # config says 3 layers, weights have 2
    shutil.copytree(good, wrong_arch)
    cfg = json.loads((good / "config.json").read_text())
    cfg["model"]["n_layers"] = 3
    (wrong_arch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(wrong_arch)

    narrow = tmp_path / "narrow"  # encoder takes 100 channels, feature set gives 324
    enc = create_model("m2bert-tiny", seed=0, n_input=100)
    enc.feature_config = get_feature_set("m3bert324").to_dict()
    enc.save_pretrained(narrow)
    with pytest.raises(CheckpointError, match="324 channels but the encoder expects n_input=100"):
        load_model(narrow)

    no_fs = tmp_path / "no_fs"
    create_model("m2bert-tiny", seed=0).save_pretrained(no_fs)
    with pytest.raises(CheckpointError, match="no feature_set"):
        load_model(no_fs)

    unknown_fs = tmp_path / "unknown_fs"
    shutil.copytree(good, unknown_fs)
    cfg = json.loads((good / "config.json").read_text())
    cfg["feature_set"]["name"] = "no-such-features"
    (unknown_fs / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cannot rebuild the model's feature set"):
        load_model(unknown_fs)

    (good / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(good)


def test_embedder_leaves_a_training_encoder_as_it_was(tiny, clips):
    """A trainer may embed with the encoder it is training: no mode or grad flags leak, and
    dropout is off inside the embedder (results equal those of the loaded eval-mode model)."""
    enc = create_model("m2bert-tiny", seed=3)  # the weights of ``tiny``, in train mode
    assert enc.training
    a = Embedder(enc, feature_set=tiny.feature_set).embed(clips[1], sample_rate=SR)
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    np.testing.assert_array_equal(a, tiny.embed(clips[1], sample_rate=SR))


def test_feature_memo_is_exact_and_shared_between_models():
    """Two models over the same audio extract its features once; results equal a memo-less run."""
    from m3bert.features.memo import FeatureMemo  # (kept inside: the import block above is shared)

    x = make_test_signal(3.0, seed=7)
    memo = FeatureMemo(64 << 20)
    a = load_model("random:m2bert-tiny:1", feature_memo=memo)
    b = Embedder(load_model("random:m2bert-tiny:2").encoder, feature_memo=memo)
    ea = a.embed(x, sample_rate=44100, layers="all")
    eb = b.embed(x, sample_rate=44100, layers="all")
    assert (memo.hits, memo.misses) == (1, 1) and len(memo._items) == 1  # the second model hit the first's features
    # without a memo nothing is kept (memory stays flat), and the numbers are the same
    plain_a, plain_b = load_model("random:m2bert-tiny:1"), load_model("random:m2bert-tiny:2")
    assert plain_a.feature_memo is None and plain_b.feature_memo is None
    np.testing.assert_array_equal(plain_a.embed(x, sample_rate=44100, layers="all"), ea)
    np.testing.assert_array_equal(plain_b.embed(x, sample_rate=44100, layers="all"), eb)
    assert (memo.hits, memo.misses) == (1, 1) and len(memo._items) == 1  # untouched by memo-less models
    off = FeatureMemo(0)  # a zero-size memo keeps nothing either
    np.testing.assert_array_equal(load_model("random:m2bert-tiny:1", feature_memo=off).embed(
        x, sample_rate=44100, layers="all"), ea)
    assert not off._items and off.hits == 0
