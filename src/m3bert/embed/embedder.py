"""Embeddings for any audio: the :class:`Embedder` (decode -> features -> windowed encoder -> pooling).

Longer than 500 lines because the Embedder is one class whose steps share its state; its pure
parts live in :mod:`m3bert.windows` (windows, stitching, pooling), :mod:`m3bert.models.hub`
(model resolution and ids), :mod:`m3bert.features.stream` (block features of long inputs) and
:mod:`m3bert.embed.incremental` (the window rules applied as those blocks arrive).

``load_model(spec)`` turns a model directory, a run directory (best checkpoint, else last), a
checkpoint directory or ``random:CONFIG[:SEED]`` into an :class:`Embedder`::

    model = m3bert.load_model("runs/pretrain")               # or "random:m2bert-small"
    vec = model.embed("song.mp3")                            # (D,)   clip level, last layer, mean
    frames, times_ms = model.embed("song.mp3", level="frame", layers="all")   # (L, T, D), (T,)

Long audio
----------
The encoder has a fixed context (``max_frames``, 1294 frames = 30 s for the paper's models).
Features are those of the whole file (one continuous STFT, so there are no edge effects at
window borders); inputs longer than ``stream.STREAM_SECONDS`` (60 s) are decoded and featurised
block by block with exactly the same numbers (:mod:`m3bert.features.stream`), windowed, encoded,
stitched and pooled as the blocks arrive (:mod:`m3bert.embed.incremental`), so memory does not
grow with the file's length. The encoder runs over windows of ``window_frames`` frames
every ``hop_frames`` frames. All windows are full length (the last one is aligned to the end
of the file), and every output frame is taken from the window in which it is most central, so
each frame sees the largest context available on both sides and the stitched sequence has no
seams: the frame-to-window assignment changes only half-way through an overlap. Clip-level
pooling is pooling over all stitched frames (never an average of per-window averages, which
would weight the frames in overlaps twice).

CMVN in ``clip`` mode
---------------------
The paper normalises features per example, and pre-training examples are chunks of at most
30 s (the store normalises each chunk over its own frames). The encoder therefore only ever
saw frames normalised with statistics of *the window it was looking at*. We do the same at
inference: in ``clip`` mode the un-normalised features are computed once for the whole file,
and each encoder window is normalised with the mean/std of its own frames. A file no longer
than one window is normalised over the whole file, exactly as ``feature_set.extract(normalize=True)``
does. Normalising a 3-minute file with whole-file statistics instead would shift every window
away from the distribution the model was trained on (a quiet intro would be normalised with
the loud chorus's statistics). With ``corpus`` statistics or ``none`` the normalisation is the
same affine map for every frame, so the features are extracted normalised in one go.

Failures
--------
With ``errors="skip"`` every per-input failure, whatever raised it (a decoder, a feature
extractor, the encoder), becomes that input's ``EmbedResult(error=...)`` and the other inputs go
on; with ``errors="raise"`` it is raised as an ``M3bertError`` naming the input (any other
exception becomes an ``AudioError``). An output with NaN/inf is a failure, never returned.

Batching
--------
``embed_many`` packs windows of several files into one encoder batch. By default only windows
of equal length share a batch (all windows of long files are full length, and HEAR batches are
equal-length), so nothing is ever padded and every output is bitwise independent of what else
was in the batch. ``pad_batches=True`` pads mixed lengths with a key-padding mask instead
(padded frames never influence real ones; outputs then agree to ~1e-6 in fp32).

Pipeline
--------
Decoding, resampling and feature extraction of the next inputs run in a background thread
(:func:`m3bert.features.pool.prefetch`), at most ``prefetch`` inputs (default: a batch) ahead of
the encoder, so on a machine with a spare core they are hidden behind the encoder; a streamed long
input's windows are produced the same way, a batch ahead. The thread computes exactly what the
sequential loop computes, with the same functions, and the encoder still runs in the calling
thread with its thread count, so every output is bit for bit that of ``prefetch=0`` (tested).
The two stages are public for callers that produce inputs themselves (the benchmark's feature
cache, which decodes every clip once for all its representations): :meth:`Embedder.open_job`
(decode -> features -> windows; safe in a producer thread) and :meth:`Embedder.iter_jobs`
(batched encoder -> stitching -> pooling).

Precision: ``dtype="fp32"``; ``"bf16"`` (autocast: matmuls and attention in bfloat16 with fp32
accumulation, on CPU and CUDA); ``"int8"`` (CPU only, opt-in: a copy of the encoder with every
``nn.Linear`` dynamically quantised to int8, see
:func:`m3bert.models.encoder.quantize_int8`; the fp32 weights and ``model_id`` are unchanged).
On CUDA, batches are copied from pinned host memory with non-blocking copies.

Why the stitched frames cannot equal a single pass over the whole file: the encoder's absolute
positions and its CMVN statistics are per window, by design (that is what the model was trained
on). With sinusoidal positions and *random* weights the position term dominates every frame, so
a "whole file" pass of a random sinusoidal model (only possible with an enlarged ``max_frames``)
and the windowed pass agree poorly (median frame cosine ~0.24 on a 3-minute signal); for a
content-dominated model they agree closely (see ``tests/test_embed_long.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from m3bert.audio import resample, validate_waveform
from m3bert.core.errors import AudioError, CheckpointError, ConfigError, M3bertError
from m3bert.core.progress import progress as progress_bar
from m3bert.embed.incremental import Pooling, WindowStream, seam
from m3bert.features.memo import FeatureMemo
from m3bert.features.pool import prefetch as prefetch_items
from m3bert.features.stream import BlockFeatures, StreamMismatch, array_chunks, can_stream, open_file, stream_samples
from m3bert.models.encoder import quantize_int8
from m3bert.models.hub import check_feature_set, load_encoder, model_id
from m3bert.windows import POOLS, pool_frames, stitch, window_owners, window_starts

__all__ = [
    "Embedder",
    "EmbedResult",
    "Failed",
    "load_model",
    "window_starts",
    "window_owners",
    "pool_frames",
    "parse_layers",
    "LEVELS",
    "POOLS",
    "DTYPES",
]

LEVELS = ("clip", "frame")
# dtype -> autocast dtype (None: no autocast); "int8" runs a dynamically quantised copy in fp32 otherwise
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "int8": None}
#: Inputs decoded and featurised ahead of the encoder by default: ``None`` = one encoder batch.
PREFETCH: int | None = None


# ---------------------------------------------------------------------------------------------
# Layer selection
# ---------------------------------------------------------------------------------------------


def parse_layers(layers: int | str | Sequence[int], n_hidden_states: int) -> tuple[list[int], bool]:
    """Resolve ``layers`` to hidden-state indices and whether the layer axis is squeezed.

    ``-1`` (or any int, negatives from the end) -> one layer, no layer axis; ``"all"`` -> every
    hidden state; a list -> those (a layer axis even for a list of one). Strings ``"-1"``,
    ``"0,3"`` are accepted as the CLI writes them.
    """
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return list(range(n_hidden_states)), False
        try:
            parts = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"layers={layers!r}; expected -1, 'all' or comma-separated integers") from None
        if not parts:
            raise ConfigError(f"layers={layers!r}; expected -1, 'all' or comma-separated integers")
        layers = parts[0] if len(parts) == 1 and "," not in text else parts
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        idx, squeeze = [int(layers)], True
    elif isinstance(layers, (list, tuple)) and layers and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in layers
    ):
        idx, squeeze = [int(i) for i in layers], False
    else:
        raise ConfigError(f"layers={layers!r}; expected an int, 'all' or a non-empty list of ints")
    out = []
    for i in idx:
        if not -n_hidden_states <= i < n_hidden_states:
            raise ConfigError(
                f"layer {i} out of range: the model has {n_hidden_states} hidden states "
                f"(0 = input embedding .. {n_hidden_states - 1}; negatives count from the end)"
            )
        out.append(i % n_hidden_states)
    return out, squeeze


# ---------------------------------------------------------------------------------------------
# Model resolution
# ---------------------------------------------------------------------------------------------



def load_model(
    spec: str | os.PathLike = "random:m2bert-small",
    *,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    window_frames: int | None = None,
    hop_frames: int | None = None,
    pad_batches: bool = False,
    feature_memo: FeatureMemo | None = None,
    prefetch: int | None = PREFETCH,
) -> "Embedder":
    """Load an :class:`Embedder` from a model dir, a run dir, a checkpoint dir or ``random:CONFIG[:SEED]``.

    ``random:m2bert-small`` (seed 0) is the untrained baseline with the default ``m3bert324``
    feature set. Everything is validated: the model directory's format and weights (by
    ``Encoder.from_pretrained``) and that its feature set can be rebuilt and matches the
    encoder's input width (``CheckpointError`` otherwise).
    """
    encoder, source = load_encoder(spec)
    encoder.eval().requires_grad_(False)  # a fresh object of ours: inference only
    return Embedder(encoder, device=device, dtype=dtype, window_frames=window_frames,
                    hop_frames=hop_frames, source=source, pad_batches=pad_batches,
                    feature_memo=feature_memo, prefetch=prefetch)


# ---------------------------------------------------------------------------------------------
# The Embedder
# ---------------------------------------------------------------------------------------------


@dataclass
class EmbedResult:
    """One item of :meth:`Embedder.iter_embed`: the output, or the error that stopped it."""

    index: int  # position in the input sequence
    item: Any  # the input (path or waveform)
    output: Any = None  # clip: (D,) / (n_layers, D); frame: (frames, times_ms)
    error: str | None = None  # why the item failed (only with errors="skip")
    n_samples: int = 0  # decoded samples at the model's sample rate (0 if failed)
    exception: M3bertError | None = None  # the failure as an exception naming the input (with error)


@dataclass
class Prepared:
    """Features of one item cut into encoder windows."""

    index: int  # position in the input sequence
    item: Any  # the input
    n_frames: int  # frames of the whole item
    n_samples: int  # samples at the model's rate
    starts: list[int]  # window start frames
    windows: list[np.ndarray] = field(default_factory=list)  # each (window_len, C) float32, normalised
    where: str = ""  # the input's name in messages


@dataclass
class Failed:
    """An input that could not be opened (decoded, featurised, windowed): its error, naming it."""

    error: M3bertError  # what the caller sees (names the input)
    cause: BaseException  # what was raised


@dataclass
class _Long:
    """An input longer than ``stream.STREAM_SECONDS``: its features arrive block by block."""

    index: int
    item: Any
    where: str
    feats: BlockFeatures


class Embedder:
    """Audio -> features -> windowed encoder -> selected hidden states -> pooling.

    Attributes: ``sample_rate`` (Hz the model expects), ``n_hidden_states`` (embedding + layers
    [+ enrichment]), ``layer_dims`` (width of each), ``model_id`` (hash of weights + config, a
    cache key), ``device``, ``dtype`` (``"fp32"`` or ``"bf16"`` autocast), ``window_frames`` /
    ``hop_frames`` (long-audio windows), ``feature_set``, ``encoder``.
    """

    def __init__(
        self,
        encoder: Any,
        *,
        feature_set: Any = None,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        window_frames: int | None = None,
        hop_frames: int | None = None,
        source: str = "<in memory>",
        pad_batches: bool = False,
        feature_memo: FeatureMemo | None = None,
        prefetch: int | None = PREFETCH,
    ) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r}; expected one of {list(DTYPES)}")
        self.source = source
        if feature_set is None:
            feature_set = check_feature_set(encoder, source=source)
        elif int(feature_set.n_channels) != int(encoder.cfg.n_input):
            raise CheckpointError(
                f"{source}: feature set {feature_set.name!r} gives {feature_set.n_channels} channels "
                f"but the encoder expects n_input={encoder.cfg.n_input}"
            )
        self.feature_set = feature_set
        self.cmvn_mode = _cmvn_mode(feature_set)
        if self.cmvn_mode == "corpus" and not _has_corpus_stats(feature_set):
            raise CheckpointError(f"{source}: feature set uses corpus CMVN but carries no cmvn_stats")
        self.dtype = dtype
        max_frames = int(encoder.cfg.max_frames)
        self.window_frames = _frames_arg(window_frames, "window_frames", default=max_frames, upper=max_frames,
                                         upper_is="the model's max_frames")
        # Default overlap: 1/6 of the window (5 s of a 30 s window), so after stitching every
        # frame away from the file's ends has >= 2.5 s of context on both sides, for ~20 %
        # extra encoder work on long files.
        self.hop_frames = _frames_arg(hop_frames, "hop_frames",
                                      default=max(1, self.window_frames - self.window_frames // 6),
                                      upper=self.window_frames, upper_is=f"window_frames={self.window_frames}")
        # The encoder is used as given (no requires_grad or train-mode changes leak to a caller
        # that is still training it); forward passes run in eval mode under inference_mode.
        self.encoder = encoder if device is None else encoder.to(check_device(device))
        # False: only windows of equal length share an encoder batch, so no frame is ever padded
        # and every output is bitwise independent of what else was in the batch (measured on CPU:
        # padding + key mask changes outputs by ~1e-6). True: pad mixed lengths together (faster
        # on a GPU with many short clips), outputs equal to ~1e-6.
        self.pad_batches = bool(pad_batches)
        self.feature_memo = feature_memo  # optional, shared with other Embedders over the same audio
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer))
                                     or prefetch < 0):
            raise ConfigError(f"prefetch={prefetch!r}; expected an integer >= 0 (0 = no background thread) or None")
        # inputs decoded + featurised ahead of the encoder in a background thread; None = one batch
        self.prefetch = None if prefetch is None else int(prefetch)
        if dtype == "int8" and self.device.type != "cpu":
            raise ConfigError(f"dtype='int8' runs on the CPU only (dynamic quantisation); the model is on "
                              f"{self.device}. Use 'bf16' on a GPU")
        # int8: a quantised copy made now (later changes to the encoder's weights are not seen by it);
        # the fp32 encoder stays as given and defines model_id
        self._int8: Any = quantize_int8(self.encoder) if dtype == "int8" else None
        self._model_id: str | None = None

    # -- facts --------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.feature_set.sample_rate)

    @property
    def n_hidden_states(self) -> int:
        return int(self.encoder.n_hidden_states)

    @property
    def layer_dims(self) -> list[int]:
        return list(self.encoder.layer_dims)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights are (follows ``embedder.encoder.to(...)``)."""
        return next(self.encoder.parameters()).device

    @property
    def frame_rate(self) -> float:
        return float(self.sample_rate) / float(self.feature_set.hop_length)

    @property
    def model_id(self) -> str:
        """SHA-1 (16 hex) of the architecture, the feature-set description and every weight.

        Outputs also depend on ``dtype`` and the window settings, which are not part of the id
        (``m3bert embed`` records them next to it)."""
        if self._model_id is None:
            self._model_id = model_id(self.encoder, self.feature_set.to_dict())
        return self._model_id

    def __repr__(self) -> str:
        return (f"Embedder(source={self.source!r}, layers={self.n_hidden_states}, dims={self.layer_dims}, "
                f"feature_set={self.feature_set.name!r}, dtype={self.dtype!r}, window={self.window_frames}, "
                f"hop={self.hop_frames})")

    def output_shape(self, *, level: str = "clip", layers: Any = -1, pool: str = "mean",
                     n_frames: int | None = None) -> tuple[int, ...]:
        """Shape of one output for these settings (frame level: with ``n_frames`` frames)."""
        idx, squeeze = parse_layers(layers, self.n_hidden_states)
        dim = self._stack_dim(idx)
        if level == "clip":
            dim = dim * (2 if pool == "meanstd" else 1)
            return (dim,) if squeeze else (len(idx), dim)
        t = -1 if n_frames is None else int(n_frames)
        return (t, dim) if squeeze else (len(idx), t, dim)

    # -- public API -----------------------------------------------------------------------------
    def embed(
        self,
        audio: str | os.PathLike | np.ndarray | torch.Tensor,
        *,
        sample_rate: int | None = None,
        level: str = "clip",
        layers: int | str | Sequence[int] = -1,
        pool: str = "mean",
    ) -> Any:
        """Embed one file or waveform.

        ``audio``: a path (decoded and resampled to ``self.sample_rate``), or a mono waveform
        ``(n_samples,)`` float in [-1, 1] together with its ``sample_rate``.
        Returns, at clip level, ``(D,)`` for one layer or ``(n_layers, D)`` (``D`` doubled for
        ``meanstd``); at frame level ``(frames, times_ms)`` with frames ``(T, D)`` or
        ``(n_layers, T, D)`` and ``times_ms`` ``(T,)`` (frame centres in milliseconds).
        """
        (res,) = list(self.iter_embed([audio], sample_rate=sample_rate, level=level, layers=layers,
                                      pool=pool, batch_size=4, progress=False, errors="raise"))
        return res.output

    def embed_many(
        self,
        items: Iterable[Any],
        *,
        sample_rate: int | None = None,
        level: str = "clip",
        layers: int | str | Sequence[int] = -1,
        pool: str = "mean",
        batch_size: int = 8,
        progress: bool = True,
        errors: str = "raise",
    ) -> list[Any]:
        """Embed several files/waveforms, ``batch_size`` encoder windows at a time.

        Returns a list of outputs in input order (see :meth:`embed`); with ``errors="skip"``
        a failed item's output is ``None`` (use :meth:`iter_embed` to see why).
        """
        return [r.output for r in self.iter_embed(items, sample_rate=sample_rate, level=level, layers=layers,
                                                  pool=pool, batch_size=batch_size, progress=progress,
                                                  errors=errors)]

    def iter_embed(
        self,
        items: Iterable[Any],
        *,
        sample_rate: int | None = None,
        level: str = "clip",
        layers: int | str | Sequence[int] = -1,
        pool: str = "mean",
        batch_size: int = 8,
        progress: bool = True,
        errors: str = "raise",
        on_prepare_error: Callable[[Any, Exception], None] | None = None,
        prefetch: int | None = None,
    ) -> Iterator[EmbedResult]:
        """Yield one :class:`EmbedResult` per item, in input order, holding memory flat.

        Items are decoded and featurised by a background thread up to ``prefetch`` items ahead
        (default: the Embedder's ``prefetch``, else ``batch_size``; 0 = in this thread), gathered
        until ``batch_size`` windows are ready, run through the encoder together, stitched, pooled
        and yielded; an input longer than ``stream.STREAM_SECONDS`` runs alone, block by block.
        ``errors="skip"``: an item that fails for any reason (decoding, features, encoder, a
        non-finite output) yields ``EmbedResult(error=...)`` and the others go on;
        ``errors="raise"`` raises its error (an ``M3bertError`` naming the input).
        Items: paths, mono waveforms (with ``sample_rate``) or audio sources (objects with
        ``waveform(sample_rate) -> (n_samples,)`` and a ``where`` string naming them).
        """
        run = self._run(level=level, layers=layers, pool=pool, batch_size=batch_size, errors=errors, prefetch=prefetch)
        items = list(items) if not isinstance(items, list) else items
        depth = run[6]
        jobs = prefetch_items(((i, item, self.open_job(item, sample_rate=sample_rate, index=i))
                               for i, item in enumerate(items)), depth=depth)
        with contextlib.closing(jobs):
            yield from self.iter_jobs(jobs, level=level, layers=layers, pool=pool, batch_size=batch_size,
                                      progress=progress, errors=errors, on_prepare_error=on_prepare_error,
                                      total=len(items), _run=run)

    def open_job(self, item: Any, *, sample_rate: int | None = None, index: int = 0) -> Any:
        """Stage 1 of :meth:`iter_embed`: decode ``item``, extract its features and cut its windows.

        Returns a job for :meth:`iter_jobs` (a long input's features are left to stream), or a
        :class:`Failed` naming the input; never raises for a bad input. Safe to call in a producer
        thread while the encoder runs in another (the feature code keeps to its own thread)."""
        try:
            return self._open(item, sample_rate=sample_rate, index=index)
        except Exception as exc:  # whatever failed for this input: its failure, not the batch's
            return Failed(_item_error(_where(item, index), exc), exc)

    def iter_jobs(
        self,
        jobs: Iterable[tuple[int, Any, Any]],
        *,
        level: str = "clip",
        layers: int | str | Sequence[int] = -1,
        pool: str = "mean",
        batch_size: int = 8,
        progress: bool = False,
        errors: str = "raise",
        on_prepare_error: Callable[[Any, Exception], None] | None = None,
        total: int | None = None,
        _run: tuple | None = None,
    ) -> Iterator[EmbedResult]:
        """Stage 2 of :meth:`iter_embed`: ``(index, item, open_job(item))`` triples, in order ->
        one :class:`EmbedResult` each, in the same order (the encoder batches windows of several
        inputs; a streamed input runs alone, its windows produced a batch ahead)."""
        run = _run or self._run(level=level, layers=layers, pool=pool, batch_size=batch_size, errors=errors,
                                prefetch=None)
        bar = progress_bar(total=total, desc="embed", unit="file") if progress else None
        try:
            pending: list[Prepared] = []
            n_windows = 0
            for i, item, job in jobs:
                if isinstance(job, Failed):
                    if errors == "raise":
                        _raise(job.error, job.cause)
                    if on_prepare_error is not None:
                        on_prepare_error(item, job.error)
                    # flush what came before so output order is kept
                    yield from self._finish(pending, run, bar)
                    pending, n_windows = [], 0
                    if bar is not None:
                        bar.update(1)
                    yield EmbedResult(index=i, item=item, error=str(job.error), exception=job.error)
                    continue
                if isinstance(job, _Long):  # alone, block by block, after what came before
                    yield from self._finish(pending, run, bar)
                    pending, n_windows = [], 0
                    yield from self._finish_long(job, run, bar)
                    continue
                pending.append(job)
                n_windows += len(job.windows)
                if n_windows >= run[4]:
                    yield from self._finish(pending, run, bar)
                    pending, n_windows = [], 0
            yield from self._finish(pending, run, bar)
        finally:
            if bar is not None:
                bar.close()

    def _run(self, *, level: str, layers: Any, pool: str, batch_size: int, errors: str, prefetch: int | None) -> tuple:
        """The checked settings of one run: ``(idx, squeeze, level, pool, batch_size, errors, prefetch depth)``."""
        if level not in LEVELS:
            raise ConfigError(f"level={level!r}; expected one of {list(LEVELS)}")
        if level == "clip" and pool not in POOLS:
            raise ConfigError(f"pool={pool!r}; expected one of {list(POOLS)}")
        if errors not in ("raise", "skip"):
            raise ConfigError(f"errors={errors!r}; expected 'raise' or 'skip'")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}; expected >= 1")
        idx, squeeze = parse_layers(layers, self.n_hidden_states)
        self._stack_dim(idx)
        return (idx, squeeze, level, pool, int(batch_size), errors, self._depth(prefetch, int(batch_size)))

    def _depth(self, prefetch: int | None, batch_size: int) -> int:
        """Items the producer thread may run ahead: the argument, else the Embedder's, else a batch."""
        depth = self.prefetch if prefetch is None else prefetch
        if depth is None:
            return max(2, batch_size)
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
            raise ConfigError(f"prefetch={depth!r}; expected an integer >= 0 (0 = no background thread) or None")
        return int(depth)

    # -- internals ----------------------------------------------------------------------------
    def _stack_dim(self, idx: list[int]) -> int:
        dims = {self.layer_dims[i] for i in idx}
        if len(dims) != 1:
            raise ConfigError(
                f"layers {idx} have different widths {[self.layer_dims[i] for i in idx]}; "
                "request them separately"
            )
        return dims.pop()

    def _waveform(self, item: Any, sample_rate: int | None, where: str) -> np.ndarray:
        """Validate an in-memory waveform and resample it to ``self.sample_rate``: mono float32 ``(n_samples,)``."""
        min_samples = int(getattr(self.feature_set, "min_samples", 1))
        if isinstance(item, torch.Tensor):
            item = item.detach().to("cpu", torch.float32).numpy()
        if not isinstance(item, np.ndarray):
            raise AudioError(f"{where}: expected a path or a mono waveform (n_samples,) array")
        if sample_rate is None:
            raise AudioError(f"{where}: pass sample_rate= with a waveform (the model expects {self.sample_rate} Hz)")
        x = validate_waveform(item, sample_rate=sample_rate, min_samples=1, source=where)
        x = resample(x, orig_sample_rate=sample_rate, sample_rate=self.sample_rate)
        return validate_waveform(x, sample_rate=self.sample_rate, min_samples=min_samples, source=where)

    def _open(self, item: Any, *, sample_rate: int | None, index: int) -> Prepared | _Long:
        """Decode ``item``: a short input is featurised whole into its windows (:class:`Prepared`),
        a long one is left to stream (:class:`_Long`) when the feature set allows it."""
        where = _where(item, index)
        if isinstance(item, (str, os.PathLike)):
            min_samples = int(getattr(self.feature_set, "min_samples", 1))
            x, chunks = open_file(item, sample_rate=self.sample_rate, min_samples=min_samples)
        else:
            # an audio source is decoded by its owner (e.g. once for several models); the job keeps
            # the source, not its samples
            wave, rate = (item.waveform(self.sample_rate), self.sample_rate) if is_audio_source(item) else (item, sample_rate)
            x = self._waveform(wave, rate, where)
            chunks = array_chunks(x, self.sample_rate) if x.size > stream_samples(self.sample_rate) else None
        if chunks is not None:
            if can_stream(self.feature_set):
                feats = BlockFeatures(self.feature_set, chunks, normalize=self.cmvn_mode != "clip", source=where)
                return _Long(index=index, item=item, where=where, feats=feats)
            if x is None:  # a feature set that is not streamed: the whole file, as before
                x = np.concatenate(list(chunks()))
        return self._prepare_waveform(x, where=where, item=item, index=index)

    def prepare(self, item: Any, *, sample_rate: int | None = None, index: int = 0) -> Prepared:
        """Decode/resample ``item``, extract its features and cut them into normalised encoder windows.

        What training on windows (``m3bert.enrich``) caches, so training sees what inference sees.
        """
        job = self._open(item, sample_rate=sample_rate, index=index)
        if isinstance(job, Prepared):
            return job
        try:
            cut = WindowStream(job.feats, window=self.window_frames, hop=self.hop_frames)
            starts, windows = [], []
            for start, frames in cut:
                starts.append(start)
                windows.append(self._window(frames, job.where))
            return Prepared(index=index, item=item, n_frames=int(cut.n_frames), n_samples=int(job.feats.n_samples),
                            starts=starts, windows=windows, where=job.where)
        except StreamMismatch:
            return self._prepare_waveform(np.concatenate(list(job.feats.chunks())), where=job.where, item=item,
                                          index=index)

    def _prepare_waveform(self, x: np.ndarray, *, where: str, item: Any, index: int) -> Prepared:
        """The whole-input path: features of all of ``x`` at once, cut into windows."""
        feature_set = self.feature_set
        normalize = self.cmvn_mode != "clip"
        memo = self.feature_memo
        memo_key = memo.key(feature_set, x, normalize) if memo is not None and memo.max_bytes > 0 else None
        feats = memo.get(memo_key) if memo_key is not None else None
        if feats is None:
            try:
                feats = feature_set.extract(x, sample_rate=self.sample_rate, normalize=normalize)
            except M3bertError as exc:
                raise type(exc)(f"{where}: {exc}") from exc
            feats = np.asarray(feats, dtype=np.float32)
            _check_finite_features(feats, where)
            if memo_key is not None:
                memo.put(memo_key, feats)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise AudioError(f"{where}: no feature frames (audio of {x.size} samples is too short)")
        n_frames = feats.shape[0]
        starts = window_starts(n_frames, window=self.window_frames, hop=self.hop_frames)
        windows = []
        for s in starts:
            w = feats[s:s + self.window_frames]
            windows.append(_normalize_window(feature_set, w) if self.cmvn_mode == "clip" else w)
        return Prepared(index=index, item=item, n_frames=n_frames, n_samples=int(x.size), starts=starts,
                        windows=windows, where=where)

    def _window(self, frames: np.ndarray, where: str) -> np.ndarray:
        """One streamed window, CMVN-normalised on its own in ``clip`` mode (as the whole-input path does)."""
        _check_finite_features(frames, where)
        return _normalize_window(self.feature_set, frames) if self.cmvn_mode == "clip" else frames

    def _encode_windows(self, windows: list[np.ndarray], idx: list[int], batch_size: int) -> list[np.ndarray]:
        """Run the encoder; returns per window ``(n_selected, window_len, D)`` float32."""
        out: list[np.ndarray | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda k: -windows[k].shape[0])  # longest first
        if self.pad_batches:
            chunks = [order[b0:b0 + batch_size] for b0 in range(0, len(order), batch_size)]
        else:  # only equal-length windows share a batch: no padding, results independent of batching
            by_len: dict[int, list[int]] = {}
            for k in order:
                by_len.setdefault(windows[k].shape[0], []).append(k)
            chunks = [g[b0:b0 + batch_size] for g in by_len.values() for b0 in range(0, len(g), batch_size)]
        device = self.device
        autocast_dtype = DTYPES[self.dtype]
        # One autocast context for all chunks: its cache keeps the bf16 copies of the weights
        # across forward passes instead of re-casting them for every chunk.
        precision = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        encoder = self._int8 if self._int8 is not None else self.encoder
        cuda = device.type == "cuda"
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.inference_mode(), precision:
                for chunk in chunks:
                    lengths = [windows[k].shape[0] for k in chunk]
                    batch = np.zeros((len(chunk), max(lengths), windows[chunk[0]].shape[1]), dtype=np.float32)
                    for j, k in enumerate(chunk):
                        batch[j, : lengths[j]] = windows[k]
                    frames = torch.from_numpy(batch)
                    # on a GPU: page-locked host memory, so the copy runs asynchronously to the host code
                    frames = frames.pin_memory().to(device, non_blocking=True) if cuda else frames.to(device)
                    lens = torch.tensor(lengths, dtype=torch.long, device=device)
                    states = encoder(frames, lens)
                    sel = torch.stack([states[i].float() for i in idx], dim=1).cpu().numpy()  # (B, n_sel, T, D)
                    for j, k in enumerate(chunk):
                        out[k] = sel[j, :, : lengths[j]]
        finally:
            self.encoder.train(was_training)
        return out  # type: ignore[return-value]

    def _finish(self, pending: list[Prepared], run: tuple, bar: Any) -> Iterator[EmbedResult]:
        """Encode the windows of ``pending`` together, then stitch, pool and check each input."""
        if not pending:
            return
        idx, squeeze, level, pool, batch_size, errors, depth = run
        flat = [w for p in pending for w in p.windows]
        try:
            encoded: list[np.ndarray] | Exception = self._encode_windows(flat, idx, batch_size)
        except Exception as exc:
            if len(pending) > 1:  # find out whose windows fail: one input at a time
                for p in pending:
                    yield from self._finish([p], run, bar)
                return
            encoded = exc
        pos = 0
        for p in pending:
            try:
                if isinstance(encoded, Exception):
                    raise encoded
                states = encoded[pos:pos + len(p.windows)]
                frames = stitch(states, p.starts, p.n_frames, window=self.window_frames)  # (n_sel, T, D)
                out = pool_frames(frames, pool) if level == "clip" else frames
                result = EmbedResult(index=p.index, item=p.item, output=self._output(out, p.n_frames, squeeze, level,
                                                                                    p.where),
                                     n_samples=p.n_samples)
            except Exception as exc:
                err = _item_error(p.where or _where(p.item, p.index), exc)
                if errors == "raise":
                    _raise(err, exc)
                result = EmbedResult(index=p.index, item=p.item, error=str(err), exception=err)
            pos += len(p.windows)
            if bar is not None:
                bar.update(1)
            yield result

    def _finish_long(self, job: _Long, run: tuple, bar: Any) -> Iterator[EmbedResult]:
        """Embed one streamed input (falling back to the whole-input path if streaming cannot be exact)."""
        idx, squeeze, level, pool, batch_size, errors, depth = run
        try:
            result = EmbedResult(index=job.index, item=job.item, output=self._embed_long(job, run),
                                 n_samples=int(job.feats.n_samples))
        except StreamMismatch:
            try:
                prep = self._prepare_waveform(np.concatenate(list(job.feats.chunks())), where=job.where,
                                              item=job.item, index=job.index)
            except Exception as exc:
                err = _item_error(job.where, exc)
                if errors == "raise":
                    _raise(err, exc)
                result = EmbedResult(index=job.index, item=job.item, error=str(err), exception=err)
            else:
                yield from self._finish([prep], run, bar)
                return
        except Exception as exc:
            err = _item_error(job.where, exc)
            if errors == "raise":
                _raise(err, exc)
            result = EmbedResult(index=job.index, item=job.item, error=str(err), exception=err)
        if bar is not None:
            bar.update(1)
        yield result

    def _embed_long(self, job: _Long, run: tuple) -> Any:
        """Windows of a streamed input, encoded ``batch_size`` at a time, each window's owned frames
        pooled as soon as the next window's start is known: memory bounded by a batch of windows."""
        idx, squeeze, level, pool, batch_size, errors, depth = run
        windows = WindowStream(job.feats, window=self.window_frames, hop=self.hop_frames)
        pooled = Pooling(level, pool)
        batch: list[tuple[int, np.ndarray]] = []
        encoded: deque[tuple[int, np.ndarray]] = deque()  # windows waiting for their successor's start
        owned_from = 0

        def drain(final: bool) -> None:
            nonlocal owned_from
            while len(encoded) > 1 or (final and encoded):
                start, states = encoded.popleft()
                stop = seam(start, encoded[0][0], window=self.window_frames) if encoded else windows.n_frames
                pooled.add(states[:, owned_from - start: stop - start])
                owned_from = stop

        # the next windows (decoding + features of their blocks) are computed a batch ahead
        ahead = prefetch_items(((start, self._window(frames, job.where)) for start, frames in windows),
                               depth=depth)
        with contextlib.closing(ahead):
            for start, window in ahead:
                batch.append((start, window))
                if len(batch) >= batch_size:
                    encoded.extend(zip([b[0] for b in batch],
                                       self._encode_windows([b[1] for b in batch], idx, batch_size)))
                    batch = []
                    drain(False)
        if batch:
            encoded.extend(zip([b[0] for b in batch], self._encode_windows([b[1] for b in batch], idx, batch_size)))
        drain(True)
        return self._output(pooled.result(windows.n_frames), windows.n_frames, squeeze, level, job.where)

    def _output(self, out: np.ndarray, n_frames: int, squeeze: bool, level: str, where: str) -> Any:
        """The returned value (one layer squeezed; frame times at frame level), refused if not finite."""
        if not np.isfinite(out).all():
            n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
            raise AudioError(f"{where}: the embedding has {n_bad} non-finite value(s) (NaN/inf) although its features "
                             f"are finite; the model is numerically unstable on this input (try dtype='fp32') or "
                             f"its weights are broken; nothing is written for it")
        if level == "clip":
            return out[0] if squeeze else out
        times = np.asarray(self.feature_set.frame_times_ms(n_frames), dtype=np.float64)
        return (out[0] if squeeze else out, times)


