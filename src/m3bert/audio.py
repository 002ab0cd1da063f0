"""Audio loading, validation and the paper's chunking rule.

Everything downstream (features, embedding, benchmarks) receives audio through
:func:`load_audio` or :func:`validate_waveform`, so the checks live here once: a waveform that
leaves this module is mono float32, finite, non-empty and at least ``min_samples`` long.
Silence is legal (the feature sets keep it finite).

Decoding uses libsndfile (via ``soundfile``), which reads WAV, FLAC, OGG/Vorbis, OGG/Opus and
MP3 (libsndfile >= 1.1). Resampling uses soxr at "HQ" quality, the same resampler librosa uses
by default, so a file decoded here and one decoded by ``librosa.load`` agree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from m3bert.core.errors import AudioError, ConfigError

#: File extensions :func:`find_audio_files` picks up (compared case-insensitively).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".opus", ".mp3")

#: Default shortest waveform accepted: one analysis window of the M3BERT features (n_fft 2048).
DEFAULT_MIN_SAMPLES = 2048


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files under ``root`` (recursive), sorted by path; a file path returns itself.

    Hidden files and folders (names starting with ".") are skipped: they are usually editor or
    OS debris (``._song.mp3`` on macOS) and never music.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise AudioError(f"{root}: no such file or folder (expected a folder of audio files)")
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.as_posix())


def validate_waveform(x: Any, *, sample_rate: int, min_samples: int = DEFAULT_MIN_SAMPLES,
                      source: str = "<array>") -> np.ndarray:
    """Check an in-memory waveform and return it as contiguous float32 ``(n_samples,)``.

    Accepts ``(n_samples,)`` only; multichannel audio must be downmixed by the caller (the
    loader does it) so that a transposed ``(n_samples, channels)`` array is never silently
    averaged the wrong way.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{source}: sample_rate must be a positive integer, got {sample_rate!r}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise AudioError(f"{source}: cannot be read as an array ({exc})") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise AudioError(f"{source}: expected a real-valued waveform, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise AudioError(f"{source}: expected a mono waveform of shape (n_samples,), got shape {arr.shape}")
    if arr.size == 0:
        raise AudioError(f"{source}: waveform is empty (0 samples)")
    if np.issubdtype(arr.dtype, np.integer):
        # integer PCM: scale to [-1, 1) the way soundfile does
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise AudioError(f"{source}: waveform has {n_bad} non-finite sample(s) (NaN or inf); expected finite values")
    if arr.size < min_samples:
        raise AudioError(f"{source}: {arr.size} samples ({arr.size / sample_rate * 1000:.1f} ms at {sample_rate} Hz) "
                         f"is shorter than one analysis window ({min_samples} samples)")
    return arr


def resample(x: np.ndarray, *, orig_sample_rate: int, sample_rate: int) -> np.ndarray:
    """soxr "HQ" resampling of ``(n_samples,)`` float32 (librosa's default resampler)."""
    if int(orig_sample_rate) == int(sample_rate):
        return np.ascontiguousarray(x, dtype=np.float32)

    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), int(orig_sample_rate), int(sample_rate), quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


