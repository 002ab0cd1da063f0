"""Wu et al. (2021)'s waveform encoders ``pase`` / ``pase+`` and their input ``wave16k``: the frames,
the paper's sizes, frame alignment, exact padding, the QRNN, SincNet's band-pass constraint, the
model folder, export, the Embedder and the HEAR API, with no special case anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import make_test_signal
from m3bert import hear
from m3bert.app.cli import main
from m3bert.audio import load_audio, resample
from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.embed import load_model
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore
from m3bert.features.waveform import frames_to_waveform, waveform_to_frames
from m3bert.models import Encoder, create_model
from m3bert.models.base import ARCHITECTURES, ModelBase, get_model_config, load_model_dir, named_config
from m3bert.models.hub import export_model, load_encoder, model_id, weights_digest
from m3bert.models.pase import QRNN, PaseEncoder, PasePlusEncoder, centre_offset, centred_padding, linear_scan

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- wave16k


def test_wave16k_frames_are_the_16k_waveform_centred_on_the_hop_grid():
    fs = get_feature_set("wave16k")
    assert (fs.sample_rate, fs.hop_length, fs.n_channels, fs.config.cmvn) == (16000, 160, 160, "none")
    y = make_test_signal(1.013, sample_rate=SR, seed=1)  # 16208 samples: 101 full hops + 48
    f = fs.extract(y, sample_rate=SR)
    n_stft = librosa.stft(y, n_fft=2048, hop_length=160, center=True).shape[1]
    assert f.shape == (1 + y.size // 160, 160) == (n_stft, 160)  # the worker targets' frame count
    t = np.arange(f.shape[0])
    np.testing.assert_array_equal(f[:, 80], y[160 * t])  # frame t is centred on sample 160 t
    np.testing.assert_array_equal(f[0, :80], 0)  # half a frame of zeros in front
    np.testing.assert_array_equal(frames_to_waveform(f, n_samples=y.size), y)  # 48 <= 80: nothing dropped
    np.testing.assert_array_equal(fs.frame_times_ms(3), [0.0, 10.0, 20.0])
    np.testing.assert_array_equal(fs.extract(y, sample_rate=SR, normalize=False, backend="reference"), f)  # raw
    z = make_test_signal(0.5, sample_rate=44100, seed=2)  # any rate: resampled to 16 kHz (soxr HQ) first
    np.testing.assert_array_equal(fs.extract(z, sample_rate=44100),
                                  waveform_to_frames(resample(z, orig_sample_rate=44100, sample_rate=SR)))
    tail = np.arange(1, 250, dtype=np.float32) / 250  # 249 samples: the last 9 lie past the last frame
    np.testing.assert_array_equal(frames_to_waveform(waveform_to_frames(tail)), tail[:240])


def test_wave16k_rms_gain_and_errors():
    y = 0.01 * make_test_signal(2.0, sample_rate=SR, seed=3)
    f = get_feature_set("wave16k", gain="rms", target_rms=0.05).extract(y, sample_rate=SR)
    w = frames_to_waveform(f, n_samples=y.size)
    assert np.sqrt(np.mean(w.astype(np.float64) ** 2)) == pytest.approx(0.05, rel=1e-4)
    np.testing.assert_allclose(w / y, w[1] / y[1], rtol=1e-4)  # one gain per clip
    silent = get_feature_set("wave16k", gain="rms").extract(np.full(800, 1e-6, np.float32), sample_rate=SR)
    assert np.abs(silent).max() < 1e-3  # silence is floored at -60 dBFS, not blown up
    with pytest.raises(ConfigError, match="wave16k.gain"):
        get_feature_set("wave16k", gain="peak")
    with pytest.raises(ConfigError, match="hop_length must be even"):
        get_feature_set("wave16k", hop_length=161)


def test_features_command_stores_wave16k(tmp_path, capsys):
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "a.wav", make_test_signal(1.2, 22050, seed=4), 22050)
    out = tmp_path / "store"
    assert main(["features", str(music), "--feature-set", "wave16k", "--out", str(out), "--quiet"]) == 0
    store = FeatureStore.open(out)
    y = load_audio(music / "a.wav", sample_rate=SR)
    assert store.feature_set.name == "wave16k" and store.rows[0]["n_frames"] == 1 + y.size // 160
    np.testing.assert_array_equal(store.get(0), get_feature_set("wave16k").extract(y, sample_rate=SR))


# --------------------------------------------------------------------------- the networks


def test_paper_sizes_parameter_counts_and_registry():
    assert {"pase", "pase+"} <= set(ARCHITECTURES)
    for name in ("pase", "pase+", "pase-tiny", "pase+-tiny"):
        assert named_config(name).feature_set == "wave16k"
    p, pp = create_model("pase", seed=0), create_model("pase+", seed=0)
    assert isinstance(p, PaseEncoder) and type(pp) is PasePlusEncoder
    # PASE paper: 5.8 M; Wu et al. 2021 sec. 4.1: PASE ~6 M, PASE+ ~8 M
    assert p.num_parameters() == 5_818_020 and pp.num_parameters() == 7_832_896
    assert tuple(p.sinc.conv.filters().shape) == (64, 1, 251)
    assert [tuple(b.conv.weight.shape) for b in p.blocks] == [
        (64, 64, 20), (128, 64, 11), (128, 128, 11), (256, 128, 11), (256, 256, 11), (512, 256, 11), (512, 512, 11)]
    assert [b.stride for b in p.blocks] == [10, 2, 1, 2, 1, 2, 2] and p.frame_rate == 100.0
    assert p.layer_dims == [100, 100] and pp.layer_dims == [256, 256, 256]
    assert [tuple(s.weight.shape) for s in pp.skips] == [(256, c) for c in (64, 64, 128, 128, 256, 256, 512)]
    assert tuple(pp.qrnn.gates.weight.shape) == (3 * 512, 2 * 512) and p.norm_out.weight is None
    with torch.no_grad():
        states = pp(0.1 * torch.randn(1, 12, 160))
    assert [tuple(s.shape) for s in states] == [(1, 12, 256)] * 3
    torch.testing.assert_close(states[2], pp.norm_out((states[0] + states[1]).transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("preset, name", [("pase", "pase"), ("pase-plus", "pase+"), ("pase-plus-tiny", "pase+-tiny")])
def test_pretraining_presets_build_the_named_configs(preset, name):
    data = yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())
    arch = ARCHITECTURES.lookup(data["architecture"])
    assert data["architecture"] == named_config(name).architecture
    assert arch.config_cls.from_dict(data["model"]).to_dict() == get_model_config(name).to_dict()


def test_same_seed_same_weights():
    a, b, c = (create_model("pase+-tiny", seed=s) for s in (3, 3, 4))
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)


def test_output_frames_are_centred_on_their_input_frames():
    pads = centred_padding([20, 11, 11, 11, 11, 11, 11], [10, 2, 1, 2, 1, 2, 2])
    assert [sum(p) for p in pads] == [10, 9, 10, 9, 10, 9, 9]  # kernel - stride: L samples in, L / stride out
    assert centre_offset([20, 11, 11, 11, 11, 11, 11], [10, 2, 1, 2, 1, 2, 2], pads) == 5.0
    m = create_model("pase-tiny", seed=0, prelu_init=0.25).eval()  # leaky: every input sample has a gradient
    x = torch.randn(1, 60, 160, requires_grad=True)
    t = 30
    (g,) = torch.autograd.grad(m(x)[-1][0, t].sum(), x)
    support = torch.nonzero(g.reshape(-1)).reshape(-1)
    lo, hi = int(support.min()), int(support.max())
    # receptive field: 101 + 19 + 10 x (10 + 20 + 20 + 40 + 40 + 80) samples, centred 5 samples after
    # the centre of input frame t (samples 160 t .. 160 t + 159 of the frames = 160 t - 80 .. of the audio)
    assert hi - lo + 1 == 101 + 19 + 10 * 210
    assert (lo + hi) / 2 == 160 * t + 79.5 + m.centre_offset_samples == 160 * t + 84.5


@pytest.mark.parametrize("name", ["pase-tiny", "pase+-tiny"])
def test_padded_windows_give_what_they_give_alone(name):
    torch.manual_seed(0)
    x = 0.1 * torch.randn(3, 80, 160)
    lengths = torch.tensor([80, 37, 1])
    m = create_model(name, seed=1).eval()
    with torch.no_grad():
        states = m(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            for alone, batched in zip(m(x[i:i + 1, :n]), states):
                torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-6, rtol=1e-5)
                assert not batched[i, n:].any()  # padded frames are zero
    # training: batch-norm statistics over the valid frames only = those of the unpadded windows
    a, b = create_model(name, seed=1).train(), create_model(name, seed=1).train()
    same = 0.1 * torch.randn(2, 40, 160)
    out_a = a(torch.cat([same, torch.randn(2, 25, 160)], dim=1), torch.tensor([40, 40]))
    out_b = b(same)
    for sa, sb in zip(out_a, out_b):
        torch.testing.assert_close(sa[:, :40], sb, atol=1e-4, rtol=1e-4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-4, msg=ka)


def test_qrnn_is_the_fo_pooling_recurrence_and_causal():
    torch.manual_seed(0)
    a, b = torch.rand(2, 37, 5), torch.randn(2, 37, 5)
    c, ref = torch.zeros(2, 5), []
    for t in range(37):
        c = a[:, t] * c + b[:, t]
        ref.append(c)
    torch.testing.assert_close(linear_scan(a, b), torch.stack(ref, dim=1), atol=1e-6, rtol=1e-5)
    q = QRNN(6, 4, window=2)
    x = torch.randn(1, 20, 6)
    with torch.no_grad():
        h = q(x)
        z, f, o = q.gates(torch.cat([torch.cat([torch.zeros(1, 1, 6), x[:, :-1]], 1), x], -1)).chunk(3, -1)
        f = torch.sigmoid(f)
        c, ref = torch.zeros(1, 4), []
        for t in range(20):
            c = f[:, t] * c + (1 - f[:, t]) * torch.tanh(z[:, t])
            ref.append(torch.sigmoid(o[:, t]) * c)
        torch.testing.assert_close(h, torch.stack(ref, 1), atol=1e-6, rtol=1e-5)
        y = x.clone()
        y[:, 12:] = torch.randn(1, 8, 6)  # a changed future leaves the past alone
        assert torch.equal(q(y)[:, :12], h[:, :12]) and not torch.equal(q(y)[:, 12:], h[:, 12:])


def test_sinc_filters_stay_valid_band_passes_after_gradient_steps():
    m = create_model("pase-tiny", seed=0)
    sinc = m.sinc.conv
    low, high = sinc.band_edges()
    # a mid filter of the initial bank passes its band (gain sr / 2 (high - low): unit centre tap, as
    # SincNet normalises) and stops the rest
    k = 8
    spectrum = np.abs(np.fft.rfft(sinc.filters()[k, 0].detach().numpy(), 16000))  # 1 Hz bins
    lo_hz, hi_hz = float(low[k].detach()), float(high[k].detach())
    gain = spectrum[int((lo_hz + hi_hz) / 2)]
    assert gain == pytest.approx(16000 / (2 * (hi_hz - lo_hz)), rel=0.1)
    assert spectrum[int(2 * hi_hz + 500):].max() < 0.05 * gain and spectrum[: int(lo_hz / 3)].max() < 0.05 * gain
    opt = torch.optim.SGD(m.parameters(), lr=1e5)  # huge steps: the raw cut-offs go anywhere
    with torch.no_grad():
        sinc.low_hz[:3] = torch.tensor([1e6, -1e6, 7990.0])  # past Nyquist, negative, at the top
        sinc.band_hz[:3] = torch.tensor([-5e4, 3.0, 1e5])
    for _ in range(2):
        opt.zero_grad()
        m(0.1 * torch.randn(2, 8, 160))[-1].square().mean().backward()
        opt.step()
    low, high = sinc.band_edges()
    assert bool((low >= 50).all()) and bool((high - low >= 50 - 1e-3).all()) and bool((high <= 8000).all())
    assert torch.isfinite(sinc.filters()).all()


def test_bad_inputs_are_clear():
    m = create_model("pase-tiny", seed=0)
    with pytest.raises(ConfigError, match="wave16k"):
        m(torch.randn(1, 10, 128))
    with pytest.raises(ConfigError, match="max_frames"):
        m(torch.randn(1, 1002, 160))
    with pytest.raises(ConfigError, match="lengths"):
        m(torch.randn(2, 10, 160), torch.tensor([10, 0]))
    with pytest.raises(ConfigError, match="multiply to 80"):
        create_model("pase-tiny", strides=[10, 2, 1, 2, 1, 2, 1])
    with pytest.raises(ConfigError, match="odd"):
        create_model("pase+-tiny", sinc_kernel=100)
    with pytest.raises(ConfigError, match="model.rnn_dim"):
        create_model("pase+-tiny", rnn_dim=0)


# --------------------------------------------------------------------------- folder, export, embed, HEAR


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random pase+-tiny (as ``random:`` builds it) in a run's checkpoint, exported to a model folder."""
    root = tmp_path_factory.mktemp("pase_export")
    m, source = load_encoder("random:pase+-tiny:3")
    run = root / "run"
    m.save_pretrained(run / "checkpoints" / "best")
    (run / "run.json").write_text(json.dumps({"kind": "pretrain", "config": {}}))
    info = export_model(run, root / "model")
    return root / "model", m.eval(), info, source


