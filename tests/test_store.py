"""Feature store: round trip, resume (also after SIGKILL), bad files, mixed configs, sharding, CMVN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_test_signal
from m3bert.audio import chunk_spans, load_audio
from m3bert.core.errors import AudioError, DataError
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store

SR = 44100
MAX_S = 2.0  # short chunks keep the audio (and the test) small while exercising the chunking rule
FILES = {"a.wav": 1.2, "b/c.flac": 5.0, "b/d.wav": 3.1, "e.ogg": 0.8, "f/g/h.wav": 2.0, "i.wav": 4.4}


def _write(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[path.suffix]
    sf.write(path, make_test_signal(seconds, SR, seed=seed), SR, format=fmt)


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("music")
    for i, (rel, s) in enumerate(FILES.items()):
        _write(root / rel, s, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def fs():
    return get_feature_set("m3bert324")


def _extract(music, out, fs, **kw):
    kw.setdefault("progress", False)
    return extract_to_store(music, out, feature_set=fs, max_seconds=MAX_S, **kw)


@pytest.fixture(scope="module")
def full_store(music, fs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "full"
    summary = _extract(music, out, fs, files_per_shard=2)
    assert summary["files_done"] == len(FILES) and summary["files_skipped"] == 0
    return out


def _content(store: FeatureStore) -> tuple[list[tuple], list[np.ndarray]]:
    """Layout-free content: rows without shard/offset, and every chunk's raw frames."""
    rows = [(r["chunk_id"], r["source"], r["sha1"], r["start_s"], r["end_s"], r["n_frames"]) for r in store.rows]
    return rows, [store.get(i, normalize=False) for i in range(len(store))]


def _assert_same(a: FeatureStore, b: FeatureStore) -> None:
    rows_a, data_a = _content(a)
    rows_b, data_b = _content(b)
    assert rows_a == rows_b
    for x, y in zip(data_a, data_b):
        np.testing.assert_array_equal(x, y)


def test_round_trip_matches_direct_extraction(full_store, music, fs):
    store = FeatureStore.open(full_store)
    n_expected = sum(len(chunk_spans(int(round(s * SR)), sample_rate=SR, max_seconds=MAX_S)) for s in FILES.values())
    assert len(store) == n_expected and store.lengths.dtype == np.int64
    assert sorted(store.groups()) == sorted(FILES)
    assert store.feature_set.config_hash() == fs.config_hash()
    for i, row in enumerate(store.rows):
        assert row["chunk_id"] == f"{row['source']}#{store.groups()[row['source']].index(i)}"
        y = load_audio(music / row["source"], sample_rate=SR)
        a, b = int(round(row["start_s"] * SR)), int(round(row["end_s"] * SR))
        expected = fs.extract(y[a:b], sample_rate=SR)
        got = store.get(i)
        assert got.shape == (row["n_frames"], 324) == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert store.lengths[i] == row["n_frames"]
    # chunks of one file tile it without gaps
    c = [store.rows[i] for i in store.groups()["b/c.flac"]]
    assert [(r["start_s"], r["end_s"]) for r in c] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    # random access is a memory map, not a read of the whole shard
    assert isinstance(store._map(store.rows[0]["shard"]), np.memmap)
    manifest = json.loads((full_store / "manifest.json").read_text())
    assert len(manifest["rows"]) == len(store) and manifest["rows"][0]["config_hash"] == fs.config_hash()


def test_rerun_is_idempotent(full_store, music, fs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_store, copy)
    before = sorted(p.name for p in (copy / "shards").iterdir())
    summary = _extract(music, copy, fs)
    assert summary["files_done"] == 0 and summary["files_already_in_store"] == len(FILES)
    assert sorted(p.name for p in (copy / "shards").iterdir()) == before
    _assert_same(FeatureStore.open(copy), FeatureStore.open(full_store))


