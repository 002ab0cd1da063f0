"""Issue 18.3: the benchmark decodes each clip once for all its representations.

``FeatureCache.get_many`` runs one pass over a task's clips: a producer thread decodes each clip
once (``ClipAudio``) and prepares it for every representation; the encoders run in lock step in
the calling thread. Rows must equal each representation's own extraction bit for bit, failures
must be per representation and per clip, and parts and resume stay per representation.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.core.errors import AudioError
from m3bert.embed import load_model
from m3bert.evaluate import cache as cache_mod
from m3bert.evaluate import representations as reps_mod
from m3bert.evaluate.baselines import get_baseline
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.representations import ClipAudio, ModelRepresentation, load_clip_audio, stack_layers
from m3bert.tasks.registry import Clip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    a, b = d / "a.wav", d / "b.flac"
    sf.write(a, make_test_signal(6.0, 44100, seed=1), 44100, subtype="PCM_16")
    sf.write(b, make_test_signal(4.0, 48000, seed=2), 48000)  # resampled by every representation
    out = [Clip(f"a{i}", a, 0, "train", f"g{i}", start=1.2 * i, end=1.2 * i + 1.1) for i in range(4)]
    out += [Clip("b0", b, 1, "test", "h"), Clip("gone", d / "gone.wav", 1, "test", "x"),
            Clip("b1", b, 1, "valid", "h2", start=2.0, end=3.5)]
    return out


@pytest.fixture(scope="module")
def reps():
    return [ModelRepresentation("random:m2bert-tiny:1", name="m1", batch_size=3),
            ModelRepresentation("random:m2bert-tiny:2", name="m2", batch_size=5),
            get_baseline("raw"), get_baseline("mfcc")]


def _counting_decodes(monkeypatch):
    calls = []
    real = reps_mod.load_audio
    monkeypatch.setattr(reps_mod, "load_audio", lambda *a, **k: calls.append(str(a[0])) or real(*a, **k))
    return calls


def test_clip_audio_equals_load_clip_audio(clips):
    for clip in (clips[1], clips[4], clips[6]):
        audio = ClipAudio(clip).decode()
        for sr in (22050, 44100, 16000):
            np.testing.assert_array_equal(audio.waveform(sr), load_clip_audio(clip, sample_rate=sr))
    with pytest.raises(AudioError, match="gone.wav"):
        ClipAudio(clips[5]).decode().waveform(22050)


@pytest.mark.parametrize("pooling", ["mean", "meanstd", "slices-meanstd"])
def test_one_pass_decodes_each_clip_once_and_gives_each_representations_rows(clips, reps, pooling, monkeypatch):
    calls = _counting_decodes(monkeypatch)
    got = FeatureCache(None).get_many(reps, "t", clips, pooling=pooling, skip_errors=True)
    assert sorted(calls) == sorted(str(c.path) for c in clips)  # once per clip, for all four
    for rep in reps:
        res = got[rep.name]
        assert [f["clip_id"] for f in res.failures] == ["gone"] and res.ok.tolist() == [True] * 5 + [False, True]
        alone = rep.embed_clips(clips, pooling=pooling, on_error=lambda c, e: None)
        np.testing.assert_array_equal(res.features, alone)
    # and the rows are what each representation computes clip by clip, the old way
    for i in (0, 4):
        np.testing.assert_array_equal(got["raw"].features[i], reps[2].embed_clip(clips[i], pooling=pooling))
    if pooling != "slices-meanstd":
        e = reps[0].embedder
        ref = e.embed(load_clip_audio(clips[6], sample_rate=e.sample_rate), sample_rate=e.sample_rate, layers="all",
                      pool=pooling)
        np.testing.assert_array_equal(got["m1"].features[6], stack_layers(list(ref)))


def test_failures_raise_unless_skipped(clips, reps):
    with pytest.raises(AudioError, match="gone.wav"):
        FeatureCache(None).get_many(reps[2:], "t", clips)


def test_parts_and_resume_are_per_representation(clips, tmp_path, monkeypatch):
    """A run killed in its second part keeps every representation's first part; the rerun decodes
    only the clips after it, and the result equals an uninterrupted run's. (A part is finished
    once the encoder batch holding its last clip has run: batches of 3 and 2 clips here.)"""
    monkeypatch.setattr(cache_mod, "PART_SIZE", 3)
    reps = [ModelRepresentation("random:m2bert-tiny:1", name="m1", batch_size=3),
            ModelRepresentation("random:m2bert-tiny:2", name="m2", batch_size=2),
            get_baseline("raw"), get_baseline("mfcc")]
    fresh = FeatureCache(None).get_many(reps, "t", clips, skip_errors=True)
    real = reps_mod.ModelRepresentation.prepare_clip
    seen = []

    def dies_on_the_fifth_clip(self, audio, **kw):
        seen.append(audio.clip.clip_id)
        if audio.clip.clip_id == "b0":
            raise KeyboardInterrupt  # an interrupted extraction
        return real(self, audio, **kw)

    monkeypatch.setattr(reps_mod.ModelRepresentation, "prepare_clip", dies_on_the_fifth_clip)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path).get_many(reps, "t", clips, skip_errors=True)
    monkeypatch.setattr(reps_mod.ModelRepresentation, "prepare_clip", real)
    calls = _counting_decodes(monkeypatch)
    again = FeatureCache(tmp_path).get_many(reps, "t", clips, skip_errors=True)
    # part 0 (clips 0-2) was kept for all four; parts 1 (clips 3-5) and 2 (clip 6) are decoded once each
    assert [c.rsplit("/", 1)[1] for c in calls] == ["a.wav", "b.flac", "gone.wav", "b.flac"]
    for rep in reps:
        np.testing.assert_array_equal(again[rep.name].features, fresh[rep.name].features)
        assert not again[rep.name].from_cache
    calls.clear()
    third = FeatureCache(tmp_path).get_many(reps, "t", clips, skip_errors=True)
    assert calls == [] and all(third[r.name].from_cache for r in reps)
    # one representation's cache alone, the others missing: only it is read, the rest extracted
    one = FeatureCache(tmp_path).get(reps[2], "t", clips, skip_errors=True)
    assert one.from_cache


def test_embedder_of_a_model_spec_is_shared_across_calls(clips):
    """A ModelRepresentation built on an existing Embedder uses it (and its prefetch setting)."""
    emb = load_model("random:m2bert-tiny", prefetch=0)
    rep = ModelRepresentation("random:m2bert-tiny", embedder=emb)
    a = rep.embed_clips(clips[:3])
    b = ModelRepresentation("random:m2bert-tiny").embed_clips(clips[:3])
    np.testing.assert_array_equal(a, b)


def test_one_pass_featurises_each_clip_once_for_a_model_and_the_raw_baseline(clips, monkeypatch):
    """The raw baseline reads the model's un-normalised input frames from the pass's memo: one
    feature extraction per clip for both, and the same rows as each alone."""
    model = ModelRepresentation("random:m2bert-tiny:1", name="m")
    raw = get_baseline("raw")
    alone = raw.embed_clips(clips, pooling="meanstd", on_error=lambda c, e: None)
    calls = []
    fs_type = type(raw.fs)
    real = fs_type.extract
    monkeypatch.setattr(fs_type, "extract", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    got = FeatureCache(None).get_many([model, raw], "t", clips, pooling="meanstd", skip_errors=True)
    assert len(calls) == 6  # the six readable clips, once each (for the model; the baseline reuses them)
    np.testing.assert_array_equal(got["raw"].features, alone)
    assert raw.feature_memo is None and model.embedder.feature_memo is None  # lent for the pass only