def test_folder_round_trip_gives_identical_outputs(exported):
    folder, m, info, source = exported
    assert source == "random:pase+-tiny:3" and m.feature_config["name"] == "wave16k"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "pase+" and cfg["model"]["rnn_dim"] == 128 and info["n_hidden_states"] == 3
    back = ModelBase.from_pretrained(folder)
    again, _ = load_encoder(str(folder))
    assert type(back) is PasePlusEncoder and type(again) is PasePlusEncoder and type(load_model_dir(folder)) is PasePlusEncoder
    assert model_id(back, m.feature_config) == model_id(m, m.feature_config) == info["model_id"]
    x = 0.1 * torch.randn(2, 50, 160)
    with torch.no_grad():
        for a, b in zip(m(x), back.eval()(x)):
            assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="not a 'm2bert' one"):
        Encoder.from_pretrained(folder)


def test_embedder_gives_wave16k_frames_for_every_layer(exported):
    folder, m, info, _ = exported
    emb = load_model(folder)
    assert emb.sample_rate == 16000 and emb.frame_rate == 100.0 and emb.model_id == info["model_id"]
    x = make_test_signal(3.0, sample_rate=22050, seed=5)
    frames, times = emb.embed(x, sample_rate=22050, level="frame", layers="all")
    y = resample(x, orig_sample_rate=22050, sample_rate=SR)
    n = get_feature_set("wave16k").n_frames(y.size)
    assert n == 301 and frames.shape == (3, n, 64) and times.shape == (n,) and times[-1] == 3000.0
    with torch.no_grad():  # one window: exactly the network on the wave16k frames
        direct = torch.stack(m(torch.from_numpy(emb.feature_set.extract(y, sample_rate=SR))[None]))[:, 0]
    np.testing.assert_allclose(frames, direct.numpy(), atol=1e-5, rtol=1e-5)
    clip = emb.embed(x, sample_rate=22050, layers=[0, 2])
    np.testing.assert_allclose(clip, frames[[0, 2]].mean(axis=1), atol=1e-5)
    windowed = load_model(folder, window_frames=128)  # three windows, stitched
    f2, _ = windowed.embed(x, sample_rate=22050, level="frame")
    assert f2.shape == (n, 64) and np.isfinite(f2).all()
    waves = [make_test_signal(s, sample_rate=SR, seed=6) for s in (0.7, 1.9)]
    padded = load_model(folder, pad_batches=True).embed_many(waves, sample_rate=SR, progress=False)
    alone = [emb.embed(w, sample_rate=SR) for w in waves]  # batch == one by one
    for a, b in zip(padded, alone):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_hear_api_on_a_tiny_model(exported):
    folder, _, _, _ = exported
    model = hear.load_model(str(folder))
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 64
    audio = torch.from_numpy(np.stack([make_test_signal(1.0, sample_rate=SR, seed=s) for s in (7, 8)]))
    scene = hear.get_scene_embeddings(audio, model)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, 64) and emb.shape == (2, 101, 64) and ts.shape == (2, 101)
    np.testing.assert_allclose(ts[0, :3].numpy(), [0.0, 10.0, 20.0])
    torch.testing.assert_close(scene, emb.mean(dim=1), atol=1e-5, rtol=1e-5)
