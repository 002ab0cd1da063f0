"""Issue 12 (hardening) for ``features``: dead workers, implausible rates, streaming, odd names,
huge values, truncated files, empty inputs, settings that break every file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_test_signal
from m3bert.app.cli import main
from m3bert.audio import AudioChunks, chunk_spans, load_audio
from m3bert.core.errors import AudioError, ConfigError, DataError
from m3bert.features import get_feature_set
from m3bert.features import store as st
from m3bert.features.normalize import CmvnAccumulator
from m3bert.features.pool import run_tasks
from m3bert.features.store import FeatureStore, extract_to_store

SR = 44100
MAX_S = 2.0
TESTS = Path(__file__).resolve().parent
_ORIGINAL_INIT = st._init_worker  # this module is imported before any test patches it


@pytest.fixture(scope="module")
def fs():
    return get_feature_set("m3bert324")


def _wav(path: Path, seconds: float, seed: int, sample_rate: int = SR, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, make_test_signal(seconds, sample_rate, seed=seed), sample_rate, **kw)
    return path


def _extract(inputs, out, fs, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("max_seconds", MAX_S)
    return extract_to_store(inputs, out, feature_set=fs, **kw)


# ---------------------------------------------------------------------------------------------
# Item 3: a worker that dies (SIGSEGV) is a reject; the pool is restarted; the run finishes
# ---------------------------------------------------------------------------------------------

def crashing_init(*args):
    """Worker initialiser used by the test below: files named crash* kill their worker (SIGSEGV)."""
    _ORIGINAL_INIT(*args)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    extract = st._extract_file

    def extract_or_die(path, spool):
        if os.path.basename(path).startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return extract(path, spool)

    st._extract_file = extract_or_die


RUN_WITH_CRASHES = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import test_hardening_features as t
    from m3bert.app.cli import main
    from m3bert.features import store
    if __name__ == "__main__":
        store._init_worker = t.crashing_init
        sys.exit(main(["features", sys.argv[2], "--out", sys.argv[3], "--workers", "2", "--max-seconds", "2",
                       "--files-per-shard", "2", "--quiet"]))
""")


