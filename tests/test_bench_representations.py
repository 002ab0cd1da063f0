"""Baselines, precomputed embeddings, HEAR modules, and ``m3bert bench`` end to end on the tiny corpus."""

from __future__ import annotations

import json
import sys
import textwrap

import librosa
import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.app.cli import main
from m3bert.audio import load_audio
from m3bert.core.errors import AudioError, ConfigError, DataError
from m3bert.embed import load_model
from m3bert.evaluate import runner
from m3bert.evaluate.baselines import MfccBaseline, get_baseline
from m3bert.evaluate.representations import (
    EmbeddingsDirRepresentation,
    HearRepresentation,
    ModelRepresentation,
    mean_std_over,
    slice_waveform,
)
from m3bert.evaluate.runner import run_benchmark
from m3bert.features.memo import FeatureMemo
from m3bert.tasks.registry import Clip, Task, TaskData


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "data" / "a" / "song.wav"
    path.parent.mkdir(parents=True)
    sf.write(path, make_test_signal(6.0, 22050), 22050)
    return path


def test_mfcc_baseline_is_kims_120d_statistics(wav):
    clip = Clip("c", wav, 0, "train", "g", start=1.0, end=4.0)
    got = MfccBaseline().embed_clip(clip, pooling="meanstd")
    assert got.shape == (1, 120)
    y = sf.read(wav, dtype="float32")[0][22050:4 * 22050]
    m = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=20)
    frames = np.concatenate([m, librosa.feature.delta(m), librosa.feature.delta(m, order=2)]).T
    ref = np.concatenate([frames.mean(0), frames.std(0)])
    np.testing.assert_allclose(got[0], ref, rtol=1e-3, atol=1e-3)
    # "mean" is the mean only (issue 17: the same pooling as the encoders'), the first half of meanstd
    np.testing.assert_array_equal(MfccBaseline().embed_clip(clip), got[:, :60])
    # Kim pooling: two 2.5 s slices of the 6 s file (the remainder is dropped), mean+std over them
    whole = Clip("w", wav, 0, "train", "g")
    kim = MfccBaseline().embed_clip(whole, pooling="slices-meanstd")
    assert kim.shape == (1, 240)
    with pytest.raises(AudioError, match="no such"):
        MfccBaseline().embed_clip(Clip("x", wav.parent / "missing.wav", 0, "train", "g"))


def test_slices_and_mean_std():
    x = np.arange(10, dtype=np.float32)
    assert [s.tolist() for s in slice_waveform(x, sample_rate=2, seconds=2.0)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(slice_waveform(x[:3], sample_rate=2, seconds=2.0)) == 1
    a = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])  # 2 slices, 1 layer, D=2
    np.testing.assert_allclose(mean_std_over(a), [[2.0, 4.0, 1.0, 2.0]])


