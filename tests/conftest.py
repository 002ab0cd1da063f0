"""Shared fixtures: a seeded rng, non-trivial test audio, and the tiny built-in corpus."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_test_signal(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Tones + noise + transients (never zeros), float32 mono in [-1, 1]."""
    r = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.2 * np.sin(2 * np.pi * 659.3 * t + 0.5)
    x += 0.1 * np.sin(2 * np.pi * (110 + 40 * t) * t)  # chirp
    x += 0.05 * r.standard_normal(n)
    for onset in np.arange(0.1, seconds, 0.37):  # clicks / transients
        i = int(onset * sample_rate)
        k = min(n - i, 400)
        x[i:i + k] += 0.5 * np.exp(-np.arange(k) / 60.0) * r.standard_normal(k)
    return np.clip(x, -1, 1).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """The ``tiny`` built-in corpus, built once per test session (numpy fallback renderer
    unless M3BERT_TEST_RENDERER says otherwise)."""
    from m3bert.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    renderer = os.environ.get("M3BERT_TEST_RENDERER", "auto")
    build_corpus("tiny", out, seed=0, renderer=renderer, progress=False)
    return out


def make_song(seed: int, seconds: float, sample_rate: int = 44100) -> np.ndarray:
    """A little melody of harmonic notes (a different key per song) over a noise floor."""
    r = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    x = np.zeros(n)
    root = 110 * 2 ** (r.integers(0, 12) / 12)
    pos = 0
    while pos < n:
        seg = np.arange(min(int(sample_rate * r.choice([0.25, 0.5])), n - pos)) / sample_rate
        f = root * 2 ** (r.choice([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
        x[pos : pos + len(seg)] = np.exp(-3 * seg) * sum(0.3 / k * np.sin(2 * np.pi * f * k * seg) for k in range(1, 5))
        pos += len(seg)
    x += 0.02 * r.standard_normal(n)
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def make_song_store(root, *, n_songs: int, seconds: float):
    """``n_songs`` songs written under ``root/audio`` and extracted into ``root/store``; returns the store path."""
    import soundfile as sf

    from m3bert.features import get_feature_set
    from m3bert.features.store import extract_to_store

    (root / "audio").mkdir()
    for i in range(n_songs):
        sf.write(root / "audio" / f"song{i}.wav", make_song(i, seconds), 44100)
    extract_to_store(root / "audio", root / "store", feature_set=get_feature_set("m3bert324"), progress=False)
    return root / "store"


@pytest.fixture
def one_thread():
    """One torch thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    and probes on the shared 2-core machine run faster and steadier than with two OpenMP threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
