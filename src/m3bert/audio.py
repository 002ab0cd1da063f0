"""Audio loading, validation and the paper's chunking rule.

Everything downstream (features, embedding, benchmarks) receives audio through
:func:`load_audio`, :class:`AudioChunks` or :func:`validate_waveform`, so the checks live here
once: a waveform that leaves this module is mono float32, finite, of plausible magnitude
(``|x| <= MAX_ABS_AMPLITUDE``), non-empty and at least ``min_samples`` long, at a plausible
sample rate (an integer in ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``; :func:`check_sample_rate` is the
one check, applied to every rate that enters: arguments, file headers, waveforms). Silence is
legal (the feature sets keep it finite).

Decoding uses libsndfile (via ``soundfile``), which reads WAV, FLAC, OGG/Vorbis, OGG/Opus and
MP3 (libsndfile >= 1.1). Resampling uses soxr at "HQ" quality, the same resampler librosa uses
by default, so a file decoded here and one decoded by ``librosa.load`` agree.

Long files: :class:`AudioChunks` streams a file as the examples of the 30 s rule, holding about
two examples of audio at a time, whatever the file's length. It reads fixed blocks and resamples
them with soxr's streaming resampler, whose output is bit for bit that of a one-shot
``soxr.resample`` of the whole file, so its chunks equal ``load_audio`` + ``chunk_spans`` exactly
(at the file's own rate and when resampling) for WAV, FLAC, OGG/Vorbis and Opus. MP3 is the one
exception: libsndfile's mpg123 decoder rounds the last bit of a sample differently depending on
where a read request ends (measured: up to 1 ulp, 1.2e-7, on samples after the first block; the
same call pattern always gives the same numbers), so a streamed MP3 can differ from a whole-file
decode at that level.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr

from m3bert.core.errors import AudioError, ConfigError, M3bertError

#: File extensions :func:`find_audio_files` picks up (compared case-insensitively).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".opus", ".mp3")

#: Default shortest waveform accepted: one analysis window of the M3BERT features (n_fft 2048).
DEFAULT_MIN_SAMPLES = 2048

#: Plausible sample rates in Hz (inclusive): 4 kHz (narrow-band speech) to 384 kHz (the highest
#: common studio rate). A header outside it is corrupt; resampling from 1 Hz would ask for billions
#: of samples.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000

#: Largest sample magnitude accepted. Audio is nominally in [-1, 1]; the limit admits unscaled
#: integer PCM passed as floats (up to 2^31) and is 10^5 below where float32 spectra overflow
#: (~1e15), so features stay finite. Float files with values like 1e30 are corrupt.
MAX_ABS_AMPLITUDE = 1e10

#: A file whose decoded length is below this fraction of the length its header declares (and at
#: least ``TRUNCATION_MIN_SECONDS`` short) is reported as probably truncated.
TRUNCATION_RATIO = 0.9
TRUNCATION_MIN_SECONDS = 0.1

#: Frames read per block when streaming (:class:`AudioChunks`): ~6 s at 44.1 kHz.
STREAM_BLOCK_FRAMES = 1 << 18


def check_sample_rate(value: Any, *, what: str = "sample_rate", error: type[M3bertError] = ConfigError) -> int:
    """The one validation of a sample rate: an integer number of Hz in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.

    Accepts Python/numpy integers and floats with an integral value (``44100.0``); a fractional
    rate (``1.5``) is refused, never truncated. ``what`` names the argument or file in the message;
    ``error`` is the exception type (``ConfigError`` for arguments, ``AudioError`` for audio).
    """
    rate: int | None = None
    if isinstance(value, (bool, np.bool_)):
        rate = None
    elif isinstance(value, (int, np.integer)):
        rate = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        rate = int(value)
    if rate is None or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise error(f"{what} must be an integer number of Hz in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}, got {value!r}")
    return rate


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files under ``root`` (recursive), sorted by path; a file path returns itself.

    Hidden files and folders (names starting with ".") are skipped: they are usually editor or
    OS debris (``._song.mp3`` on macOS) and never music. Names that are not valid UTF-8 come back
    as ``os.fsdecode`` gives them (undecodable bytes as surrogate escapes) and open normally.
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
    sample_rate = check_sample_rate(sample_rate, what=f"{source}: sample_rate", error=AudioError)
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
    _check_values(arr, source=source, sample_rate=sample_rate, first_sample=0)
    if arr.size < min_samples:
        raise AudioError(f"{source}: {arr.size} samples ({arr.size / sample_rate * 1000:.1f} ms at {sample_rate} Hz) "
                         f"is shorter than one analysis window ({min_samples} samples)")
    return arr


def _check_values(x: np.ndarray, *, source: str, sample_rate: int, first_sample: int) -> None:
    """Finite and of plausible magnitude (``x`` float32 mono; ``first_sample`` places it in the file)."""
    finite = np.isfinite(x)
    if not finite.all():
        n_bad = int((~finite).sum())
        at = (first_sample + int(np.argmin(finite))) / sample_rate
        raise AudioError(f"{source}: {n_bad} non-finite sample(s) (NaN or inf), the first at {at:.3f} s; "
                         f"expected finite audio")
    if x.size:
        peak_i = int(np.argmax(np.abs(x)))
        peak = float(abs(x[peak_i]))
        if peak > MAX_ABS_AMPLITUDE:
            raise AudioError(f"{source}: sample magnitude {peak:.3g} at {(first_sample + peak_i) / sample_rate:.3f} s "
                             f"is not audio (expected about [-1, 1], at most {MAX_ABS_AMPLITUDE:.0e}); "
                             f"the file or array is corrupt or wrongly scaled")


def resample(x: np.ndarray, *, orig_sample_rate: int, sample_rate: int) -> np.ndarray:
    """soxr "HQ" resampling of ``(n_samples,)`` float32 (librosa's default resampler)."""
    orig = check_sample_rate(orig_sample_rate, what="resample: orig_sample_rate")
    target = check_sample_rate(sample_rate, what="resample: sample_rate")
    if orig == target:
        return np.ascontiguousarray(x, dtype=np.float32)

    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), orig, target, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def _as_path(path: str | bytes | os.PathLike) -> Path:
    return Path(os.fsdecode(path))


