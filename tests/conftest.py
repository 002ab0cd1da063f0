"""Shared fixtures: a seeded rng, non-trivial test audio, and the tiny built-in corpus."""

from __future__ import annotations

import os

import numpy as np
import pytest

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
