"""Long inputs in bounded memory: features block by block, equal bit for bit to the whole-input features.

The :class:`~m3bert.embed.Embedder` computes the features of a whole input in one go (one
continuous STFT, no seams), which costs memory in proportion to the input's length (~70 MB per
minute of audio: waveform, spectrograms, CQT octaves). Inputs longer than
:data:`STREAM_SECONDS` are instead decoded in blocks (:class:`m3bert.audio.AudioChunks`) and
featurised block by block by :class:`BlockFeatures`, which yields exactly the frames the
whole-input extraction gives (tested with ``assert_array_equal``), so memory is bounded by the
block and results do not change. How each group is made exact (``m3bert324``, fast backend):

* chroma, MFCC, delta-MFCC and log-mel are per frame except for two things: a frame reads
  ``n_fft / 2`` samples either side and the delta ``delta_width // 2`` frames either side, so a
  segment of frames ``[f0, f1)`` is computed from the samples of a hop-aligned stretch with that
  much context on both sides and cropped (the STFT frames are then the same numbers); and the
  MFCC's ``power_to_db(top_db=80)`` floors every value at *the clip's* loudest mel value minus
  80 dB, a whole-input statistic. A first pass over the input finds the loudest mel frame (its
  ``n_fft`` samples); the second pass appends a copy of those samples to every segment (after the
  right context, or before the left context of the final segment, so the input's own edges keep
  their frames), so each segment's loudest value is the input's and the floor is the same. A
  segment whose loudest value then differs from the input's (a partial frame at a segment edge
  louder than every real frame: not seen in practice, but possible) raises
  :class:`StreamMismatch` and the caller falls back to the whole-input path.
* the CQT (librosa's multirate algorithm, :mod:`m3bert.features.cqt`) is not local in that sense:
  every octave is computed on a signal halved by soxr, whose output depends on where the signal
  starts. ``soxr.ResampleStream`` fed in blocks gives, bit for bit, one-shot ``soxr.resample``'s
  output, so :class:`CqtStream` runs one streaming resampler per octave and computes each octave's
  STFT frames as soon as their samples are known. (Cutting the input into overlapping blocks
  instead leaves a relative error of ~1e-6 in ``|C|`` whatever the overlap, which the log turns
  into differences up to ~2 in near-silent bins.)

Feature sets other than ``m3bert324`` with a fixed ``tuning`` and the ``literal`` CQT (a per-input
tuning estimate is a whole-input statistic; the ``chroma1008`` CQT has no fast path) are not
streamed (:func:`can_stream`): their long inputs are featurised whole, as before.

The first pass decodes the input once more; inputs up to :data:`KEEP_SECONDS` keep the first
pass's waveform for the second instead of decoding it again.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import soxr
import torch

from m3bert.audio import AudioChunks
from m3bert.core.errors import AudioError, DataError
from m3bert.features import cqt, fast
from m3bert.features.m3bert324 import M3bert324
from m3bert.features.reference import log_compress

__all__ = ["STREAM_SECONDS", "KEEP_SECONDS", "SEGMENT_FRAMES", "can_stream", "stream_samples", "open_file",
           "array_chunks", "BlockFeatures", "CqtStream", "StreamMismatch"]

#: Inputs longer than this (seconds at the model's rate) are decoded and featurised in blocks;
#: shorter ones whole, exactly as before. Also the decoding block (:class:`m3bert.audio.AudioChunks`).
STREAM_SECONDS = 60.0
#: A streamed input up to this long keeps its decoded waveform between the two passes.
KEEP_SECONDS = 480.0
#: Frames per STFT segment (~24 s at hop 1024): the unit of feature work and its peak memory.
SEGMENT_FRAMES = 1024


class StreamMismatch(Exception):
    """A streamed segment would not equal the whole-input features; the caller featurises whole."""


def can_stream(feature_set: Any) -> bool:
    """Whether :class:`BlockFeatures` reproduces ``feature_set.extract`` exactly for it."""
    cfg = getattr(feature_set, "config", None)
    return (isinstance(feature_set, M3bert324) and cfg is not None and cfg.tuning is not None
            and cfg.cqt_variant == "literal" and fast.FAST_CQT.get("literal") is cqt.literal_cqt_batch)


def stream_samples(sample_rate: int) -> int:
    """Length in samples above which an input is streamed (the longest single :class:`AudioChunks` block)."""
    return int(math.floor(STREAM_SECONDS * sample_rate + 1e-9))


# ---------------------------------------------------------------------------------------------
# Sources: a file (decoded as it goes) or an in-memory waveform
# ---------------------------------------------------------------------------------------------


def open_file(path: Any, *, sample_rate: int, min_samples: int) -> tuple[np.ndarray | None, Any]:
    """Decode ``path`` at ``sample_rate``: ``(waveform, None)`` when it is at most
    :data:`STREAM_SECONDS` long (the samples of ``load_audio``, bit for bit), else
    ``(None, chunks)``, a source for :class:`BlockFeatures` that reads the file as it goes.
    Every decoding failure is an ``AudioError`` naming the file (:class:`m3bert.audio.AudioChunks`)."""

    def reader() -> AudioChunks:
        return AudioChunks(path, sample_rate=sample_rate, max_seconds=STREAM_SECONDS, min_samples=min_samples)

    first_reader = reader()
    it = iter(first_reader)
    _, _, first = next(it)
    second = next(it, None)
    if second is None:
        _warn(first_reader.warning)
        return first, None
    keep = int(KEEP_SECONDS * sample_rate)
    return None, _FileChunks([first, second[2]], it, first_reader, reader, keep)


def array_chunks(x: np.ndarray, sample_rate: int) -> Callable[[], Iterator[np.ndarray]]:
    """A :class:`BlockFeatures` source over an in-memory waveform (blocks of :data:`STREAM_SECONDS`)."""
    n = stream_samples(sample_rate)
    return lambda: (x[i: i + n] for i in range(0, x.size, n))


class _FileChunks:
    """The blocks of a file for two passes: the first continues the reader that told the file is
    long (and keeps its blocks when the file is at most ``keep`` samples), the second re-reads."""

    def __init__(self, head: list[np.ndarray], rest: Iterator[Any], first_reader: AudioChunks,
                 reader: Callable[[], AudioChunks], keep: int) -> None:
        self._first_pass: tuple[list[np.ndarray], Iterator[Any], AudioChunks] | None = (head, rest, first_reader)
        self._reader, self._keep = reader, keep
        self._kept: list[np.ndarray] | None = None

    def __call__(self) -> Iterator[np.ndarray]:
        if self._first_pass is not None:
            head, rest, first_reader = self._first_pass
            self._first_pass = None
            return self._first(head, rest, first_reader)
        if self._kept is not None:
            kept, self._kept = self._kept, None
            return iter(kept)
        return (y for _, _, y in self._reader())

    def _first(self, head: list[np.ndarray], rest: Iterator[Any], first_reader: AudioChunks) -> Iterator[np.ndarray]:
        kept: list[np.ndarray] | None = []
        n = 0
        for y in itertools.chain(_drain(head), (y for _, _, y in rest)):
            n += y.size
            if kept is not None:
                if n <= self._keep:
                    kept.append(y)
                else:
                    kept = None
            yield y
        _warn(first_reader.warning)
        self._kept = kept


def _drain(blocks: list[np.ndarray]) -> Iterator[np.ndarray]:
    """The blocks of a list, letting go of each as it is handed out."""
    while blocks:
        yield blocks.pop(0)


def _warn(message: str | None) -> None:
    if message:
        warnings.warn(message, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Segments of a sample stream (hop-aligned, with context)
# ---------------------------------------------------------------------------------------------


class _Segment:
    __slots__ = ("samples", "start", "f0", "f1", "first", "last")

    def __init__(self, samples: np.ndarray, start: int, f0: int, f1: int, first: bool, last: bool) -> None:
        self.samples, self.start, self.f0, self.f1, self.first, self.last = samples, start, f0, f1, first, last


class _Segmenter:
    """Cut a sample stream into segments for frames ``[f0, f1)`` (``frames`` at a time) with
    ``context`` samples (a multiple of ``hop``) either side where the input has them."""

    def __init__(self, *, hop: int, frames: int, context: int) -> None:
        self.hop, self.frames, self.context = hop, frames, context
        self.buf = np.zeros(0, dtype=np.float32)
        self.base = 0  # input index of buf[0]
        self.total = 0  # samples received
        self.f0 = 0  # next frame to cover

    def _segment(self, f1: int, stop: int, last: bool) -> _Segment:
        a = max(0, self.f0 * self.hop - self.context)
        seg = _Segment(self.buf[a - self.base: stop - self.base], a, self.f0, f1, a == 0, last)
        self.f0 = f1
        drop = max(0, self.f0 * self.hop - self.context) - self.base
        if drop > 0:
            self.buf = self.buf[drop:]
            self.base += drop
        return seg

    def feed(self, y: np.ndarray, last: bool) -> list[_Segment]:
        if y.size:
            self.buf = np.concatenate([self.buf, y])
            self.total += y.size
        out = []
        hop, ctx = self.hop, self.context
        n_frames = 1 + self.total // hop if last else None
        while True:
            f1 = self.f0 + self.frames
            stop = f1 * hop + ctx
            if last:
                if self.f0 >= n_frames:
                    break
                if stop >= self.total or f1 >= n_frames:  # the rest touches the end: one final segment
                    out.append(self._segment(n_frames, self.total, True))
                    break
            elif stop > self.total:
                break
            out.append(self._segment(f1, stop, False))
        if last:
            self.buf = np.zeros(0, dtype=np.float32)
        return out


def _context(cfg: Any, *, delta: bool) -> int:
    """Samples of context (a multiple of the hop) that make a segment's kept STFT frames exact."""
    frames = math.ceil((cfg.n_fft // 2 + cfg.n_fft % 2) / cfg.hop_length)
    if delta:
        frames += cfg.delta_width // 2 + 1
    return frames * cfg.hop_length


# ---------------------------------------------------------------------------------------------
# The CQT as a stream
# ---------------------------------------------------------------------------------------------


class _Halver:
    """Streaming ``cqt``'s ``_halve``: soxr ``factor -> 1`` (soxr_hq), trimmed or zero-padded to
    ``ceil(n / factor)`` at the end, times ``sqrt(factor)``; bit for bit the one-shot version."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.n_in = self.n_out = 0
        self.stream = soxr.ResampleStream(factor, 1, 1, dtype="float32", quality="soxr_hq")

    def feed(self, y: np.ndarray, last: bool) -> np.ndarray:
        self.n_in += y.size
        z = self.stream.resample_chunk(np.ascontiguousarray(y, dtype=np.float32), last=last)
        if last:
            extra = self.n_out + z.size - int(np.ceil(self.n_in / self.factor))
            z = z[: z.size - extra] if extra > 0 else np.concatenate([z, np.zeros(-extra, dtype=z.dtype)])
        self.n_out += z.size
        return (z * np.sqrt(self.factor)).astype(np.float32, copy=False)


class CqtStream:
    """``cqt.cqt_magnitude`` of a sample stream: ``feed(block, last)`` returns the ``(n_bins, k)``
    frames that became computable, bit for bit those of the whole signal."""

    def __init__(self, cfg: Any, tuning: float) -> None:
        self.plan = cqt.cqt_plan(int(cfg.sample_rate), int(cfg.hop_length), float(cfg.cqt_fmin), int(cfg.n_cqt),
                                 int(cfg.cqt_bins_per_octave), float(tuning))
        n = len(self.plan.octaves)
        self.early = _Halver(self.plan.early_factor) if self.plan.early_factor > 1 else None
        self.halvers = [_Halver(2) for _ in range(n - 1)]
        self.buf = [np.zeros(0, dtype=np.float32) for _ in range(n)]
        self.base = [0] * n  # octave-signal index of buf[i][0]
        self.total = [0] * n  # octave-signal samples known
        self.next = 0  # next frame to compute
        self.ended = False

    def feed(self, x: np.ndarray, last: bool) -> np.ndarray:
        y = np.ascontiguousarray(x, dtype=np.float32)
        if self.early is not None:
            y = self.early.feed(y, last)
        for i in range(len(self.plan.octaves)):
            if y.size:
                self.buf[i] = np.concatenate([self.buf[i], y])
                self.total[i] += y.size
            if i < len(self.halvers):
                y = self.halvers[i].feed(y, last)
        self.ended = self.ended or last
        return self._frames()

    def _frames(self) -> np.ndarray:
        plan = self.plan
        avail = []
        for o, total in zip(plan.octaves, self.total):
            if self.ended:  # centred frames of the whole octave signal (zero padding past its end)
                avail.append(1 + total // o.hop_length)
            else:  # frame t reads samples up to t * hop + n_fft // 2 (exclusive)
                avail.append(max(0, (total - o.n_fft // 2) // o.hop_length + 1))
        t0, t1 = self.next, min(avail)
        if t1 <= t0:
            return np.zeros((plan.n_bins, 0), dtype=np.float32)
        responses = []
        with torch.inference_mode():
            for i, o in enumerate(plan.octaves):
                a = t0 * o.hop_length - o.n_fft // 2
                b = (t1 - 1) * o.hop_length - o.n_fft // 2 + o.n_fft
                seg = np.zeros(b - a, dtype=np.float32)
                lo, hi = max(a, self.base[i]), min(b, self.base[i] + self.buf[i].size)
                if hi > lo:
                    seg[lo - a: hi - a] = self.buf[i][lo - self.base[i]: hi - self.base[i]]
                D = torch.stft(torch.from_numpy(seg), n_fft=o.n_fft, hop_length=o.hop_length,
                               window=torch.ones(o.n_fft), center=False, return_complex=True)
                responses.append(torch.matmul(o.basis, D).abs())
                keep = t1 * o.hop_length - o.n_fft // 2 - self.base[i]
                if keep > 0:
                    self.buf[i] = self.buf[i][keep:]
                    self.base[i] += keep
            n = t1 - t0
            out = torch.empty(plan.n_bins, n)
            end = plan.n_bins
            for r in responses:  # as cqt.cqt_magnitude: the top octave fills the top bins
                m = r.shape[0]
                if end < m:
                    out[:end] = r[-end:, :n]
                else:
                    out[end - m: end] = r[:, :n]
                end -= m
        self.next = t1
        return out.numpy() * plan.inv_sqrt_lengths[:, None]


# ---------------------------------------------------------------------------------------------
# Block features of one input
# ---------------------------------------------------------------------------------------------


class BlockFeatures:
    """Frames ``(k, n_channels)`` float32 of one long input, block by block, in order.

    ``chunks()`` returns a fresh iterator over the input's samples at the feature set's rate
    (consecutive float32 blocks); it is called twice (see the module docstring). Iterating
    yields the frames ``feature_set.extract(whole, normalize=normalize)`` would give, in blocks;
    afterwards ``n_samples`` and ``n_frames`` hold the totals.
    """

    def __init__(self, feature_set: Any, chunks: Callable[[], Iterable[np.ndarray]], *, normalize: bool,
                 source: str) -> None:
        if not can_stream(feature_set):
            raise DataError(f"{source}: feature set {feature_set.name!r} cannot be streamed exactly")
        self.feature_set = feature_set
        self.cfg = feature_set.config
        self.tuning = float(self.cfg.tuning)
        self.chunks = chunks
        self.normalize = bool(normalize)
        self.source = source
        self.n_samples: int | None = None
        self.n_frames: int | None = None

    # -- pass 1: the loudest mel frame ----------------------------------------------------------
    def _loudest(self) -> tuple[float, np.ndarray, int]:
        cfg, hop, n_fft = self.cfg, self.cfg.hop_length, self.cfg.n_fft
        seg = _Segmenter(hop=hop, frames=SEGMENT_FRAMES, context=_context(cfg, delta=False))
        best, carrier, total = -np.inf, None, 0
        for y, last in _with_last(self.chunks()):
            total += y.size
            for s in seg.feed(y, last):
                with fast.single_thread():
                    mel = fast.stft_groups_batch([s.samples], cfg, [self.tuning])[0]["mel"]
                off = s.f0 - s.start // hop
                per_frame = mel[:, off: off + s.f1 - s.f0].max(axis=0)
                k = int(np.argmax(per_frame))
                if per_frame[k] > best:
                    best = float(per_frame[k])
                    lo = (s.f0 + k) * hop - n_fft // 2 - s.start  # the frame's samples in the segment
                    carrier = np.zeros(n_fft, dtype=np.float32)
                    a, b = max(lo, 0), min(lo + n_fft, s.samples.size)
                    carrier[a - lo: b - lo] = s.samples[a:b]
        if carrier is None:
            raise AudioError(f"{self.source}: no feature frames (no audio samples)")
        return best, carrier, total

    def _carrier_region(self, carrier: np.ndarray) -> np.ndarray:
        """``carrier`` placed so that one frame centre falls on its middle; a multiple of ``hop`` long."""
        hop, n_fft = self.cfg.hop_length, self.cfg.n_fft
        pre = (-(n_fft // 2)) % hop
        length = pre + n_fft
        length += (-length) % hop + hop  # a hop of zeros after it
        region = np.zeros(length, dtype=np.float32)
        region[pre: pre + n_fft] = carrier
        return region

    # -- pass 2: the frames ---------------------------------------------------------------------
    def _stft_groups(self, s: _Segment, region: np.ndarray, best: float) -> np.ndarray:
        cfg, hop = self.cfg, self.cfg.hop_length
        if s.first and s.last:
            y, shift = s.samples, 0
        elif s.last:  # prepend: the input's end keeps its edge frames (delta "interp" mode)
            y, shift = np.concatenate([region, s.samples]), region.size // hop
        else:
            y, shift = np.concatenate([s.samples, region]), 0
        with fast.single_thread():
            groups = fast.stft_groups_batch([y], cfg, [self.tuning])[0]
        if not (s.first and s.last) and float(groups["mel"].max()) != best:
            raise StreamMismatch(f"{self.source}: segment at frame {s.f0} has loudest mel value "
                                 f"{float(groups['mel'].max())!r}, the input {best!r}")
        off = shift + s.f0 - s.start // hop
        return np.concatenate([g[:, off: off + s.f1 - s.f0] for g in groups.values()], axis=0)

    def __iter__(self) -> Iterator[np.ndarray]:
        cfg, hop = self.cfg, self.cfg.hop_length
        best, carrier, n_first = self._loudest()
        region = self._carrier_region(carrier)
        seg = _Segmenter(hop=hop, frames=SEGMENT_FRAMES, context=_context(cfg, delta=True))
        cq = CqtStream(cfg, self.tuning)
        stft_parts: list[np.ndarray] = []  # (n_stft_channels, k) frames not yet emitted
        cqt_parts: list[np.ndarray] = []  # (n_cqt, k) log-CQT frames not yet emitted
        n_stft = n_cqt = emitted = total = 0
        for y, last in _with_last(self.chunks()):
            total += y.size
            for s in seg.feed(y, last):
                part = self._stft_groups(s, region, best)
                stft_parts.append(part)
                n_stft += part.shape[1]
            with fast.single_thread():
                c = cq.feed(y, last)
            if c.shape[1]:
                cqt_parts.append(log_compress(c, scale=cfg.log_scale, offset=cfg.log_offset).astype(np.float32))
                n_cqt += c.shape[1]
            if last:
                n_frames = 1 + total // hop
                if total != n_first or n_stft != n_frames or n_cqt < n_frames:
                    raise AudioError(f"{self.source}: changed while it was read ({n_first} then {total} samples) "
                                     f"or gave {n_stft}/{n_cqt} frames for {n_frames}")
                self.n_samples, self.n_frames = total, n_frames
            ready = min(n_stft, n_cqt) - emitted
            if last:
                ready = self.n_frames - emitted
            if ready > 0:
                a, stft_parts = _take(stft_parts, ready)
                b, cqt_parts = _take(cqt_parts, ready)
                frames = np.ascontiguousarray(np.concatenate([a, b], axis=0).T, dtype=np.float32)
                emitted += ready
                yield self.feature_set.normalize(frames) if self.normalize else frames


def _with_last(blocks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    """``(block, is_last)`` pairs; an empty stream gives one empty last block."""
    it = iter(blocks)
    prev = next(it, None)
    if prev is None:
        yield np.zeros(0, dtype=np.float32), True
        return
    for cur in it:
        yield np.ascontiguousarray(prev, dtype=np.float32), False
        prev = cur
    yield np.ascontiguousarray(prev, dtype=np.float32), True


def _take(parts: list[np.ndarray], count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first ``count`` columns of the column blocks ``parts`` and the blocks left."""
    out, rest, need = [], list(parts), count
    while need:
        p = rest[0]
        if p.shape[1] <= need:
            out.append(rest.pop(0))
            need -= p.shape[1]
        else:
            out.append(p[:, :need])
            rest[0] = p[:, need:]
            need = 0
    return (np.concatenate(out, axis=1) if len(out) != 1 else out[0]), rest