def load_audio(path: str | os.PathLike, *, sample_rate: int, offset: float = 0.0, duration: float | None = None,
               min_samples: int = DEFAULT_MIN_SAMPLES) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``; ``(n_samples,)``.

    ``offset`` and ``duration`` (seconds, in the file's own time line) select a stretch without
    decoding the rest. Raises :class:`AudioError` naming the file when it cannot be read, has no
    samples, contains NaN/inf, or is shorter than ``min_samples`` after resampling.
    """

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioError(f"{path}: offset must be >= 0 and duration > 0, got offset={offset}, duration={duration}")
    try:
        with sf.SoundFile(str(path)) as fh:
            file_rate = int(fh.samplerate)
            start = int(round(offset * file_rate))
            n_total = fh.frames
            if start:
                if start >= n_total > 0:
                    raise AudioError(f"{path}: offset {offset:.3f} s is past the end of the file "
                                     f"({n_total / file_rate:.3f} s)")
                fh.seek(start)
            n_read = -1 if duration is None else int(round(duration * file_rate))
            data = fh.read(frames=n_read, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: unreadable or corrupt audio file ({_short(exc)})") from exc
    if data.size == 0:
        raise AudioError(f"{path}: file has no audio samples (zero length)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        n_bad = int((~np.isfinite(mono)).sum())
        raise AudioError(f"{path}: {n_bad} non-finite sample(s) (NaN or inf); expected finite audio")
    mono = resample(mono, orig_sample_rate=file_rate, sample_rate=sample_rate)
    return validate_waveform(mono, sample_rate=sample_rate, min_samples=min_samples, source=str(path))


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[-1] if msg else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Chunking (paper, "Dataset curation and preprocessing")
# ---------------------------------------------------------------------------------------------

def chunk_spans(n_samples: int, *, sample_rate: int, max_seconds: float = 30.0, max_frames: int | None = None,
                hop_length: int | None = None) -> list[tuple[int, int]]:
    """Split a track of ``n_samples`` into examples ``[(start, stop), ...]`` (sample indices).

    The rule of Greer et al. (2023), with ``L`` the longest example (30 s by default):

    * ``n <= L``: one example, the whole track.
    * ``L < n <= 2L``: two equal halves without overlap (each between L/2 and L).
    * ``n > 2L``: consecutive full-length chunks of ``L`` from the start. The tail that is left
      over is handled so that every chunk stays between L/2 and L (15-30 s): a tail of at least
      L/2 is kept as its own chunk; a shorter tail is merged with the last full chunk and that
      stretch (between L and 1.5 L) is split into two equal halves, which is the paper's own
      30-60 s rule applied to the end of the track. No audio is dropped and nothing overlaps.
      Examples: 61 s -> 30 + 15.5 + 15.5; 80 s -> 30 + 30 + 20; 100 s -> 30 + 30 + 20 + 20;
      180 s -> 6 x 30.

    Tracks shorter than L/2 stay one (short) example: dropping them would lose whole songs.

    ``L`` is ``max_seconds`` or, if ``max_frames`` is given (with ``hop_length``), the largest
    sample count whose centred frame count ``1 + n // hop_length`` is at most ``max_frames``
    (``max_frames=1294, hop_length=1024`` -> 1,325,055 samples, ~30.05 s at 44.1 kHz, the
    paper's 1294 frames). 30.000 s gives 1292 frames at hop 1024.
    """
    n_samples = int(n_samples)
    if n_samples <= 0:
        raise AudioError(f"cannot chunk a track of {n_samples} samples; expected at least 1")
    if max_frames is not None:
        if not hop_length or hop_length <= 0 or max_frames < 1:
            raise ConfigError(f"chunk_spans: max_frames={max_frames} needs a positive hop_length, got {hop_length}")
        max_len = int(max_frames) * int(hop_length) - 1
    else:
        if not max_seconds or max_seconds <= 0:
            raise ConfigError(f"chunk_spans: max_seconds must be > 0, got {max_seconds}")
        max_len = int(math.floor(max_seconds * sample_rate + 1e-9))
    min_len = (max_len + 1) // 2  # a half of L rounds up, so halves of a L+1 .. 2L track qualify
    if n_samples <= max_len:
        return [(0, n_samples)]
    if n_samples <= 2 * max_len:
        return _halves(0, n_samples)
    n_full, tail = divmod(n_samples, max_len)
    spans = [(i * max_len, (i + 1) * max_len) for i in range(n_full)]
    if tail == 0:
        return spans
    if tail >= min_len:
        return spans + [(n_full * max_len, n_samples)]
    last_start = spans.pop()[0]
    return spans + _halves(last_start, n_samples)


def _halves(start: int, stop: int) -> list[tuple[int, int]]:
    mid = start + (stop - start + 1) // 2
    return [(start, mid), (mid, stop)]
