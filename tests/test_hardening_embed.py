"""Issue 12, embed side: no data loss (lock, HDF5 never modified in place), long files streamed in
bounded memory with the same numbers, every per-file failure a recorded skip, no NaN written,
and clear one-line errors for bad settings."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_test_signal

from m3bert.app.cli import main
from m3bert.core.errors import AudioError, ConfigError, DataError
from m3bert.embed import Embedder, load_model, window_owners, window_starts
from m3bert.embed.folder import collect_inputs, embed_files, npy_path
from m3bert.embed.incremental import Pooling, WindowStream, seam
from m3bert.features import cqt, get_feature_set, stream
from m3bert.features.stream import BlockFeatures, CqtStream, StreamMismatch
from m3bert.models import create_model
from m3bert.windows import pool_frames, stitch

SR = 44100


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return load_model("random:m2bert-tiny:3")


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    for i, name in enumerate(("a.wav", "b.wav", "c.wav")):
        sf.write(root / name, make_test_signal(1.5, seed=i), SR)
    return root


def sha1(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


class Hooked:
    """An Embedder whose ``iter_embed`` calls ``hook(i)`` before handing out result ``i``."""

    def __init__(self, inner, hook):
        self.inner, self.hook = inner, hook

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def iter_embed(self, items, **kw):
        for i, res in enumerate(self.inner.iter_embed(items, **kw)):
            self.hook(i)
            yield res


def h5_keys(path):
    with h5py.File(path, "r") as h5:
        return sorted(h5.keys())


# --------------------------------------------------------------------------- item 2: no data loss


def test_second_concurrent_embed_is_refused_and_results_survive(tiny, music, tmp_path):
    """(a) A second writer into the same output while a run is going: refused at once with a
    clear error; the first run finishes with the earlier and the new results."""
    for fmt, out in (("h5", tmp_path / "e.h5"), ("npy", tmp_path / "e")):
        embed_files([music / "a.wav"], out, embedder=tiny, fmt=fmt, progress=False)
        errors = []

        def second_writer(i):
            if i == 0:
                with pytest.raises(DataError, match="embeddings output .*another process is writing it") as e:
                    embed_files([music / "a.wav", music / "c.wav"], out, embedder=tiny, fmt=fmt, progress=False)
                errors.append(str(e.value))

        s = embed_files([music / "a.wav", music / "b.wav", music / "c.wav"], out, embedder=Hooked(tiny, second_writer),
                        fmt=fmt, progress=False)
        assert len(errors) == 1 and s["n_done"] == 2 and s["n_existing"] == 1 and s["n_failed"] == 0
        if fmt == "h5":
            assert h5_keys(out) == ["a.wav", "b.wav", "c.wav"]
        else:
            keys = [json.loads(line)["key"] for line in (out / "index.jsonl").read_text().splitlines()]
            assert sorted(keys) == ["a.wav", "b.wav", "c.wav"]  # one row each: no duplicates (item 9)
    # a lock held by another process (here: another open file description) refuses the run too
    import fcntl

    from m3bert.embed.folder import lock_path

    out = tmp_path / "e.h5"
    before = sha1(out)
    with open(lock_path(out, "h5"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another process"):
            embed_files([music / "b.wav"], out, embedder=tiny, fmt="h5", progress=False)
    assert sha1(out) == before


def test_h5_results_survive_another_open_handle(tiny, music, tmp_path):
    """(b) OUT.h5 open elsewhere: a reader in this process does not stop the run and loses nothing;
    a writer in another process (HDF5 file lock) makes the run stop with a clear error, OUT intact.
    Before: the writer moved OUT to OUT.partial, failed to open it, deleted it and ended with only
    the new groups (exit 0, "0 failed")."""
    out = tmp_path / "e.h5"
    embed_files([music / "a.wav"], out, embedder=tiny, fmt="h5", progress=False)
    with h5py.File(out, "r") as reader:
        s = embed_files([music / "a.wav", music / "b.wav"], out, embedder=tiny, fmt="h5", progress=False)
        assert sorted(reader.keys()) == ["a.wav"]  # the reader keeps its (old) file
    assert s["n_done"] == 1 and h5_keys(out) == ["a.wav", "b.wav"]
    np.testing.assert_array_equal(h5py.File(out, "r")["a.wav/embedding"][()], tiny.embed(music / "a.wav"))

    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(out)!r}, 'a'); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        before = sha1(out)  # (opening for writing touches the file's header: compare from here)
        with pytest.raises(DataError, match="open in another program"):
            embed_files([music / "c.wav"], out, embedder=tiny, fmt="h5", progress=False)
        assert sha1(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert h5_keys(out) == ["a.wav", "b.wav"]
    assert not out.with_name("e.h5.partial").exists()


def test_h5_results_survive_an_exception_mid_run(tiny, music, tmp_path):
    """(c) A run that dies after writing one new group leaves OUT as it was (byte for byte); the
    rerun resumes from the partial file and ends with everything."""
    out = tmp_path / "e.h5"
    embed_files([music / "a.wav"], out, embedder=tiny, fmt="h5", progress=False)
    before = sha1(out)

    def crash(i):
        if i == 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_files([music / "a.wav", music / "b.wav", music / "c.wav"], out, embedder=Hooked(tiny, crash),
                    fmt="h5", progress=False)
    assert sha1(out) == before and h5_keys(out) == ["a.wav"]
    partial = out.with_name("e.h5.partial")
    assert h5_keys(partial) == ["a.wav", "b.wav"]  # the finished new group is kept too
    s = embed_files([music / "a.wav", music / "b.wav", music / "c.wav"], out, embedder=tiny, fmt="h5", progress=False)
    assert (s["n_done"], s["n_existing"]) == (1, 2) and h5_keys(out) == ["a.wav", "b.wav", "c.wav"]
    assert not partial.exists()
    # an unreadable partial (a crash mid-write) is set aside, never deleted; OUT's results stay
    partial.write_bytes(b"not hdf5")
    with pytest.warns(UserWarning, match="unreadable"):
        embed_files([music / "a.wav"], out, embedder=tiny, fmt="h5", progress=False)
    assert h5_keys(out) == ["a.wav", "b.wav", "c.wav"]
    assert [p.read_bytes() for p in tmp_path.glob("e.h5.partial.unreadable-*")] == [b"not hdf5"]
    # a partial made from another version of OUT is not used (it would drop OUT's newer groups)
    with pytest.raises(RuntimeError):
        embed_files([music / "a.wav", music / "b.wav"], tmp_path / "f.h5", embedder=Hooked(tiny, crash), fmt="h5",
                    progress=False)
    embed_files([music / "c.wav"], tmp_path / "g.h5", embedder=tiny, fmt="h5", progress=False)
    (tmp_path / "g.h5").replace(tmp_path / "f.h5")
    with pytest.raises(DataError, match="another version"):
        embed_files([music / "b.wav"], tmp_path / "f.h5", embedder=tiny, fmt="h5", progress=False)
    assert h5_keys(tmp_path / "f.h5") == ["c.wav"]


# --------------------------------------------------------------------------- item 4: streaming


def long_signal(seconds_loud: float) -> np.ndarray:
    """Silence, a quiet stretch, then loud audio: the loudest mel frame (the MFCC floor) lies far
    from the start, and the silence's MFCCs depend on that floor."""
    parts = [np.zeros(SR * 4, np.float32), 0.01 * make_test_signal(20.0, seed=9)]
    parts += [make_test_signal(10.0, seed=i) for i in range(int(seconds_loud // 10))]
    return np.concatenate(parts + [np.zeros(SR * 2, np.float32)])[:-517].astype(np.float32)


def test_block_features_equal_whole_file_features():
    """Streamed features equal the whole-file features exactly (max abs difference 0.0 for every
    group, CQT included; frame counts equal), whatever the block sizes. For the record, the
    overlap approach (each block featurised with n_fft of context, or 3 s for the CQT) measured on
    such a 3-minute signal: STFT groups exact, MFCC off by up to 0.8 (its floor is the clip's
    loudest value - 80 dB), log-CQT off by up to ~2 in near-silent bins (|C| ~1e-6 relative error
    from soxr restarting at every block), whatever the context."""
    fs = get_feature_set("m3bert324")
    x = long_signal(100.0)
    whole = fs.extract(x, sample_rate=SR, normalize=False)
    for block in (SR * 60, 123457):
        bf = BlockFeatures(fs, lambda: (x[i:i + block] for i in range(0, x.size, block)), normalize=False, source="x")
        got = np.concatenate(list(bf))
        assert got.shape == whole.shape and bf.n_frames == whole.shape[0] and bf.n_samples == x.size
        np.testing.assert_array_equal(got, whole)
    # corpus CMVN is applied block by block: the same affine map
    fs_c = get_feature_set("m3bert324", cmvn="corpus")
    rng = np.random.default_rng(0)
    fs_c.set_cmvn_stats(rng.standard_normal(324), 1 + rng.random(324))
    bf = BlockFeatures(fs_c, lambda: (x[i:i + 99991] for i in range(0, x.size, 99991)), normalize=True, source="x")
    np.testing.assert_array_equal(np.concatenate(list(bf)), fs_c.extract(x, sample_rate=SR, normalize=True))
    # the CQT alone, in odd-sized blocks
    plan = cqt.cqt_plan(SR, 1024, float(fs.config.cqt_fmin), 144, 24, 0.0)
    cs = CqtStream(fs.config, 0.0)
    y = x[: SR * 50]
    parts = [cs.feed(y[i:i + 7777], last=i + 7777 >= y.size) for i in range(0, y.size, 7777)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), cqt.cqt_magnitude(y, plan))


@pytest.mark.parametrize("n, window, hop", [(1000, 200, 150), (5000, 300, 200), (777, 1294, 1078), (2000, 100, 100),
                                            (1299, 1294, 1078), (3001, 256, 64)])
def test_window_stream_seams_and_pooling_equal_stitch_and_pool(n, window, hop):
    rng = np.random.default_rng(n + window)
    feats = rng.standard_normal((n, 5)).astype(np.float32)
    cuts = np.cumsum(rng.integers(1, 400, size=n))
    blocks = np.split(feats, cuts[cuts < n])
    ws = WindowStream(iter(blocks), window=window, hop=hop)
    got = list(ws)
    starts = window_starts(n, window=window, hop=hop)
    assert [s for s, _ in got] == starts and ws.n_frames == n
    for s, w in got:
        np.testing.assert_array_equal(w, feats[s:s + window])
    states = [np.stack([w * (k + 1), w - k]) for k, (_, w) in enumerate(got)]  # (2, len, 5): windows differ
    owners = window_owners(n, starts, window=window)
    for k in range(len(starts) - 1):
        assert seam(starts[k], starts[k + 1], window=window) == int(np.argmax(owners == k + 1))
    frames = stitch(states, starts, n, window=window)
    for level, pool in (("clip", "mean"), ("clip", "meanstd"), ("frame", None)):
        p, lo = Pooling(level, pool), 0
        for k, s in enumerate(starts):
            hi = seam(s, starts[k + 1], window=window) if k + 1 < len(starts) else n
            p.add(states[k][:, lo - s: hi - s])
            lo = hi
        expected = pool_frames(frames, pool) if level == "clip" else frames
        np.testing.assert_array_equal(p.result(n), expected)


def test_long_file_is_streamed_with_the_same_numbers(tmp_path, monkeypatch):
    """A 96 s stereo 48 kHz file (resampled while streaming) goes through the streaming path and
    gives bit for bit what the whole-file path gives, at frame and clip level."""
    x = long_signal(70.0)
    stereo = np.stack([x, 0.5 * x[::-1]], axis=1)
    import soxr

    sf.write(tmp_path / "long.wav", soxr.resample(stereo, SR, 48000).astype(np.float32), 48000, subtype="FLOAT")
    enc = create_model("m2bert-tiny", seed=2)
    fs = get_feature_set("m3bert324")
    emb = Embedder(enc, feature_set=fs, window_frames=300, hop_frames=220)
    calls = []
    real_long = Embedder._embed_long

    def counting(self, *a):
        calls.append(1)
        return real_long(self, *a)

    monkeypatch.setattr(Embedder, "_embed_long", counting)
    path = tmp_path / "long.wav"
    streamed = {
        "frame": emb.embed(path, level="frame", layers="all"),
        "mean": emb.embed(path, layers="all"),
        "meanstd": emb.embed_many([path], pool="meanstd", batch_size=3, progress=False)[0],
    }
    assert len(calls) == 3
    monkeypatch.setattr(stream, "STREAM_SECONDS", 1e6)  # everything whole, as before
    frames, times = emb.embed(path, level="frame", layers="all")
    np.testing.assert_array_equal(streamed["frame"][0], frames)
    np.testing.assert_array_equal(streamed["frame"][1], times)
    np.testing.assert_array_equal(streamed["mean"], emb.embed(path, layers="all"))
    np.testing.assert_array_equal(streamed["meanstd"], emb.embed(path, pool="meanstd"))
    assert len(calls) == 3  # (the whole-file path did not stream)
    # prepare() (what enrichment caches) gives the same windows either way
    whole_prep = emb.prepare(path)
    monkeypatch.setattr(stream, "STREAM_SECONDS", 60.0)
    prep = emb.prepare(path)
    assert prep.starts == whole_prep.starts and prep.n_frames == whole_prep.n_frames
    for a, b in zip(prep.windows, whole_prep.windows):
        np.testing.assert_array_equal(a, b)



def test_stream_mismatch_falls_back_to_the_whole_file(monkeypatch):
    """If a segment could not be exact (a partial frame louder than the input's loudest), the
    input is featurised whole: same result as the whole-file path."""
    x = long_signal(60.0)
    emb = Embedder(create_model("m2bert-tiny", seed=2), feature_set=get_feature_set("m3bert324"))

    def mismatch(self, *a):
        raise StreamMismatch("forced")

    expected = emb.embed(x, sample_rate=SR, layers="all")
    monkeypatch.setattr(BlockFeatures, "_stft_groups", mismatch)
    np.testing.assert_array_equal(emb.embed(x, sample_rate=SR, layers="all"), expected)
    assert emb.prepare(x, sample_rate=SR).n_frames == 1 + x.size // 1024


def test_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    """Peak traced (numpy) memory of embedding a 6-minute file is within 1.3x of a 2-minute one's
    (before: decoded and featurised whole, 3x; measured 71 vs 214 MB for 3 vs 9 minutes). The waveform kept between the two passes
    (at most stream.KEEP_SECONDS) is the one thing allowed to grow; it is off here.

    The pipelined default (windows featurised a batch ahead in a thread) adds a bounded amount: the
    windows waiting in its queue and the producer's work in flight, at most 3 batches of windows
    (measured: +12 MB for 4 windows of 1294 x 324), not something that grows with the file."""
    monkeypatch.setattr(stream, "KEEP_SECONDS", 0.0)
    encoder, fs = create_model("m2bert-tiny", seed=2), get_feature_set("m3bert324")
    sequential = Embedder(encoder, feature_set=fs, prefetch=0)
    pipelined = Embedder(encoder, feature_set=fs)
    peaks = {}
    for minutes, emb in ((2, sequential), (6, sequential), (6, pipelined)):
        path = tmp_path / f"m{minutes}.wav"
        if not path.exists():
            one = make_test_signal(30.0, seed=minutes)
            sf.write(path, np.tile(one, 2 * minutes), SR, subtype="PCM_16")
        tracemalloc.start()
        out = emb.embed(path)
        peaks[minutes, emb.prefetch] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert np.isfinite(out).all()
    assert peaks[6, 0] < 1.3 * peaks[2, 0], peaks
    batch_bytes = 4 * emb.window_frames * fs.n_channels * 4  # embed() encodes 4 windows at a time
    assert peaks[6, None] < peaks[6, 0] + 3 * batch_bytes, peaks


# --------------------------------------------------------------------------- items 5, 6b: per-file failures


def test_any_per_file_failure_is_a_skip_in_batch_and_an_audio_error_in_the_api(tiny, music, tmp_path, monkeypatch,
                                                                                 capsys):
    """A feature extractor raising scipy's ValueError on one file (as 1e30 samples did) used to
    abort the whole batch: no summary, the good file before it unwritten."""
    bad_dir = tmp_path / "in"
    bad_dir.mkdir()
    sf.write(bad_dir / "1_good.wav", make_test_signal(1.5, seed=1), SR)
    sf.write(bad_dir / "2_bad.wav", make_test_signal(1.5, seed=2), SR)
    sf.write(bad_dir / "3_good.wav", make_test_signal(1.5, seed=3), SR)
    huge = make_test_signal(1.5, seed=4)
    huge[100] = 1e30
    sf.write(bad_dir / "4_huge.wav", huge, SR, subtype="FLOAT")
    fs = tiny.feature_set
    real_extract = type(fs).extract

    def extract(self, x, **kw):
        if abs(float(x[0]) - float(load_first[0])) < 1e-9:
            raise ValueError("array must not contain infs or NaNs")
        return real_extract(self, x, **kw)

    load_first = sf.read(bad_dir / "2_bad.wav", dtype="float32")[0]
    monkeypatch.setattr(type(fs), "extract", extract)
    s = embed_files([bad_dir], tmp_path / "out", embedder=tiny, progress=False)
    assert s["n_done"] == 2 and s["n_failed"] == 2
    failed = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in s["failures"]}
    assert "ValueError: array must not contain infs or NaNs" in failed["2_bad.wav"]
    assert "2_bad.wav" in failed["2_bad.wav"] and "4_huge.wav" in failed["4_huge.wav"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == ["1_good.wav.npy", "3_good.wav.npy"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_failed"] == 2
    with pytest.raises(AudioError, match="2_bad.wav.*ValueError"):
        tiny.embed(bad_dir / "2_bad.wav")
    with pytest.raises(AudioError, match="4_huge.wav"):
        tiny.embed(bad_dir / "4_huge.wav")


def test_non_finite_embeddings_are_never_written(music, tmp_path):
    """A model that outputs NaN: each file is a recorded failure (nothing written), an AudioError
    in the API, exit 1 on the command line."""
    enc = create_model("m2bert-tiny", seed=0)
    with torch.no_grad():
        enc.layers[-1].ff2.bias[3] = float("nan")
    emb = Embedder(enc, feature_set=get_feature_set("m3bert324"))
    with pytest.raises(AudioError, match="a.wav.*non-finite"):
        emb.embed(music / "a.wav")
    s = embed_files([music], tmp_path / "out", embedder=emb, progress=False)
    assert s["n_done"] == 0 and s["n_failed"] == 3 and "NaN/inf" in s["failures"][0]["error"]
    assert not list((tmp_path / "out").glob("*.npy"))
    out = embed_files([music], tmp_path / "o.h5", embedder=emb, fmt="h5", progress=False)
    assert out["n_done"] == 0 and h5_keys(tmp_path / "o.h5") == []
    x = make_test_signal(70.0, seed=1)  # the streamed path checks too
    with pytest.raises(AudioError, match="non-finite"):
        emb.embed(x, sample_rate=SR)


# --------------------------------------------------------------------------- item 9: settings, keys


def test_zero_is_not_the_default_for_window_and_hop(tiny):
    enc = tiny.encoder
    for kw in ({"window_frames": 0}, {"hop_frames": 0}, {"window_frames": -5}, {"hop_frames": 1.5},
               {"window_frames": True}):
        with pytest.raises(ConfigError, match="0 does not mean the default|expected an integer"):
            Embedder(enc, feature_set=tiny.feature_set, **kw)
        with pytest.raises(ConfigError):
            load_model("random:m2bert-tiny:3", **kw)
    e = Embedder(enc, feature_set=tiny.feature_set, window_frames=None, hop_frames=None)
    assert (e.window_frames, e.hop_frames) == (1294, 1294 - 1294 // 6)


def test_keys_are_always_relative(tmp_path, monkeypatch):
    """Inputs given as absolute paths, with '..' or a trailing '/', or the file system root
    itself: keys never start with '/' nor contain '..' (before: the root gave keys '/...',
    which npy_path then wrote outside the output folder)."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for rel in ("x.wav", "sub/y.wav"):
        sf.write(d / rel, make_test_signal(0.5), SR)
    sf.write(tmp_path / "f.wav", make_test_signal(0.5), SR)
    cases = [[str(d) + "/"], [str(d), str(tmp_path / "f.wav")], [str(d / "sub" / ".."), str(tmp_path / "f.wav")]]
    for inputs in cases:
        for _, key in collect_inputs(inputs):
            assert not key.startswith("/") and ".." not in key.split("/"), (inputs, key)
    from m3bert.embed import folder

    real = folder.find_audio_files
    monkeypatch.setattr(folder, "find_audio_files", lambda root: [d / "x.wav"] if str(root) == "/" else real(root))
    keys = [k for _, k in collect_inputs(["/", str(tmp_path / "f.wav")])]
    assert all(not k.startswith("/") for k in keys) and keys[0].startswith("root/")
    for bad in ("/etc/passwd", "../x.wav", "a/../../x.wav", "a//b.wav", ""):
        with pytest.raises(DataError, match="not a relative path"):
            npy_path(tmp_path / "out", bad)


def test_cli_bad_settings_are_one_error_line(music, tmp_path, capsys):
    base = ["embed", str(music), "--model", "random:m2bert-tiny", "--out", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (["--device", "bogus"], "device='bogus' is not a torch device"),
        (["--threads", "-1"], "--threads -1: expected an integer >= 1"),
        (["--threads", "0"], "--threads 0: expected an integer >= 1"),
        (["--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
        (["--window-frames", "0"], "window_frames=0; expected 1..1294"),
        (["--hop-frames", "0"], "hop_frames=0; expected 1.."),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for extra, message in cases:
        assert main(base + extra) == 1, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_hear_refuses_zero_settings():
    import m3bert.hear as hear

    for kw in ({"window_frames": 0}, {"hop_frames": 0}, {"batch_size": 0}, {"device": "bogus"}):
        with pytest.raises(ConfigError):
            hear.load_model("random:m2bert-tiny:1", **kw)


def test_seed_cmvn_models_embed(tmp_path):
    """A model trained on cmvn='seed' features (the seed code's per-frame mean removal) embeds."""
    from m3bert.embed import Embedder
    from m3bert.features import get_feature_set
    from m3bert.models import create_model

    fs = get_feature_set("m3bert324", cmvn="seed")
    enc = create_model("m2bert-tiny", seed=0)
    enc.feature_config = fs.to_dict()
    x = np.random.default_rng(0).standard_normal(44100 * 3).astype(np.float32) * 0.1
    emb = Embedder(enc).embed(x, sample_rate=44100)
    feats = fs.extract(x, sample_rate=44100)
    assert emb.shape == (64,) and np.all(np.isfinite(emb))
    np.testing.assert_allclose(feats.mean(axis=1), 0.0, atol=1e-4)  # each frame's channels have mean 0