def _cmvn_mode(feature_set: Any) -> str:
    mode = getattr(getattr(feature_set, "config", None), "cmvn", "clip")
    # "seed" (per-frame mean removal) and "corpus" / "none" do not depend on the window: they are
    # applied while extracting; only "clip" statistics are per encoder window
    if mode not in ("clip", "corpus", "none", "seed"):
        raise CheckpointError(f"feature set {feature_set.name!r}: cmvn={mode!r}; expected 'clip', 'corpus', 'seed' or 'none'")
    return mode


def _has_corpus_stats(feature_set: Any) -> bool:
    d = feature_set.to_dict() if hasattr(feature_set, "to_dict") else {}
    return bool(d.get("cmvn_stats"))


def _normalize_window(feature_set: Any, frames: np.ndarray) -> np.ndarray:
    """Clip CMVN of one window ``(window_len, C)`` with the feature set's own CMVN (same eps)."""
    return np.asarray(feature_set.normalize(frames), dtype=np.float32)


def is_audio_source(item: Any) -> bool:
    """An input that decodes itself: ``item.waveform(sample_rate) -> (n_samples,)`` and ``item.where``."""
    return callable(getattr(item, "waveform", None)) and isinstance(getattr(item, "where", None), str)


def _where(item: Any, index: int) -> str:
    """How messages name an input: its path (or an audio source's name), or the waveform's position in the batch."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if is_audio_source(item):
        return item.where
    return f"waveform #{index} ({type(item).__name__})"


def _item_error(where: str, exc: BaseException) -> M3bertError:
    """An input's failure as an ``M3bertError`` naming it: ours as they are, any other as an ``AudioError``."""
    if isinstance(exc, M3bertError):
        return exc if where in str(exc) else type(exc)(f"{where}: {exc}")
    detail = str(exc).strip().splitlines()
    return AudioError(f"{where}: failed ({type(exc).__name__}: {detail[-1] if detail else 'no message'})")


