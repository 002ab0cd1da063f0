"""The HEAR 2021 API, checked the way hear-validator does (white noise in [-1, 1], lengths
1.07 / 1.98 / 4.0 s for timestamps and 4 x 2.74 s for scenes) plus determinism, batch
independence and short audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import m3bert
import m3bert.hear as hear
from m3bert.core.errors import AudioError
from test_embed import cache_features


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    m = hear.load_model("random:m2bert-tiny:1")
    cache_features(m.embedder.feature_set)
    return m


def white_noise(n: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, int(seconds * sample_rate)), generator=g) * 2 - 1


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 64
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == 64
    assert sum(p.numel() for p in model.parameters()) == model.embedder.encoder.num_parameters()
    model.to("cpu")  # what the validator does; the embedder follows the weights
    assert model.embedder.device == torch.device("cpu")


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_timestamp_embeddings_like_the_validator(model, seconds):
    audio = white_noise(2, seconds, model.sample_rate)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == 2 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    assert torch.isfinite(emb).all()
    t = ts.numpy()
    d = np.diff(t, axis=1)
    assert np.abs(d - d.mean()).max() < 1e-3  # evenly spaced (validator allows 1 ms)
    assert d.mean() <= 50.0  # HEAR's suggested maximum hop
    assert t.min() == 0.0  # first frame centred at the start
    assert 1000 * seconds - 2 * d.mean() <= t.max() <= 1000 * seconds  # covers the end, never past it
    np.testing.assert_array_equal(t[0], t[1])


def test_scene_embeddings_like_the_validator(model):
    audio = white_noise(4, 2.74, model.sample_rate)
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape == (4, model.scene_embedding_size)
    assert torch.isfinite(emb).all()
    # four different noises give four different embeddings
    assert torch.cdist(emb, emb)[~torch.eye(4, dtype=torch.bool)].min() > 0


def test_deterministic_and_batch_independent(model):
    audio = white_noise(3, 1.5, model.sample_rate, seed=1)
    a = hear.get_scene_embeddings(audio, model)
    b = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # each sound alone gives exactly what it gave inside the batch
    for i in range(3):
        torch.testing.assert_close(hear.get_scene_embeddings(audio[i:i + 1], model)[0], a[i], rtol=0, atol=0)
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    other = torch.cat([audio[2:3], white_noise(1, 1.5, model.sample_rate, seed=9)])
    emb2, _ = hear.get_timestamp_embeddings(other, model)
    torch.testing.assert_close(emb2[0], emb[2], rtol=0, atol=0)
    # scene embedding = mean of the timestamp embeddings (the paper's pooling)
    torch.testing.assert_close(emb.mean(dim=1), a, rtol=1e-5, atol=1e-6)


def test_short_audio(model):
    audio = white_noise(2, 0.5, model.sample_rate, seed=2)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 1 + int(0.5 * model.sample_rate) // 1024, 64)
    assert torch.isfinite(emb).all() and ts[0, -1] <= 500.0
    assert hear.get_scene_embeddings(audio, model).shape == (2, 64)
    with pytest.raises(AudioError, match="shorter than one analysis window"):
        hear.get_scene_embeddings(white_noise(1, 0.02, model.sample_rate), model)
    with pytest.raises(AudioError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(model.sample_rate), model)


def test_layers_pooling_and_embedder_input(model):
    m = hear.HearModel(model.embedder, layers="all", pool="meanstd")
    assert m.scene_embedding_size == 3 * 64 * 2 and m.timestamp_embedding_size == 3 * 64
    audio = white_noise(2, 1.0, m.sample_rate, seed=3)
    scene = hear.get_scene_embeddings(audio, m)
    emb, _ = hear.get_timestamp_embeddings(audio, m)
    assert scene.shape == (2, 384) and emb.shape[2] == 192
    # the last 64 columns of the timestamp embedding are the default (last-layer) embedding
    last, _ = hear.get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(emb[..., -64:], last, rtol=0, atol=0)
    # an Embedder from m3bert.load_model works directly, as the README shows
    embedder = m3bert.load_model("random:m2bert-tiny:1")
    cache_features(embedder.feature_set)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, embedder), hear.get_scene_embeddings(audio, model),
                               rtol=0, atol=0)


def test_default_model_is_the_seeded_baseline():
    m = hear.load_model()
    assert m.embedder.source == "random:m2bert-small:0"
    assert m.scene_embedding_size == 768