@pytest.mark.slow  # spawns worker processes (each imports torch)
def test_dead_worker_is_a_reject_and_the_run_finishes(tmp_path, fs):
    music = tmp_path / "music"
    good = ["a.wav", "b.wav", "d.wav", "e.wav", "f.wav"]
    for i, name in enumerate(good):
        _wav(music / name, 1.0 + 0.5 * i, seed=i)
    _wav(music / "crash1.wav", 1.0, seed=20)
    _wav(music / "crash2.wav", 1.2, seed=21)
    out = tmp_path / "store"
    script = tmp_path / "run.py"
    script.write_text(RUN_WITH_CRASHES)
    proc = subprocess.run([sys.executable, str(script), str(TESTS), str(music), str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]  # before: waited forever for the lost task
    assert "5 file(s) extracted" in proc.stdout and "2 skipped" in proc.stdout
    store = FeatureStore.open(out)
    assert sorted(store.groups()) == good  # every good file committed, none stuck in an open shard
    reasons = {r["source"]: r["reason"] for r in store.rejects}
    assert sorted(reasons) == ["crash1.wav", "crash2.wav"]
    for name, why in reasons.items():
        assert name in why and "worker process died (signal 11, SIGSEGV)" in why
    assert not [p.name for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no spool/temp debris
    # the stored frames are those of an ordinary run
    ref = tmp_path / "ref"
    _extract([music / n for n in good], ref, fs)
    ref_store = FeatureStore.open(ref)
    assert len(ref_store) == len(store)
    for i, j in zip(range(len(store)), range(len(ref_store))):  # same order: sources sort alike
        assert store.rows[i]["chunk_id"].split("#") == [Path(ref_store.rows[j]["source"]).name,
                                                         ref_store.rows[j]["chunk_id"].split("#")[1]]
        np.testing.assert_array_equal(store.get(i, normalize=False), ref_store.get(j, normalize=False))


def _square_or_fail(x: int) -> int:
    if x == 3:
        os._exit(7)  # the worker vanishes
    if x == 5:
        raise KeyError("five")
    return x * x


def _failed(task: int, why: str) -> str:
    return f"{task}: {why}"


@pytest.mark.slow  # spawns worker processes (each imports torch)
def test_run_tasks_keeps_order_and_names_each_failure():
    got = list(run_tasks(_square_or_fail, range(8), workers=2, on_failure=_failed))
    assert got == [0, 1, 4, "3: worker process died (exit code 7)", 16, "5: KeyError: 'five'", 36, 49]
    in_process = list(run_tasks(_square_or_fail, [1, 2, 5], workers=1, on_failure=_failed))
    assert in_process == [1, 4, "5: KeyError: 'five'"]


def _bad_init() -> None:
    raise RuntimeError("cannot start")


@pytest.mark.slow  # spawns worker processes (each imports torch)
def test_run_tasks_refuses_workers_that_cannot_start():
    with pytest.raises(DataError, match="could not start"):
        list(run_tasks(_square_or_fail, range(4), workers=2, on_failure=_failed, initializer=_bad_init))


# ---------------------------------------------------------------------------------------------
# Item 4: implausible sample rates; streaming long files
# ---------------------------------------------------------------------------------------------

def test_implausible_header_rate_is_a_reject_not_a_billion_samples(tmp_path, fs):
    one_hz = tmp_path / "music" / "one_hz.wav"
    one_hz.parent.mkdir()
    sf.write(one_hz, make_test_signal(0.1, SR), 1)  # 4410 samples "at 1 Hz": 73 minutes once resampled
    _wav(tmp_path / "music" / "ok.wav", 1.0, seed=1)
    with pytest.raises(AudioError, match=r"one_hz.wav: sample rate in the file header .* 4000\.\.384000, got 1$"):
        load_audio(one_hz, sample_rate=SR)
    with pytest.raises(AudioError, match="one_hz.wav"):
        list(AudioChunks(one_hz, sample_rate=SR))
    summary = _extract(tmp_path / "music", tmp_path / "s", fs)
    assert summary["files_done"] == 1 and [r["source"] for r in summary["rejects"]] == ["one_hz.wav"]
    assert summary["audio_hours"] < 1e-3


@pytest.mark.parametrize("rate", [1, 1.5, 44100.5, 0, -44100, 3999, 384001, float("nan"), "44100", True])
def test_sample_rate_arguments_must_be_plausible_integers(tmp_path, rate):
    wav = _wav(tmp_path / "a.wav", 0.2, seed=1)
    x = make_test_signal(0.2, SR)
    with pytest.raises(ConfigError, match=r"load_audio\(.*a.wav\): sample_rate must be an integer number of Hz") as e:
        load_audio(wav, sample_rate=rate)
    assert repr(rate) in str(e.value)  # the value received, not int(rate)
    from m3bert.audio import resample, validate_waveform
    with pytest.raises(AudioError, match="sample_rate"):
        validate_waveform(x, sample_rate=rate, source="mine")
    with pytest.raises(ConfigError, match="orig_sample_rate"):
        resample(x, orig_sample_rate=rate, sample_rate=SR)
    with pytest.raises(ConfigError, match="sample_rate"):
        get_feature_set("m3bert324", sample_rate=rate)


def test_integral_float_rates_are_accepted_unchanged(tmp_path):
    wav = _wav(tmp_path / "a.wav", 0.5, seed=1, sample_rate=22050)
    np.testing.assert_array_equal(load_audio(wav, sample_rate=44100.0), load_audio(wav, sample_rate=44100))
    np.testing.assert_array_equal(load_audio(wav, sample_rate=np.int64(44100)), load_audio(wav, sample_rate=44100))


@pytest.mark.parametrize("name,seconds,rate,stereo,fmt,subtype", [
    ("native.wav", 9.3, 44100, False, "WAV", "PCM_16"),
    ("native24.flac", 6.1, 44100, True, "FLAC", "PCM_24"),
    ("up.flac", 7.0, 22050, True, "FLAC", "PCM_16"),
    ("down.wav", 5.5, 48000, False, "WAV", "FLOAT"),
    ("native.ogg", 6.0, 44100, False, "OGG", "VORBIS"),
    ("opus.opus", 4.3, 48000, False, "OGG", "OPUS"),
])
def test_store_streams_files_bit_identical_to_whole_file_extraction(tmp_path, fs, name, seconds, rate, stereo, fmt,
                                                                   subtype):
    """The store now streams chunk by chunk; its frames and statistics are bit for bit those of the
    former path: decode the whole file, cut it by the rule, extract every chunk."""
    x = make_test_signal(seconds, rate, seed=3)
    if stereo:
        x = np.stack([x, make_test_signal(seconds, rate, seed=4)], axis=1)
    path = tmp_path / "music" / name
    path.parent.mkdir()
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    _extract(path.parent, tmp_path / "s", fs)
    store = FeatureStore.open(tmp_path / "s")
    y = load_audio(path, sample_rate=SR)
    spans = chunk_spans(len(y), sample_rate=SR, max_seconds=MAX_S)
    expected = fs.extract_batch([y[a:b] for a, b in spans], sample_rate=SR, normalize=False)
    assert [(r["start_s"], r["end_s"]) for r in store.rows] == [(a / SR, b / SR) for a, b in spans]
    acc = CmvnAccumulator(fs.n_channels)
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(store.get(i, normalize=False), e)
        acc.update(e)
    np.testing.assert_array_equal(store.cmvn_accumulator.total, acc.total)
    np.testing.assert_array_equal(store.cmvn_accumulator.total_sq, acc.total_sq)


def test_streamed_mp3_matches_whole_file_within_decoder_rounding(tmp_path, fs):
    """libsndfile's MP3 decoder rounds the last bit differently depending on where a read stops, so
    a streamed MP3 may differ from a whole-file decode by 1 ulp per sample (documented)."""
    path = _wav(tmp_path / "music" / "a.mp3", 9.0, seed=5, format="MP3")
    y = load_audio(path, sample_rate=SR)
    streamed = np.concatenate([c for _, _, c in AudioChunks(path, sample_rate=SR, max_seconds=MAX_S)])
    assert streamed.shape == y.shape
    np.testing.assert_allclose(streamed, y, rtol=0, atol=2.5e-7)


# ---------------------------------------------------------------------------------------------
# Item 5: names that are not UTF-8; any per-file failure is a skip; huge float values
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_file_name_that_is_not_utf8(tmp_path, capsys, fs):
    music = tmp_path / "music"
    _wav(music / "good.wav", 1.0, seed=1)
    raw_name = os.path.join(os.fsencode(music), b"caf\xe9.wav")  # latin-1 e-acute: invalid UTF-8
    with open(raw_name, "wb") as fh:
        sf.write(fh, make_test_signal(1.2, SR, seed=2), SR, format="WAV")
    odd = os.fsdecode(raw_name)
    assert load_audio(odd, sample_rate=SR).shape == (int(1.2 * SR),)
    rc = main(["features", str(music), "--out", str(tmp_path / "s"), "--max-seconds", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 file(s) extracted" in out  # before: UnicodeEncodeError before any work
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store.groups()) == sorted([os.path.basename(odd), "good.wav"])
    i = store.groups()[os.path.basename(odd)][0]
    np.testing.assert_array_equal(store.get(i, normalize=False),
                                  fs.extract(load_audio(odd, sample_rate=SR), sample_rate=SR, normalize=False))
    # a bad file with such a name is reported (escaped) too
    with open(os.path.join(os.fsencode(music), b"\xff\xfe.wav"), "wb") as fh:
        fh.write(b"RIFF nonsense" * 10)
    rc = main(["features", str(music), "--out", str(tmp_path / "s"), "--max-seconds", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped \\xff\\xfe.wav: " in out
    assert json.loads((tmp_path / "s" / "rejects.json").read_text())[0]["source"] == os.fsdecode(b"\xff\xfe.wav")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), MemoryError(), ValueError("scipy says no")])
def test_any_per_file_failure_is_a_recorded_skip(tmp_path, fs, monkeypatch, exc):
    music = tmp_path / "music"
    _wav(music / "a.wav", 1.0, seed=1)
    _wav(music / "b_bad.wav", 1.0, seed=2)
    _wav(music / "c.wav", 1.0, seed=3)
    extract = st._extract_file

    def flaky(path, spool):
        if "b_bad" in path:
            raise exc
        return extract(path, spool)

    monkeypatch.setattr(st, "_extract_file", flaky)
    summary = _extract(music, tmp_path / "s", fs)
    assert summary["files_done"] == 2
    (r,) = summary["rejects"]
    assert r["source"] == "b_bad.wav" and str(music / "b_bad.wav") in r["reason"]
    assert type(exc).__name__ in r["reason"]


def test_decoder_failures_are_audio_errors_in_the_api(tmp_path, monkeypatch):
    wav = _wav(tmp_path / "a.wav", 0.5, seed=1)

    def broken_read(self, *a, **k):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(sf.SoundFile, "read", broken_read)
    with pytest.raises(AudioError, match=r"a.wav: unreadable or corrupt audio file \(RuntimeError: decoder exploded"):
        load_audio(wav, sample_rate=SR)
    with pytest.raises(AudioError, match=r"a.wav: unreadable or corrupt .*decoder exploded"):
        list(AudioChunks(wav, sample_rate=SR))


@pytest.mark.parametrize("value,why", [(1e30, "not audio"), (3e38, "not audio"), (np.inf, "non-finite"),
                                       (np.nan, "non-finite")])
def test_huge_or_non_finite_float_samples(tmp_path, fs, value, why):
    x = make_test_signal(1.0, SR, seed=1)
    x[SR // 2] = value
    bad = tmp_path / "music" / "bad.wav"
    bad.parent.mkdir()
    sf.write(bad, x, SR, subtype="FLOAT")
    _wav(tmp_path / "music" / "good.wav", 1.0, seed=2)
    with pytest.raises(AudioError, match=why) as e:
        load_audio(bad, sample_rate=SR)
    assert str(bad) in str(e.value) and "0.500 s" in str(e.value)
    with pytest.raises(AudioError, match=why):
        fs.extract(x, sample_rate=SR)  # the in-memory API refuses it too, before any scipy error
    summary = _extract(tmp_path / "music", tmp_path / "s", fs)
    assert summary["files_done"] == 1 and why in summary["rejects"][0]["reason"]
    # unscaled integer PCM passed as floats is still accepted
    assert np.isfinite(fs.extract(make_test_signal(1.0, SR) * 32767.0, sample_rate=SR)).all()


# ---------------------------------------------------------------------------------------------
# Item 9: no audio, settings that break every file, truncated files, empty files
# ---------------------------------------------------------------------------------------------

def test_folder_without_audio_is_an_error(tmp_path, capsys, fs):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no music here")
    with pytest.raises(DataError, match=r"no audio files found in .*docs"):
        _extract(tmp_path / "docs", tmp_path / "s", fs)
    rc = main(["features", str(tmp_path / "docs"), "--out", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("m3bert features: error: no audio files found")
    assert not (tmp_path / "s").exists()  # nothing was created


@pytest.mark.parametrize("max_seconds", [0.0, -1.0, float("nan"), float("inf"), 0.01])
def test_settings_that_break_every_file_are_refused_before_writing(tmp_path, fs, max_seconds):
    _wav(tmp_path / "music" / "a.wav", 1.0, seed=1)
    with pytest.raises(ConfigError, match="max-seconds"):
        _extract(tmp_path / "music", tmp_path / "s", fs, max_seconds=max_seconds)
    assert not (tmp_path / "s").exists()  # before: store.json kept the setting and refused the right one


def test_a_store_that_never_committed_a_file_takes_new_settings(tmp_path, fs):
    """A store left by an earlier version with a setting that broke every file (max_seconds 0 in
    store.json, no shard) no longer refuses the corrected run."""
    _wav(tmp_path / "music" / "a.wav", 1.0, seed=1)
    store = tmp_path / "s"
    (store / "shards").mkdir(parents=True)
    header = st._store_header(fs, max_seconds=0.0, shard_index=0, num_shards=1)
    (store / "store.json").write_text(json.dumps(header))
    (store / "rejects.json").write_text(json.dumps([{"source": "a.wav", "reason": "max_seconds must be > 0"}]))
    summary = _extract(tmp_path / "music", store, fs)
    assert summary["files_done"] == 1
    assert json.loads((store / "store.json").read_text())["chunking"]["max_seconds"] == MAX_S
    assert FeatureStore.open(store).rejects == []
    # a store with committed files still refuses other settings
    with pytest.raises(DataError, match="chunked"):
        _extract(tmp_path / "music", store, fs, max_seconds=3.0)


def test_out_that_is_a_file_is_refused(tmp_path, fs):
    _wav(tmp_path / "music" / "a.wav", 1.0, seed=1)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        _extract(tmp_path / "music", tmp_path / "taken", fs)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("MP3", "mp3")])
def test_truncated_file_is_stored_with_a_warning(tmp_path, capsys, fs, fmt, ext):
    music = tmp_path / "music"
    whole = _wav(tmp_path / f"whole.{ext}", 4.0, seed=1, format=fmt)
    data = whole.read_bytes()
    music.mkdir()
    (music / f"half.{ext}").write_bytes(data[: len(data) // 2])
    _wav(music / "ok.wav", 1.0, seed=2)
    with pytest.warns(UserWarning, match=r"half\.\w+: decoded [12]\.\d\d s but its header declares 4\.00 s"):
        load_audio(music / f"half.{ext}", sample_rate=SR)
    rc = main(["features", str(music), "--out", str(tmp_path / "s"), "--max-seconds", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and f"warning half.{ext}: " in out and "probably truncated" in out
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store.groups()) == [f"half.{ext}", "ok.wav"]
    assert [w["source"] for w in store.warnings] == [f"half.{ext}"]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["warnings"] == store.warnings
    # an intact file gets no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(music / "ok.wav", sample_rate=SR)


def test_empty_file_says_it_is_empty(tmp_path, fs):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "empty.mp3").write_bytes(b"")
    _wav(tmp_path / "music" / "ok.wav", 1.0, seed=1)
    with pytest.raises(AudioError, match=r"empty.mp3: file is empty \(0 bytes\)"):
        load_audio(tmp_path / "music" / "empty.mp3", sample_rate=SR)
    summary = _extract(tmp_path / "music", tmp_path / "s", fs)
    (r,) = summary["rejects"]
    assert "file is empty (0 bytes)" in r["reason"] and "does not exist" not in r["reason"]