def test_bad_files_are_skipped_and_recorded(music, fs, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(music, root)
    (root / "corrupt.mp3").write_bytes(b"\xff\xfb\x90\x00" + b"nonsense" * 50)
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    x = make_test_signal(1.0, SR)
    x[5] = np.nan
    sf.write(root / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(root / "short.wav", make_test_signal(0.01, SR), SR)
    summary = _extract(root, tmp_path / "s", fs)
    reasons = {r["source"]: r["reason"] for r in summary["rejects"]}
    assert set(reasons) == {"corrupt.mp3", "empty.wav", "nan.wav", "short.wav"}
    assert "corrupt" in reasons["corrupt.mp3"] and "zero length" in reasons["empty.wav"]
    assert "non-finite" in reasons["nan.wav"] and "shorter than one analysis window" in reasons["short.wav"]
    assert all(src in why for src, why in reasons.items())  # each reason names its file
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store.groups()) == sorted(FILES)
    assert {r["source"] for r in store.rejects} == set(reasons)
    # fixing a bad file and rerunning picks it up and clears its reject
    sf.write(root / "short.wav", make_test_signal(1.0, SR), SR)
    summary = _extract(root, tmp_path / "s", fs)
    assert summary["files_done"] == 1
    assert "short.wav" not in {r["source"] for r in FeatureStore.open(tmp_path / "s").rejects}


def test_strict_makes_first_bad_file_fatal(music, fs, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(music, root)
    (root / "zz_corrupt.wav").write_bytes(b"RIFF" + b"\x00" * 100)  # sorts last: the good files come first
    with pytest.raises(AudioError, match="zz_corrupt.wav"):
        _extract(root, tmp_path / "s", fs, strict=True)
    # the work done before the bad file was committed, not lost
    assert sorted(FeatureStore.open(tmp_path / "s").groups()) == sorted(FILES)


def test_mixed_configs_are_refused(full_store, music, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_store, copy)
    other = get_feature_set("m3bert324", n_mels=64)
    with pytest.raises(DataError, match="refusing to add"):
        _extract(music, copy, other)
    with pytest.raises(DataError, match="chunked"):
        extract_to_store(music, copy, feature_set=get_feature_set("m3bert324"), max_seconds=30.0, progress=False)
    with pytest.raises(DataError, match="partition"):
        _extract(music, copy, get_feature_set("m3bert324"), shard_index=0, num_shards=2)
    _extract([music / "a.wav"], tmp_path / "other", get_feature_set("m3bert324", cmvn="none"))
    with pytest.raises(DataError, match="different feature configs"):
        FeatureStore.open([copy, tmp_path / "other"])
    with pytest.raises(DataError, match="not a feature store"):
        FeatureStore.open(tmp_path)


def test_sharding_and_merge_equal_one_store(full_store, music, fs, tmp_path):
    parts = [tmp_path / f"part{i}" for i in range(3)]
    sources = []
    for i, part in enumerate(parts):
        summary = _extract(music, part, fs, shard_index=i, num_shards=3)
        sources.append(set(FeatureStore.open(part).groups()))
        assert summary["files_in_partition"] == len(sources[-1])
    assert set().union(*sources) == set(FILES) and sum(map(len, sources)) == len(FILES)  # disjoint cover
    assert all(sources)  # the hash spreads these 6 files over all 3 partitions
    _assert_same(FeatureStore.open(parts), FeatureStore.open(full_store))
    with pytest.raises(DataError, match="shard-index"):
        _extract(music, tmp_path / "bad", fs, shard_index=3, num_shards=3)


def test_corpus_cmvn_statistics_saved_and_merged(music, tmp_path):
    fs = get_feature_set("m3bert324", cmvn="corpus")
    whole = tmp_path / "whole"
    _extract(music, whole, fs)
    store = FeatureStore.open(whole)
    raw = np.concatenate([store.get(i, normalize=False) for i in range(len(store))]).astype(np.float64)
    mean, std = raw.mean(0), raw.std(0)
    np.testing.assert_allclose(store.cmvn_stats["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.cmvn_stats["std"], std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.get(3), store.feature_set.normalize(store.get(3, normalize=False)))
    normed = np.concatenate([store.get(i) for i in range(len(store))])
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-3)
    saved = json.loads((whole / "manifest.json").read_text())["feature_set"]["cmvn_stats"]
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-5, atol=1e-5)
    # a model saved with store.feature_set.to_dict() normalises new audio with the same statistics
    assert store.feature_set.to_dict()["cmvn_stats"] is not None
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        _extract(music, p, fs, shard_index=i, num_shards=2)
    merged = FeatureStore.open(parts)
    np.testing.assert_allclose(merged.cmvn_stats["mean"], store.cmvn_stats["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(merged.cmvn_stats["std"], store.cmvn_stats["std"], rtol=1e-6, atol=1e-6)


def test_changed_file_supersedes_and_duplicates_are_dropped(music, fs, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(music, root)
    _extract(root, tmp_path / "s", fs)
    _write(root / "a.wav", 1.5, seed=99)  # new content under the same name
    shutil.copy(root / "b/d.wav", root / "b/d_copy.wav")  # same bytes under another name
    summary = _extract(root, tmp_path / "s", fs)
    assert summary["files_done"] == 1
    assert summary["duplicates"] == [{"source": "b/d_copy.wav", "same_as": "b/d.wav"}]
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store.groups()) == sorted(FILES)
    (i,) = store.groups()["a.wav"]
    assert store.rows[i]["end_s"] == pytest.approx(1.5)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from m3bert.features import get_feature_set
    from m3bert.features import store as st
    calls = {"n": 0}
    original = st.ShardWriter.append_file
    def append_then_die(self, entry, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 0 (2 files) committed, shard 1 has one file in its temp .npy
            self.fh.write(b"half a chunk")
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, entry, *args)
    st.ShardWriter.append_file = append_then_die
    st.extract_to_store(sys.argv[1], sys.argv[2], feature_set=get_feature_set("m3bert324"), max_seconds=2.0,
                        files_per_shard=2, progress=False)
""")


def test_resume_after_sigkill(full_store, music, fs, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(music), str(out)], capture_output=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    debris = [p.name for p in (out / "shards").iterdir() if p.name.startswith(".")]
    assert debris, "the killed run should have left a half-written temporary shard"
    partial = FeatureStore.open(out)  # only the committed shard is visible
    assert len(partial.groups()) == 2
    summary = _extract(music, out, fs)
    assert summary["files_already_in_store"] == 2 and summary["files_done"] == len(FILES) - 2
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    _assert_same(FeatureStore.open(out), FeatureStore.open(full_store))


def test_store_pickles_without_its_memory_maps(full_store):
    import pickle

    store = FeatureStore.open(full_store)
    x = store.get(1)
    blob = pickle.dumps(store)
    assert len(blob) < 200_000  # rows and config only, not shard data
    np.testing.assert_array_equal(pickle.loads(blob).get(1), x)


def test_runs_in_the_same_second_never_overwrite_shards(music, fs, tmp_path, monkeypatch):
    import m3bert.features.store as st

    monkeypatch.setattr(st.time, "strftime", lambda fmt, *a: "20240101T000000")  # two runs, one timestamp
    _extract([music / "a.wav"], tmp_path / "s", fs)
    _extract([music / "a.wav", music / "e.ogg"], tmp_path / "s", fs)
    assert sorted(FeatureStore.open(tmp_path / "s").groups()) == sorted([(music / "a.wav").as_posix(),
                                                                          (music / "e.ogg").as_posix()])