def _open_sound(path: Path) -> sf.SoundFile:
    """Open ``path`` for reading with a clear :class:`AudioError` when it is missing, empty,
    unreadable, or declares an implausible sample rate."""
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"{path}: unreadable ({_short(exc)})") from exc
    if size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); expected an audio file")
    name: str | bytes = str(path)
    try:
        str(name).encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:  # a name that is not valid UTF-8: hand libsndfile the raw bytes
        name = os.fsencode(path)
    try:
        fh = sf.SoundFile(name)
    except Exception as exc:
        raise AudioError(f"{path}: unreadable or corrupt audio file ({_short(exc)})") from exc
    try:
        check_sample_rate(fh.samplerate, what=f"{path}: sample rate in the file header", error=AudioError)
        if fh.channels < 1:
            raise AudioError(f"{path}: header declares {fh.channels} channels; expected at least 1")
    except BaseException:
        fh.close()
        raise
    return fh


_WAV_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BLOCK_ALIGN = re.compile(r"Block Align\s*:\s*(\d+)")


def _declared_frames(fh: sf.SoundFile) -> int:
    """The frame count the file's header declares. libsndfile reports a truncated WAV's frames from
    the bytes present; its log keeps the declared data size ("data : N (should be M)")."""
    frames = int(fh.frames)
    try:
        info = fh.extra_info
    except Exception:  # pragma: no cover - informational only
        return frames
    m, b = _WAV_DATA.search(info), _BLOCK_ALIGN.search(info)
    if m and b and int(b.group(1)) > 0:
        declared_bytes = int(m.group(1))
        if 0 < declared_bytes < 0x7FFFFFFF:  # 0 / 0xFFFFFFFF: a streamed WAV that never learnt its size
            frames = max(frames, declared_bytes // int(b.group(1)))
    return frames


def truncation_warning(path: str | os.PathLike, *, decoded_frames: int, declared_frames: int,
                       sample_rate: int) -> str | None:
    """A message when ``decoded_frames`` is well below what the header declared (a file cut short)."""
    short = int(declared_frames) - int(decoded_frames)
    if declared_frames > 0 and decoded_frames < TRUNCATION_RATIO * declared_frames \
            and short >= TRUNCATION_MIN_SECONDS * sample_rate:
        return (f"{path}: decoded {decoded_frames / sample_rate:.2f} s but its header declares "
                f"{declared_frames / sample_rate:.2f} s; the file is probably truncated (cut short)")
    return None


def _mono_block(data: np.ndarray, *, path: Path, sample_rate: int, first_frame: int) -> np.ndarray:
    """``(frames, channels)`` float32 -> checked mono ``(frames,)`` float32."""
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    _check_values(mono, source=str(path), sample_rate=sample_rate, first_sample=first_frame)
    return mono


def load_audio(path: str | os.PathLike, *, sample_rate: int, offset: float = 0.0, duration: float | None = None,
               min_samples: int = DEFAULT_MIN_SAMPLES) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``; ``(n_samples,)``.

    ``offset`` and ``duration`` (seconds, in the file's own time line) select a stretch without
    decoding the rest. Raises :class:`AudioError` naming the file when it cannot be read, is empty,
    declares an implausible sample rate, has no samples, contains NaN/inf or implausible values,
    or is shorter than ``min_samples`` after resampling; any other decoder failure becomes an
    ``AudioError`` too. A file much shorter than its header declares (cut short) decodes with a
    ``UserWarning``. ``sample_rate`` must pass :func:`check_sample_rate` (``ConfigError``).
    """
    path = _as_path(path)
    sample_rate = check_sample_rate(sample_rate, what=f"load_audio({path}): sample_rate")
    if not (math.isfinite(offset) and offset >= 0) or (duration is not None and not (math.isfinite(duration)
                                                                                       and duration > 0)):
        raise AudioError(f"{path}: offset must be >= 0 and duration > 0 (finite), got offset={offset}, "
                         f"duration={duration}")
    try:
        with _open_sound(path) as fh:
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
            to_end = n_read < 0 or start + n_read >= n_total
            declared = _declared_frames(fh) if to_end else 0
        if data.size == 0:
            raise AudioError(f"{path}: file has no audio samples (zero length)")
        mono = _mono_block(data, path=path, sample_rate=file_rate, first_frame=start)
        del data
        warning = truncation_warning(path, decoded_frames=start + mono.size, declared_frames=declared,
                                     sample_rate=file_rate) if to_end else None
        mono = resample(mono, orig_sample_rate=file_rate, sample_rate=sample_rate)
        y = validate_waveform(mono, sample_rate=sample_rate, min_samples=min_samples, source=str(path))
    except AudioError:
        raise
    except Exception as exc:  # whatever the decoder or resampler raised: name the file
        raise AudioError(f"{path}: unreadable or corrupt audio file ({type(exc).__name__}: {_short(exc)})") from exc
    if warning:
        warnings.warn(warning, stacklevel=2)
    return y


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[-1] if msg else type(exc).__name__


class AudioChunks:
    """Stream a file as the examples of the 30 s rule, ``(start, stop, waveform)`` at ``sample_rate``.

    ``for start, stop, y in AudioChunks(path, sample_rate=44100, max_seconds=30.0): ...`` yields,
    bit for bit, ``(a, b, load_audio(path, sample_rate=...)[a:b])`` for ``(a, b)`` in
    ``chunk_spans(n_samples, ...)``, but reads the file in blocks and keeps at most about two
    examples (plus one block) of audio in memory, so memory does not grow with the file's length.
    (MP3: equal up to the decoder's last-bit rounding, see the module docstring.)

    How: an example ``[k L, (k+1) L)`` of the rule is final once more than ``(k + 2) L`` samples
    are known (only the last one or two examples depend on the total length), so full examples
    leave as soon as that holds; the rest follow at the end of the file. Resampling uses
    ``soxr.ResampleStream``, identical to one-shot ``soxr.resample`` of the whole file.

    After the iteration: ``n_samples`` (the total at ``sample_rate``), ``file_sample_rate`` and
    ``warning`` (a truncation warning, see :func:`truncation_warning`, or ``None``). Every failure
    is an :class:`AudioError` naming the file.
    """

    def __init__(self, path: str | os.PathLike, *, sample_rate: int, max_seconds: float = 30.0,
                 max_frames: int | None = None, hop_length: int | None = None,
                 min_samples: int = DEFAULT_MIN_SAMPLES, block_frames: int = STREAM_BLOCK_FRAMES) -> None:
        self.path = _as_path(path)
        self.sample_rate = check_sample_rate(sample_rate, what=f"AudioChunks({self.path}): sample_rate")
        self.max_len = _max_len(self.sample_rate, max_seconds=max_seconds, max_frames=max_frames,
                                hop_length=hop_length)
        self.max_seconds, self.max_frames, self.hop_length = max_seconds, max_frames, hop_length
        self.min_samples = int(min_samples)
        self.block_frames = max(1, int(block_frames))
        self.n_samples: int | None = None
        self.file_sample_rate: int | None = None
        self.warning: str | None = None

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        try:
            yield from self._chunks()
        except AudioError:
            raise
        except Exception as exc:  # decoder/resampler failures mid-file: name the file
            raise AudioError(f"{self.path}: unreadable or corrupt audio file "
                             f"({type(exc).__name__}: {_short(exc)})") from exc

    def _chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        path, L = self.path, self.max_len
        parts: list[np.ndarray] = []  # output samples from buf_start on
        buf_start = n_out = n_in = 0
        emitted: list[tuple[int, int]] = []
        with _open_sound(path) as fh:
            file_rate = self.file_sample_rate = int(fh.samplerate)
            stream = None if file_rate == self.sample_rate else soxr.ResampleStream(
                file_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
            while True:
                data = fh.read(frames=self.block_frames, dtype="float32", always_2d=True)
                eof = data.shape[0] == 0
                if not eof:
                    mono = _mono_block(data, path=path, sample_rate=file_rate, first_frame=n_in)
                    n_in += mono.shape[0]
                    y = mono if stream is None else stream.resample_chunk(mono, last=False)
                elif stream is not None:
                    y = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                else:
                    y = np.zeros(0, dtype=np.float32)
                del data
                if y.size:
                    parts.append(np.ascontiguousarray(y, dtype=np.float32))
                    n_out += y.size
                while n_out > buf_start + 2 * L:  # [buf_start, buf_start + L) can no longer change
                    emitted.append((buf_start, buf_start + L))
                    yield buf_start, buf_start + L, _pop_front(parts, L)
                    buf_start += L
                if eof:
                    break
            declared = _declared_frames(fh)
        if n_in == 0:
            raise AudioError(f"{path}: file has no audio samples (zero length)")
        self.n_samples = n_out
        self.warning = truncation_warning(path, decoded_frames=n_in, declared_frames=declared, sample_rate=file_rate)
        spans = chunk_spans(n_out, sample_rate=self.sample_rate, max_seconds=self.max_seconds,
                            max_frames=self.max_frames, hop_length=self.hop_length) if n_out else []
        if spans[:len(emitted)] != emitted:  # pragma: no cover - guards the finality argument above
            raise AudioError(f"{path}: internal error: streamed chunks {emitted[:3]}... differ from the rule's {spans[:3]}")
        if not emitted:  # the whole file is in the buffer: the same checks as load_audio
            whole = _pop_front(parts, n_out) if n_out else np.zeros(0, dtype=np.float32)
            validate_waveform(whole, sample_rate=self.sample_rate, min_samples=self.min_samples, source=str(path))
            parts = [whole]
        for a, b in spans[len(emitted):]:
            yield a, b, _pop_front(parts, b - a)


def _pop_front(parts: list[np.ndarray], count: int) -> np.ndarray:
    """Remove and return the first ``count`` samples of the blocks in ``parts`` (one new array)."""
    out: list[np.ndarray] = []
    need = count
    while need:
        p = parts[0]
        if p.shape[0] <= need:
            out.append(parts.pop(0))
            need -= p.shape[0]
        else:
            out.append(p[:need])
            parts[0] = p[need:]
            need = 0
    return np.concatenate(out) if len(out) != 1 else np.array(out[0], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Chunking (paper, "Dataset curation and preprocessing")
# ---------------------------------------------------------------------------------------------

def _max_len(sample_rate: int, *, max_seconds: float, max_frames: int | None, hop_length: int | None) -> int:
    """``L``, the longest example in samples (see :func:`chunk_spans`)."""
    if max_frames is not None:
        if not hop_length or hop_length <= 0 or max_frames < 1:
            raise ConfigError(f"chunk_spans: max_frames={max_frames} needs a positive hop_length, got {hop_length}")
        return int(max_frames) * int(hop_length) - 1
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float, np.number)) \
            or not math.isfinite(max_seconds) or not max_seconds > 0:
        raise ConfigError(f"chunk_spans: max_seconds must be a finite number > 0, got {max_seconds!r}")
    max_len = int(math.floor(max_seconds * sample_rate + 1e-9))
    if max_len < 1:
        raise ConfigError(f"chunk_spans: max_seconds={max_seconds} is less than one sample at {sample_rate} Hz")
    return max_len


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
    sample_rate = check_sample_rate(sample_rate, what="chunk_spans: sample_rate")
    max_len = _max_len(sample_rate, max_seconds=max_seconds, max_frames=max_frames, hop_length=hop_length)
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