def _raise(err: M3bertError, exc: BaseException) -> None:
    if err is exc:
        raise err
    raise err from exc


def _check_finite_features(feats: np.ndarray, where: str) -> None:
    if not np.isfinite(feats).all():
        n_bad = int(feats.size - np.count_nonzero(np.isfinite(feats)))
        raise AudioError(f"{where}: its features have {n_bad} non-finite value(s) (NaN/inf); the audio's sample "
                         f"values are out of range (expected about [-1, 1])")


def _frames_arg(value: Any, name: str, *, default: int, upper: int, upper_is: str) -> int:
    """``window_frames`` / ``hop_frames``: ``None`` is the default; else an integer in ``1..upper``."""
    if value is None:
        return int(default)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}={value!r}; expected an integer 1..{upper} ({upper_is}) or None for the default")
    if not 1 <= int(value) <= upper:
        raise ConfigError(f"{name}={value}; expected 1..{upper} ({upper_is}), or None for the default "
                          f"({default}); 0 does not mean the default")
    return int(value)


def check_device(device: Any) -> torch.device:
    """A torch device that exists on this machine, or a ``ConfigError`` saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={device!r} is not a torch device ({str(exc).strip().splitlines()[0]}); "
                          "expected 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}, cuda {torch.version.cuda}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r}: MPS is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: unsupported device type {dev.type!r}; expected 'cpu', 'cuda' or 'mps'")
    return dev
