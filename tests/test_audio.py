"""m3bert.audio: decoding, validation, resampling, file discovery and the paper's chunking rule."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import make_test_signal
from m3bert.audio import (AUDIO_EXTENSIONS, AudioChunks, chunk_spans, find_audio_files, load_audio, resample,
                          validate_waveform)
from m3bert.core.errors import AudioError, ConfigError

SR = 44100


@pytest.mark.parametrize("ext,fmt,subtype", [(".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"),
                                             (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", "MPEG_LAYER_III")])
def test_load_formats_mono_float32(tmp_path, ext, fmt, subtype):
    x = make_test_signal(1.0, SR, seed=1)
    path = tmp_path / f"a{ext}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    y = load_audio(path, sample_rate=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) <= 2048  # lossy codecs may pad by a frame
    if ext in (".wav", ".flac"):
        np.testing.assert_allclose(y, x, atol=1 / 2**15 + 1e-6)


def test_load_opus(tmp_path):
    x = make_test_signal(1.0, 48000, seed=2)
    path = tmp_path / "a.opus"
    sf.write(path, x, 48000, format="OGG", subtype="OPUS")
    y = load_audio(path, sample_rate=SR)
    assert y.dtype == np.float32 and abs(len(y) - SR) < 2048


def test_stereo_downmix_and_resample(tmp_path):
    left = make_test_signal(1.0, 22050, seed=3)
    right = make_test_signal(1.0, 22050, seed=4)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    y = load_audio(path, sample_rate=SR)
    expected = resample((left + right) / 2, orig_sample_rate=22050, sample_rate=SR)
    assert len(y) == 2 * len(left)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_offset_and_duration(tmp_path):
    x = make_test_signal(2.0, SR, seed=5)
    path = tmp_path / "a.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    y = load_audio(path, sample_rate=SR, offset=0.5, duration=1.0)
    np.testing.assert_array_equal(y, x[SR // 2: SR // 2 + SR])
    with pytest.raises(AudioError, match="past the end"):
        load_audio(path, sample_rate=SR, offset=5.0)


def test_bad_files_raise_audio_error_naming_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    nan = tmp_path / "nan.wav"
    x = make_test_signal(0.5, SR)
    x[100] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, make_test_signal(0.02, SR), SR)  # 882 samples < 2048
    for path, why in [(corrupt, "unreadable or corrupt"), (empty, "zero length"), (nan, "non-finite"),
                      (short, "shorter than one analysis window"), (tmp_path / "missing.wav", "no such")]:
        with pytest.raises(AudioError, match=why) as info:
            load_audio(path, sample_rate=SR)
        assert str(path) in str(info.value)


def test_silence_is_legal(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    y = load_audio(path, sample_rate=SR)
    assert y.shape == (SR,) and not y.any()


def test_validate_waveform():
    x = validate_waveform(np.arange(4096, dtype=np.int16), sample_rate=SR)
    assert x.dtype == np.float32 and x.max() < 1.0
    with pytest.raises(AudioError, match=r"shape \(2, 4096\)"):
        validate_waveform(np.zeros((2, 4096)), sample_rate=SR)
    with pytest.raises(AudioError, match="empty"):
        validate_waveform(np.zeros(0), sample_rate=SR)
    with pytest.raises(AudioError, match="non-finite"):
        validate_waveform(np.full(4096, np.inf), sample_rate=SR, source="mine")
    with pytest.raises(AudioError, match="shorter"):
        validate_waveform(np.zeros(100), sample_rate=SR, min_samples=2048)


def test_find_audio_files(tmp_path):
    for rel in ["b/Song.MP3", "a/x.wav", "a/deep/y.FlAc", "c.ogg", "d.opus", "notes.txt", "cover.jpg",
                ".hidden/z.wav", "a/._junk.wav"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a/deep/y.FlAc", "a/x.wav", "b/Song.MP3", "c.ogg", "d.opus"]
    assert set(AUDIO_EXTENSIONS) == {".wav", ".flac", ".ogg", ".opus", ".mp3"}
    with pytest.raises(AudioError, match="no such"):
        find_audio_files(tmp_path / "nope")


def _seconds(spans):
    return [round((b - a) / SR, 4) for a, b in spans]


@pytest.mark.parametrize("seconds,expected", [
    (29.9, [29.9]),
    (30.0, [30.0]),
    (45.0, [22.5, 22.5]),
    (60.0, [30.0, 30.0]),
    (61.0, [30.0, 15.5, 15.5]),
    (80.0, [30.0, 30.0, 20.0]),
    (100.0, [30.0, 30.0, 20.0, 20.0]),
    (180.0, [30.0] * 6),
    (10.0, [10.0]),
])
def test_chunk_rule_edge_cases(seconds, expected):
    n = int(round(seconds * SR))
    spans = chunk_spans(n, sample_rate=SR)
    assert _seconds(spans) == pytest.approx(expected, abs=1e-4)


def test_chunk_rule_invariants(rng):
    for n in list(rng.integers(15 * SR, 600 * SR, size=300)) + [30 * SR + 1, 60 * SR + 1, 90 * SR - 1]:
        spans = chunk_spans(int(n), sample_rate=SR)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap, nothing dropped
        lengths = np.array([b - a for a, b in spans])
        assert lengths.max() <= 30 * SR and lengths.min() >= 15 * SR, (n, lengths / SR)


def test_chunk_by_frames_matches_paper_1294():
    hop = 1024
    spans = chunk_spans(3 * 60 * SR, sample_rate=SR, max_frames=1294, hop_length=hop)
    assert all(1 + (b - a) // hop <= 1294 for a, b in spans)
    assert max(1 + (b - a) // hop for a, b in spans) == 1294
    assert chunk_spans(1294 * hop - 1, sample_rate=SR, max_frames=1294, hop_length=hop) == [(0, 1294 * hop - 1)]
    assert len(chunk_spans(1294 * hop, sample_rate=SR, max_frames=1294, hop_length=hop)) == 2
    with pytest.raises(AudioError):
        chunk_spans(0, sample_rate=SR)


@pytest.mark.parametrize("seconds,rate,stereo,fmt,subtype", [
    (0.5, SR, False, "WAV", "PCM_16"),  # one short example
    (3.0, SR, False, "WAV", "PCM_16"),  # two halves
    (4.0, SR, True, "FLAC", "PCM_24"),  # exactly 2 L
    (6.1, SR, False, "WAV", "FLOAT"),  # 2 + 2 + 1.05 + 1.05
    (13.0, 22050, True, "FLAC", "PCM_16"),  # resampled up, many chunks
    (9.3, 48000, False, "WAV", "PCM_16"),  # resampled down
    (7.0, 32000, False, "OGG", "VORBIS"),
])
@pytest.mark.parametrize("block_frames", [1000, 4096, 1 << 18])
def test_audio_chunks_stream_equals_whole_file(tmp_path, seconds, rate, stereo, fmt, subtype, block_frames):
    x = make_test_signal(seconds, rate, seed=1)
    if stereo:
        x = np.stack([x, make_test_signal(seconds, rate, seed=2)], axis=1)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    y = load_audio(path, sample_rate=SR)
    reader = AudioChunks(path, sample_rate=SR, max_seconds=2.0, block_frames=block_frames)
    got = list(reader)
    assert [(a, b) for a, b, _ in got] == chunk_spans(len(y), sample_rate=SR, max_seconds=2.0)
    for a, b, c in got:
        assert c.dtype == np.float32 and c.flags.c_contiguous
        np.testing.assert_array_equal(c, y[a:b])  # bit for bit, also when resampling
    assert reader.n_samples == len(y) and reader.file_sample_rate == rate and reader.warning is None


def test_audio_chunks_memory_does_not_grow_with_the_file(tmp_path):
    """Streaming holds about two examples (plus a block), not the file: 300 s at 8 kHz is 9.6 MB as
    float32; with 2 s examples the traced peak stays far below that, and full examples leave
    before the end of the file is read."""
    import tracemalloc

    rate = 8000
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as fh:
        for k in range(30):
            fh.write(make_test_signal(10.0, rate, seed=k))
    tracemalloc.start()
    try:
        reader = AudioChunks(path, sample_rate=rate, max_seconds=2.0, block_frames=4096)
        n_chunks = 0
        for a, b, c in reader:
            n_chunks += 1
            assert b - a == 2 * rate
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_chunks == 150 and reader.n_samples == 300 * rate
    assert peak < 1_000_000, peak  # the whole file would be 9.6 MB


def test_chunk_rule_refuses_non_finite_lengths():
    for bad in (float("nan"), float("inf"), 0.0, -2.0):
        with pytest.raises(ConfigError, match="max_seconds"):
            chunk_spans(10 * SR, sample_rate=SR, max_seconds=bad)
    with pytest.raises(ConfigError, match="sample_rate"):
        chunk_spans(10 * SR, sample_rate=1)
