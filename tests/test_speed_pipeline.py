"""Issue 18.1: decoding and features run ahead of the encoder in a thread, with the same numbers.

``features.pool.prefetch`` is the bounded producer; ``Embedder.iter_embed`` (``embed``,
``embed_many``, ``m3bert embed``) uses it for inputs and for a streamed input's windows. The
pipelined path must give bit for bit what the sequential path (``prefetch=0``) gives, for short
inputs batched together, long (streamed) inputs, every level and pooling, and failures in order.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.core.errors import AudioError, ConfigError
from m3bert.embed import Embedder, load_model
from m3bert.features import get_feature_set
from m3bert.features.pool import prefetch
from m3bert.models.encoder import create_model

SR = 44100


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


# ------------------------------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_raises_at_the_failing_item():
    def items():
        for i in range(6):
            if i == 4:
                raise ValueError("item 4 is bad")
            yield i * i

    got = []
    with pytest.raises(ValueError, match="item 4 is bad"):
        for v in prefetch(items(), depth=2):
            got.append(v)
    assert got == [0, 1, 4, 9]  # everything before the failure, in order
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))  # depth 0: no thread


def test_prefetch_stays_at_most_depth_items_ahead_and_stops_when_closed():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    threads_before = threading.active_count()
    gen = prefetch(items(), depth=3)
    assert next(gen) == 0
    time.sleep(0.3)  # the producer runs ahead as far as it may
    # consumed 1, queued <= 3, one more in the producer's hands waiting for room
    assert 1 <= len(produced) <= 1 + 3 + 1, produced
    gen.close()  # the consumer gives up: the producer stops instead of running to the end
    assert len(produced) <= 6
    deadline = time.time() + 5
    while threading.active_count() > threads_before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads_before


def test_prefetch_runs_items_in_another_thread_while_the_consumer_works():
    """The point of the pipeline: item k+1 is produced while the consumer works on item k."""
    def items():
        for i in range(4):
            time.sleep(0.2)  # "decoding + features"
            yield i

    t0 = time.perf_counter()
    for _ in prefetch(items(), depth=2):
        time.sleep(0.2)  # "the encoder"
    pipelined = time.perf_counter() - t0
    assert pipelined < 1.45, pipelined  # sequential: 8 x 0.2 = 1.6 s; pipelined ~1.0 s


# ------------------------------------------------------------------------------------- the Embedder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    paths = []
    for i, seconds in enumerate([3.0, 1.2, 3.0, 7.5, 0.01, 3.0, 2.2]):  # a too-short file in the middle
        p = d / f"{i}.wav"
        sf.write(p, make_test_signal(seconds, SR, seed=i), SR, subtype="PCM_16")
        paths.append(p)
    paths.insert(3, d / "missing.wav")  # a missing file too
    return paths


def _embedders(**kw):
    enc = create_model("m2bert-tiny", seed=3)
    fs = get_feature_set("m3bert324")
    return (Embedder(enc, feature_set=fs, prefetch=0, **kw), Embedder(enc, feature_set=fs, **kw),
            Embedder(enc, feature_set=fs, prefetch=1, **kw))


def _same(a, b):
    assert (a.error is None) == (b.error is None) and a.index == b.index and a.n_samples == b.n_samples
    if a.error is not None:
        assert a.error == b.error
        return
    if isinstance(a.output, tuple):
        for x, y in zip(a.output, b.output):
            np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a.output, b.output)


@pytest.mark.parametrize("level,pool", [("clip", "mean"), ("clip", "meanstd"), ("frame", "mean")])
def test_pipelined_equals_sequential_exactly(files, level, pool):
    """Files of several lengths batched together (windows of 200 frames, hop 150, so the 7.5 s file
    has several windows), a missing and a too-short file in between: the same results, bit for bit,
    in the same order, whatever the prefetch depth and batch size."""
    seq, pipe, one = _embedders(window_frames=200, hop_frames=150)
    for batch_size in (3, 8):
        kw = dict(level=level, layers="all", pool=pool, batch_size=batch_size, progress=False, errors="skip")
        a = list(seq.iter_embed(files, **kw))
        b = list(pipe.iter_embed(files, **kw))
        c = list(one.iter_embed(files, **kw))
        assert [r.error is None for r in a] == [True, True, True, False, True, False, True, True]
        for x, y, z in zip(a, b, c):
            _same(x, y)
            _same(x, z)


def test_pipelined_streamed_long_input_equals_sequential(monkeypatch):
    """A long waveform (streamed block by block, its windows produced a batch ahead) gives the same
    frames and clip vectors with and without the producer thread."""
    from m3bert.features import stream

    monkeypatch.setattr(stream, "STREAM_SECONDS", 4.0)  # stream anything over 4 s (a short test)
    x = make_test_signal(11.0, SR, seed=7)
    seq, pipe, _ = _embedders(window_frames=120, hop_frames=100)
    calls = []
    real = Embedder._embed_long
    monkeypatch.setattr(Embedder, "_embed_long", lambda self, *a: calls.append(1) or real(self, *a))
    for kw in (dict(level="frame", layers="all"), dict(layers="all", pool="meanstd"), dict(layers=-1)):
        a = seq.embed(x, sample_rate=SR, **kw)
        b = pipe.embed(x, sample_rate=SR, **kw)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(u, v)
    assert len(calls) == 6  # every call took the streaming path


def test_errors_raise_in_order_with_the_pipeline(files):
    """errors="raise": the first bad input raises its AudioError naming it, as without the thread."""
    _, pipe, _ = _embedders()
    with pytest.raises(AudioError, match="missing.wav"):
        pipe.embed_many(files, progress=False)
    with pytest.raises(ConfigError, match="prefetch"):
        Embedder(create_model("m2bert-tiny"), feature_set=get_feature_set("m3bert324"), prefetch=-1)
    with pytest.raises(ConfigError, match="prefetch"):
        list(pipe.iter_embed(files[:1], prefetch=-2, progress=False))


def test_load_model_passes_prefetch_and_the_embed_command_uses_the_pipeline(files, tmp_path):
    from m3bert.embed.folder import embed_files

    m0 = load_model("random:m2bert-tiny", prefetch=0)
    m1 = load_model("random:m2bert-tiny")
    assert m0.prefetch == 0 and m1.prefetch is None
    good = [f for f in files if f.exists() and f.stat().st_size > 10_000]
    s0 = embed_files(good, tmp_path / "a", embedder=m0, progress=False)
    s1 = embed_files(good, tmp_path / "b", embedder=m1, progress=False)
    assert s0["n_done"] == s1["n_done"] == len(good)
    for f in good:
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{f.name}.npy"), np.load(tmp_path / "b" / f"{f.name}.npy"))