def test_embeddings_dir_matches_by_relative_path(tmp_path, wav):
    emb = tmp_path / "emb"
    (emb / "a").mkdir(parents=True)
    np.save(emb / "a" / "song.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    rep = EmbeddingsDirRepresentation("ext", emb).for_task(tmp_path / "data")
    clip = Clip("c", wav, 0, "train", "g")
    np.testing.assert_array_equal(rep.embed_clip(clip), [[0, 1, 2], [3, 4, 5]])
    assert rep.layer_names == ["layer0", "layer1"]
    (emb / "a" / "song.npy").unlink()
    np.save(emb / "a" / "song.wav.npy", np.ones((2, 5, 3), np.float32))  # m3bert embed's naming, frame level
    np.testing.assert_array_equal(rep.embed_clip(clip), np.ones((2, 3)))
    with pytest.raises(DataError, match="no embedding for a/other"):
        rep.embed_clip(Clip("d", wav.parent / "other.wav", 0, "train", "g"))
    with pytest.raises(ConfigError, match="not a folder"):
        EmbeddingsDirRepresentation("x", tmp_path / "nope")


def test_hear_module_is_imported_and_used(tmp_path, monkeypatch, wav):
    (tmp_path / "fake_hear_mod.py").write_text(textwrap.dedent("""
        import torch
        class M(torch.nn.Module):
            sample_rate = 16000
            scene_embedding_size = 2
        def load_model(path=None):
            return M()
        def get_scene_embeddings(audio, model):
            return torch.stack([audio.mean(1), audio.shape[1] * torch.ones(audio.shape[0])], 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rep = HearRepresentation("fake_hear_mod")
    out = rep.embed_clip(Clip("c", wav, 0, "train", "g", start=0.0, end=2.0))
    assert out.shape == (1, 2) and out[0, 1] == 32000  # 2 s at the module's 16 kHz
    assert rep.cache_key.startswith("hear:fake_hear_mod")
    with pytest.raises(ConfigError, match="cannot import"):
        HearRepresentation("no_such_hear_module_xyz")
    sys.modules.pop("fake_hear_mod", None)


def test_unknown_baseline_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown baseline 'vggish'; registered: \['chance', 'mfcc', 'random', 'raw', 'tempogram-stats'\]"):
        get_baseline("vggish")


def test_cli_bench_on_the_tiny_corpus(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["bench", "--baseline", "mfcc", "--baseline", "chance", "--task", f"builtin-dance:{tiny_corpus}",
               "--protocol", "marble", "--seeds", "2", "--max-epochs", "8", "--report", str(out), "--quiet",
               "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mfcc" in printed and "builtin-dance accuracy" in printed
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["representations"]] == ["mfcc", "chance"]
    assert {r["task"] for r in res["results"]} == {"builtin-dance"}
    md = (out / "report.md").read_text()
    for r in res["results"]:
        s = r["summary"]["metrics"]["accuracy"]
        assert f"{s['mean']:.3f} ± {s['half_width']:.3f}" in md or f"{s['mean']:.3f}" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 2
    assert any((out / "cache" / "mfcc").rglob("*.npy"))
    # rerun: features come from the cache, same numbers (seeded probes)
    rc = main(["bench", "--baseline", "mfcc", "--task", f"builtin-dance:{tiny_corpus}", "--seeds", "2",
               "--max-epochs", "8", "--report", str(tmp_path / "again"), "--cache", str(out / "cache"), "--quiet",
               "--threads", "1"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["results"][0]["summary"] == res["results"][0]["summary"]
    assert main(["bench", "--baseline", "nope", "--task", "builtin-dance", "--report", str(tmp_path / "x")]) == 1


def test_model_representation_all_layers_both_poolings_and_failures(wav):
    emb = load_model("random:m2bert-tiny")
    rep = ModelRepresentation("random:m2bert-tiny", embedder=emb)
    clips = [Clip("a", wav, 0, "train", "g", start=0.5, end=3.5), Clip("b", wav.parent / "gone.wav", 1, "train", "h"),
             Clip("c", wav, 1, "test", "i")]
    failed = []
    got = rep.embed_clips(clips, on_error=lambda c, e: failed.append(c.clip_id))
    L, D = emb.n_hidden_states, emb.layer_dims[0]
    assert got.shape == (3, L, D) and rep.layer_names[0] == "input" and len(rep.layer_names) == L
    assert failed == ["b"] and np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()
    # the clip's time range is what gets embedded: same as embedding that stretch directly
    ref = emb.embed(load_audio(wav, sample_rate=emb.sample_rate, offset=0.5, duration=3.0),
                    sample_rate=emb.sample_rate, layers="all")
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)
    kim = rep.embed_clips([clips[2]], pooling="slices-meanstd")
    assert kim.shape == (1, L, 2 * D)
    with pytest.raises(AudioError, match="gone.wav"):
        rep.embed_clips(clips)


def test_benchmark_models_share_input_features_for_the_run_only(wav, monkeypatch):
    """run_benchmark lends its model representations one FeatureMemo: the second model over the same
    clips gets every clip's input features from it; after the run no model keeps it."""
    memos = []

    class Recorded(FeatureMemo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            memos.append(self)

    monkeypatch.setattr(runner, "FeatureMemo", Recorded)
    # 12 disjoint excerpts of one file (overlapping ones in different splits would be refused as leakage)
    clips = [Clip(f"c{i}", wav, i % 2, ["train", "train", "valid", "test"][i % 4], f"g{i}", start=0.45 * i, end=0.45 * i + 0.4)
             for i in range(12)]
    data = TaskData("two-tones", "multiclass", ["a", "b"], clips)
    task = Task("two-tones", "multiclass", "acoustic", ["accuracy"], loader=lambda root, **kw: data)
    a = ModelRepresentation("random:m2bert-tiny:1", name="a")
    b = ModelRepresentation("random:m2bert-tiny:2", name="b")
    run_benchmark([a, b], [(task, data.validate())], seeds=1, progress=False,
                  probe_overrides={"hidden": (8,), "lrs": (1e-2,), "layers": "last", "max_epochs": 2})
    assert len(memos) == 1 and (memos[0].misses, memos[0].hits) == (12, 12)
    assert a.embedder.feature_memo is None and b.embedder.feature_memo is None
    # a model with a memo of its own keeps using it
    own = FeatureMemo(1 << 20)
    c = ModelRepresentation("random:m2bert-tiny:1", name="c", feature_memo=own)
    with c.sharing_input_features(FeatureMemo()):
        assert c.embedder.feature_memo is own
    assert c.embedder.feature_memo is own


def test_embeddings_dir_names_hidden_state_0_input_when_embed_json_says_so(tmp_path, wav):
    """m3bert embed --layers all writes hidden state 0 (the input projection) too: it is named
    "input" so the benchmark's weighted-sum probes leave it out, as for a model."""
    import json

    emb = tmp_path / "emb"
    (emb / "a").mkdir(parents=True)
    np.save(emb / "a" / "song.npy", np.ones((3, 4), np.float32))
    (emb / "embed.json").write_text(json.dumps({"level": "clip", "layers": [0, 1, 2]}))
    rep = EmbeddingsDirRepresentation("ext", emb).for_task(tmp_path / "data")
    rep.embed_clip(Clip("c", wav, 0, "train", "g"))
    assert rep.layer_names == ["input", "layer1", "layer2"]
