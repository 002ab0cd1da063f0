"""Embeddings for any audio: model resolution, the :class:`Embedder`, windowed long-audio inference.

``load_model(spec)`` turns a model directory, a run directory (best checkpoint, else last), a
checkpoint directory or ``random:CONFIG[:SEED]`` into an :class:`Embedder`::

    model = m3bert.load_model("runs/pretrain")               # or "random:m2bert-small"
    vec = model.embed("song.mp3")                            # (D,)   clip level, last layer, mean
    frames, times_ms = model.embed("song.mp3", level="frame", layers="all")   # (L, T, D), (T,)

Long audio
----------
The encoder has a fixed context (``max_frames``, 1294 frames = 30 s for the paper's models).
Features of the whole file are computed once (one continuous STFT, so there are no edge
effects at window borders), then the encoder runs over windows of ``window_frames`` frames
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
than one window is normalised over the whole file, exactly as ``fs.extract(normalize=True)``
does. Normalising a 3-minute file with whole-file statistics instead would shift every window
away from the distribution the model was trained on (a quiet intro would be normalised with
the loud chorus's statistics). With ``corpus`` statistics or ``none`` the normalisation is the
same affine map for every frame, so the features are extracted normalised in one go.

Batching
--------
``embed_many`` packs windows of several files into one encoder batch. By default only windows
of equal length share a batch (all windows of long files are full length, and HEAR batches are
equal-length), so nothing is ever padded and every output is bitwise independent of what else
was in the batch. ``pad_batches=True`` pads mixed lengths with a key-padding mask instead
(padded frames never influence real ones; outputs then agree to ~1e-6 in fp32).

Why the stitched frames cannot equal a single pass over the whole file: the encoder's absolute
positions and its CMVN statistics are per window, by design (that is what the model was trained
on). With sinusoidal positions and *random* weights the position term dominates every frame, so
a "whole file" pass of a random sinusoidal model (only possible with an enlarged ``max_frames``)
and the windowed pass agree poorly (median frame cosine ~0.24 on a 3-minute signal); for a
content-dominated model they agree closely (see ``tests/test_embed_long.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from m3bert.errors import AudioError, CheckpointError, ConfigError, M3bertError

__all__ = [
    "Embedder",
    "EmbedResult",
    "load_model",
    "resolve_model_dir",
    "window_starts",
    "window_owners",
    "pool_frames",
    "parse_layers",
    "DEFAULT_FEATURE_SET",
    "LEVELS",
    "POOLS",
    "DTYPES",
]

DEFAULT_FEATURE_SET = "m3bert324"  # feature set of ``random:`` models (the paper's 324-d frames)
LEVELS = ("clip", "frame")
POOLS = ("mean", "meanstd")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


class FeatureMemo:
    """Process-wide LRU of input features by (feature-set config, normalisation, audio bytes).

    Several models over the same audio (a benchmark comparing M3BERT, M2BERT and a random
    encoder; multi-task caching followed by evaluation) compute identical input features; the
    feature extraction is the costliest step for small encoders. Keys hash the waveform's bytes,
    so a hit is exact. Off by default (embedding a folder sees each file once, and a memo would
    only grow memory); :meth:`sharing` turns it on for a block, as ``run_benchmark`` does.
    """

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[tuple[str, bool, str], np.ndarray]" = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(fs: Any, waveform: np.ndarray, normalize: bool) -> tuple[str, bool, str]:
        digest = hashlib.sha1(np.ascontiguousarray(waveform).view(np.uint8)).hexdigest()
        return (fs.config_hash(), bool(normalize), f"{waveform.dtype}:{waveform.shape}:{digest}")

    def get(self, key: tuple[str, bool, str]) -> np.ndarray | None:
        hit = self._items.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: tuple[str, bool, str], feats: np.ndarray) -> None:
        if self.max_bytes <= 0 or feats.nbytes > self.max_bytes or key in self._items:
            return
        feats.setflags(write=False)  # shared between callers: never modified in place
        self._items[key] = feats
        self._used += feats.nbytes
        while self._used > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._used -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self._used = 0

    @contextlib.contextmanager
    def sharing(self, max_bytes: int = 512 << 20) -> Iterator["FeatureMemo"]:
        """Keep features of up to ``max_bytes`` within the block; emptied (and restored) after it."""
        saved = self.max_bytes
        self.max_bytes = int(max_bytes)
        try:
            yield self
        finally:
            self.max_bytes = saved
            self.clear()


FEATURE_MEMO = FeatureMemo(0)


# ---------------------------------------------------------------------------------------------
# Pure functions: windows, stitching, normalisation, pooling, layer selection
# ---------------------------------------------------------------------------------------------


def window_starts(n_frames: int, *, window: int, hop: int) -> list[int]:
    """Start frames of full-length windows covering ``n_frames`` frames.

    Windows start every ``hop`` frames; the last window is aligned to the end so every window
    has exactly ``window`` frames (equal context, equal CMVN statistics size). A sequence no
    longer than ``window`` is one window starting at 0.
    """
    if n_frames <= 0:
        raise ConfigError(f"n_frames={n_frames}; expected a positive number of frames")
    if window <= 0 or hop <= 0 or hop > window:
        raise ConfigError(f"window={window}, hop={hop}; expected 0 < hop <= window")
    if n_frames <= window:
        return [0]
    last = n_frames - window
    starts = list(range(0, last, hop))
    starts.append(last)
    return starts


def window_owners(n_frames: int, starts: Sequence[int], *, window: int) -> np.ndarray:
    """For each frame, the index of the window in which it is most central: ``(n_frames,)`` int64.

    Distance is measured from the window's centre ``start + (length - 1) / 2``; ties go to the
    earlier window. Only windows that contain the frame are candidates.
    """
    t = np.arange(n_frames, dtype=np.float64)[:, None]
    s = np.asarray(starts, dtype=np.float64)[None, :]
    length = np.minimum(window, n_frames - s)  # a single short window holds all frames
    centre = s + (length - 1) / 2.0
    dist = np.abs(t - centre)
    dist[(t < s) | (t >= s + length)] = np.inf
    owners = np.argmin(dist, axis=1)
    if not np.isfinite(dist[np.arange(n_frames), owners]).all():
        raise ConfigError("windows do not cover every frame (internal error in window_starts)")
    return owners.astype(np.int64)


def pool_frames(frames: np.ndarray, pool: str) -> np.ndarray:
    """Pool frame embeddings over time: ``(..., T, D) -> (..., D)`` (mean) or ``(..., 2D)`` (meanstd).

    Accumulates in float64 and returns float32, so clip-level output is exactly
    ``pool_frames(frame-level output)``. ``meanstd`` concatenates the mean and the population
    standard deviation (Kim et al.'s mean+std pooling).
    """
    if pool not in POOLS:
        raise ConfigError(f"pool={pool!r}; expected one of {list(POOLS)}")
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ConfigError(f"pool_frames: expected (..., frames, dim) with frames > 0, got {x.shape}")
    mean = x.mean(axis=-2)
    if pool == "mean":
        return mean.astype(np.float32)
    return np.concatenate([mean, x.std(axis=-2)], axis=-1).astype(np.float32)


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


def _is_model_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("format") == "m3bert-model"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, a run directory (``checkpoints/best``, else ``checkpoints/last``) or a
    checkpoint directory -> the model directory to load. ``CheckpointError`` says what was found."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; expected a model directory, a run directory or 'random:CONFIG[:SEED]'")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; expected a model directory (config.json + model.safetensors) or a run directory")
    if _is_model_dir(path):
        return path
    if (path / "config.json").is_file():
        try:
            fmt = json.loads((path / "config.json").read_text(encoding="utf-8")).get("format")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{path / 'config.json'}: not a valid JSON object ({exc})") from exc
        raise CheckpointError(f"{path / 'config.json'}: format={fmt!r}, expected 'm3bert-model'")
    if (path / "run.json").is_file():
        tried = []
        for name in ("best", "last"):
            ckpt = path / "checkpoints" / name
            if _is_model_dir(ckpt):
                return ckpt
            tried.append(str(ckpt))
        raise CheckpointError(
            f"{path}: run directory without a usable checkpoint; looked for a model directory "
            f"(config.json with format 'm3bert-model' + model.safetensors) in {tried}"
        )
    raise CheckpointError(
        f"{path}: neither a model directory (config.json + model.safetensors) nor a run directory "
        f"(run.json + checkpoints/); found {sorted(p.name for p in path.iterdir())[:10]}"
    )


def _parse_random_spec(spec: str) -> tuple[str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "random" or not parts[1]:
        raise ConfigError(f"model spec {spec!r}; expected 'random:CONFIG' or 'random:CONFIG:SEED'")
    seed = 0
    if len(parts) == 3:
        try:
            seed = int(parts[2])
        except ValueError:
            raise ConfigError(f"model spec {spec!r}: seed {parts[2]!r} is not an integer") from None
    return parts[1], seed


def load_encoder(spec: str | os.PathLike) -> tuple[Any, str]:
    """Load the encoder behind ``spec``; returns ``(encoder, source description)``."""
    from m3bert.models.encoder import Encoder, create_model

    if isinstance(spec, str) and spec.startswith("random:"):
        from m3bert.features import get_feature_set

        name, seed = _parse_random_spec(spec)
        encoder = create_model(name, seed=seed)
        fs = get_feature_set(DEFAULT_FEATURE_SET)
        if fs.n_channels != encoder.cfg.n_input:
            raise ConfigError(
                f"{spec}: model config {name!r} takes {encoder.cfg.n_input} input channels but the "
                f"default feature set {DEFAULT_FEATURE_SET!r} has {fs.n_channels}"
            )
        encoder.feature_set = fs.to_dict()
        return encoder, f"random:{name}:{seed}"
    model_dir = resolve_model_dir(spec)
    return Encoder.from_pretrained(model_dir), str(model_dir)


def load_model(
    spec: str | os.PathLike = "random:m2bert-small",
    *,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    window_frames: int | None = None,
    hop_frames: int | None = None,
    pad_batches: bool = False,
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
                    hop_frames=hop_frames, source=source, pad_batches=pad_batches)


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


@dataclass
class _Prepared:
    """Features of one item cut into encoder windows."""

    index: int  # position in the input sequence
    item: Any  # the input
    n_frames: int  # frames of the whole item
    n_samples: int  # samples at the model's rate
    starts: list[int]  # window start frames
    windows: list[np.ndarray] = field(default_factory=list)  # each (window_len, C) float32, normalised


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
    ) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r}; expected one of {list(DTYPES)}")
        self.source = source
        if feature_set is None:
            if not encoder.feature_set:
                raise CheckpointError(
                    f"{source}: the model has no feature_set in its config; it cannot embed audio "
                    "(expected the FeatureSet.to_dict() it was trained on)"
                )
            from m3bert.features import feature_set_from_dict

            try:
                feature_set = feature_set_from_dict(encoder.feature_set)
            except M3bertError as exc:
                raise CheckpointError(f"{source}: cannot rebuild the model's feature set ({exc})") from exc
        if int(feature_set.n_channels) != int(encoder.cfg.n_input):
            raise CheckpointError(
                f"{source}: feature set {feature_set.name!r} gives {feature_set.n_channels} channels "
                f"but the encoder expects n_input={encoder.cfg.n_input}"
            )
        self.feature_set = feature_set
        self.cmvn_mode = _cmvn_mode(feature_set)
        if self.cmvn_mode == "corpus" and not _has_corpus_stats(feature_set):
            raise CheckpointError(f"{source}: feature set uses corpus CMVN but carries no cmvn_stats")
        self.dtype = dtype
        # The encoder is used as given (no requires_grad or train-mode changes leak to a caller
        # that is still training it); forward passes run in eval mode under inference_mode.
        self.encoder = encoder if device is None else encoder.to(torch.device(device))
        max_frames = int(encoder.cfg.max_frames)
        self.window_frames = int(window_frames or max_frames)
        if not 0 < self.window_frames <= max_frames:
            raise ConfigError(f"window_frames={window_frames}; expected 1..{max_frames} (the model's max_frames)")
        # Default overlap: 1/6 of the window (5 s of a 30 s window), so after stitching every
        # frame away from the file's ends has >= 2.5 s of context on both sides, for ~20 %
        # extra encoder work on long files.
        self.hop_frames = int(hop_frames or max(1, self.window_frames - self.window_frames // 6))
        if not 0 < self.hop_frames <= self.window_frames:
            raise ConfigError(f"hop_frames={hop_frames}; expected 1..window_frames={self.window_frames}")
        # False: only windows of equal length share an encoder batch, so no frame is ever padded
        # and every output is bitwise independent of what else was in the batch (measured on CPU:
        # padding + key mask changes outputs by ~1e-6). True: pad mixed lengths together (faster
        # on a GPU with many short clips), outputs equal to ~1e-6.
        self.pad_batches = bool(pad_batches)
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
            h = hashlib.sha1()
            meta = {"model": self.encoder.cfg.to_dict(), "feature_set": self.feature_set.to_dict()}
            h.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
            for name, tensor in sorted(self.encoder.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode("utf-8"))
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._model_id = h.hexdigest()[:16]
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
    ) -> Iterator[EmbedResult]:
        """Yield one :class:`EmbedResult` per item, in input order, holding memory flat.

        Items are read a few at a time until ``batch_size`` windows are ready, run through the
        encoder together, stitched, pooled and yielded. ``errors="skip"``: an item that cannot be
        decoded or featurised yields ``EmbedResult(error=...)`` instead of raising.
        """
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
        items = list(items) if not isinstance(items, list) else items
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="embed", unit="file")
        try:
            pending: list[_Prepared] = []
            n_windows = 0
            for i, item in enumerate(items):
                try:
                    prep = self._prepare(i, item, sample_rate=sample_rate)
                except M3bertError as exc:
                    if errors == "raise":
                        raise
                    if on_prepare_error is not None:
                        on_prepare_error(item, exc)
                    # flush what came before so output order is kept
                    yield from self._finish(pending, idx, squeeze, level, pool, batch_size, bar)
                    pending, n_windows = [], 0
                    if bar is not None:
                        bar.update(1)
                    yield EmbedResult(index=i, item=item, error=str(exc))
                    continue
                pending.append(prep)
                n_windows += len(prep.windows)
                if n_windows >= batch_size:
                    yield from self._finish(pending, idx, squeeze, level, pool, batch_size, bar)
                    pending, n_windows = [], 0
            yield from self._finish(pending, idx, squeeze, level, pool, batch_size, bar)
        finally:
            if bar is not None:
                bar.close()

    # -- internals ----------------------------------------------------------------------------
    def _stack_dim(self, idx: list[int]) -> int:
        dims = {self.layer_dims[i] for i in idx}
        if len(dims) != 1:
            raise ConfigError(
                f"layers {idx} have different widths {[self.layer_dims[i] for i in idx]}; "
                "request them separately"
            )
        return dims.pop()

    def _waveform(self, item: Any, sample_rate: int | None) -> tuple[np.ndarray, str]:
        """Decode/validate one input to a mono float32 waveform ``(n_samples,)`` at ``self.sample_rate``."""
        from m3bert.audio import load_audio, resample, validate_waveform

        min_samples = int(getattr(self.feature_set, "min_samples", 1))
        if isinstance(item, (str, os.PathLike)):
            return load_audio(item, sample_rate=self.sample_rate, min_samples=min_samples), str(item)
        where = f"waveform ({type(item).__name__})"
        if isinstance(item, torch.Tensor):
            item = item.detach().to("cpu", torch.float32).numpy()
        if not isinstance(item, np.ndarray):
            raise AudioError(f"{where}: expected a path or a mono waveform (n_samples,) array")
        if sample_rate is None:
            raise AudioError(f"{where}: pass sample_rate= with a waveform (the model expects {self.sample_rate} Hz)")
        x = validate_waveform(item, sample_rate=int(sample_rate), min_samples=1, source=where)
        x = resample(x, orig_sample_rate=int(sample_rate), sample_rate=self.sample_rate)
        return validate_waveform(x, sample_rate=self.sample_rate, min_samples=min_samples, source=where), where

    def _prepare(self, index: int, item: Any, *, sample_rate: int | None) -> _Prepared:
        x, where = self._waveform(item, sample_rate)
        fs = self.feature_set
        normalize = self.cmvn_mode != "clip"
        memo_key = FEATURE_MEMO.key(fs, x, normalize) if FEATURE_MEMO.max_bytes > 0 else None
        feats = FEATURE_MEMO.get(memo_key) if memo_key is not None else None
        if feats is None:
            try:
                feats = fs.extract(x, sample_rate=self.sample_rate, normalize=normalize)
            except M3bertError as exc:
                raise type(exc)(f"{where}: {exc}") from exc
            feats = np.asarray(feats, dtype=np.float32)
            if memo_key is not None:
                FEATURE_MEMO.put(memo_key, feats)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise AudioError(f"{where}: no feature frames (audio of {x.size} samples is too short)")
        n_frames = feats.shape[0]
        starts = window_starts(n_frames, window=self.window_frames, hop=self.hop_frames)
        windows = []
        for s in starts:
            w = feats[s:s + self.window_frames]
            windows.append(_normalize_window(fs, w) if self.cmvn_mode == "clip" else w)
        return _Prepared(index=index, item=item, n_frames=n_frames, n_samples=int(x.size), starts=starts,
                         windows=windows)

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
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.inference_mode(), precision:
                for chunk in chunks:
                    lengths = [windows[k].shape[0] for k in chunk]
                    batch = np.zeros((len(chunk), max(lengths), windows[chunk[0]].shape[1]), dtype=np.float32)
                    for j, k in enumerate(chunk):
                        batch[j, : lengths[j]] = windows[k]
                    frames = torch.from_numpy(batch).to(device)
                    lens = torch.tensor(lengths, dtype=torch.long, device=device)
                    states = self.encoder(frames, lens)
                    sel = torch.stack([states[i].float() for i in idx], dim=1).cpu().numpy()  # (B, n_sel, T, D)
                    for j, k in enumerate(chunk):
                        out[k] = sel[j, :, : lengths[j]]
        finally:
            self.encoder.train(was_training)
        return out  # type: ignore[return-value]

    def _finish(self, pending: list[_Prepared], idx: list[int], squeeze: bool, level: str, pool: str,
                batch_size: int, bar: Any) -> Iterator[EmbedResult]:
        if not pending:
            return
        flat = [w for p in pending for w in p.windows]
        encoded = self._encode_windows(flat, idx, batch_size)
        pos = 0
        for p in pending:
            states = encoded[pos:pos + len(p.windows)]
            pos += len(p.windows)
            frames = _stitch(states, p.starts, p.n_frames, window=self.window_frames)  # (n_sel, T, D)
            if level == "clip":
                out = pool_frames(frames, pool)
                output: Any = out[0] if squeeze else out
            else:
                times = np.asarray(self.feature_set.frame_times_ms(p.n_frames), dtype=np.float64)
                output = (frames[0] if squeeze else frames, times)
            if bar is not None:
                bar.update(1)
            yield EmbedResult(index=p.index, item=p.item, output=output, n_samples=p.n_samples)


def _stitch(states: list[np.ndarray], starts: list[int], n_frames: int, *, window: int) -> np.ndarray:
    """Stitch per-window states ``(n_sel, len_k, D)`` into ``(n_sel, n_frames, D)``."""
    if len(states) == 1:
        return np.ascontiguousarray(states[0])
    owners = window_owners(n_frames, starts, window=window)
    n_sel, _, dim = states[0].shape
    out = np.empty((n_sel, n_frames, dim), dtype=np.float32)
    for k, (s, st) in enumerate(zip(starts, states)):
        t = np.nonzero(owners == k)[0]
        if t.size:
            out[:, t] = st[:, t - s]
    return out


def _cmvn_mode(fs: Any) -> str:
    mode = getattr(getattr(fs, "config", None), "cmvn", "clip")
    if mode not in ("clip", "corpus", "none"):
        raise CheckpointError(f"feature set {fs.name!r}: cmvn={mode!r}; expected 'clip', 'corpus' or 'none'")
    return mode


def _has_corpus_stats(fs: Any) -> bool:
    d = fs.to_dict() if hasattr(fs, "to_dict") else {}
    return bool(d.get("cmvn_stats"))


def _normalize_window(fs: Any, frames: np.ndarray) -> np.ndarray:
    """Clip CMVN of one window ``(window_len, C)`` with the feature set's own CMVN (same eps)."""
    return np.asarray(fs.normalize(frames), dtype=np.float32)
