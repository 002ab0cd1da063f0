"""Representations under test: anything that turns a task's clips into fixed-size vectors.

A representation has a ``name`` (row label in reports), a ``cache_key`` (identity of everything
that shapes its output: weights, settings, code version), ``layer_names`` and
``embed_clips(clips, *, pooling) -> (n_clips, n_layers, D)`` float32. Poolings, the same for every
representation that has frames (encoders, the raw-feature and MFCC baselines, the random encoder),
so rows are compared like for like (issue 17):

* ``"mean"`` -- per layer, the time-average of the frames of the clip (MARBLE / M3BERT downstream setup);
* ``"meanstd"`` -- per layer, the mean and the (population) standard deviation over the frames,
  concatenated (``D`` doubles): the statistics Kim et al. and the classic MFCC baselines use;
* ``"slices-meanstd"`` -- Kim et al. (2020, sec. 4.4.1): the clip is cut into non-overlapping
  2.5 s slices, each slice is embedded on its own, and the mean and the standard deviation over
  slices are concatenated (``D`` doubles). A clip shorter than one slice is one slice.

Sources here: an m3bert model (:class:`ModelRepresentation`, ``--model DIR|RUN|random:CONFIG``),
an embeddings folder (:class:`EmbeddingsDirRepresentation`, ``--embeddings NAME:DIR``; the format
is :mod:`m3bert.embed.folder`'s) and
any HEAR 2021 module (:class:`HearRepresentation`, ``--hear MODULE[:WEIGHTS]``). Hand-made
baselines live in :mod:`m3bert.evaluate.baselines`.

Decoding once, features ahead (issue 18): a representation with ``shares_audio`` splits its work
into :meth:`Representation.prepare_clip` (resampling and features of one clip's audio, which
:class:`ClipAudio` decodes once for every representation of a benchmark; run in a producer thread)
and :meth:`Representation.finish_clips` (the encoder, batched over clips, in the calling thread).
``embed_clips`` runs the two as a pipeline (:func:`m3bert.features.pool.prefetch`);
:meth:`m3bert.evaluate.cache.FeatureCache.get_many` runs them for several representations in one
pass over the clips. The numbers are those of decoding the clip for each representation.

Failures: ``embed_clips(..., on_error=fn)`` calls ``fn(clip, exc)`` for a clip that cannot be
embedded and leaves its row NaN (the caller records and drops it); without ``on_error`` the
first failure raises, naming the file.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from collections import deque
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from m3bert.audio import load_audio, resample, validate_waveform
from m3bert.core.errors import ConfigError, DataError, M3bertError
from m3bert.core.io import file_sha1
from m3bert.core.progress import progress as progress_bar
from m3bert.embed import Embedder, Failed, load_model
from m3bert.embed.folder import EmbeddingsFolder
from m3bert.features.memo import FeatureMemo
from m3bert.features.pool import prefetch
from m3bert.tasks.registry import Clip

POOLINGS = ("mean", "meanstd", "slices-meanstd")
SLICE_SECONDS = 2.5  # Kim et al.'s slice length
#: Clips decoded and prepared (features) ahead of the encoders by the producer thread.
PREFETCH_CLIPS = 8
ErrorHook = Callable[[Clip, Exception], None]


def clip_duration(clip: Clip) -> float | None:
    """Seconds to read for ``clip`` (None = to the end of the file)."""
    if clip.end is None:
        return None
    start = clip.start or 0.0
    if clip.end <= start:
        raise DataError(f"clip {clip.clip_id} ({clip.path}): end={clip.end} <= start={start}")
    return float(clip.end - start)


def load_clip_audio(clip: Clip, *, sample_rate: int) -> np.ndarray:
    """The clip's mono waveform ``(n_samples,)`` at ``sample_rate`` (``m3bert.audio.load_audio``)."""
    return load_audio(clip.path, sample_rate=sample_rate, offset=float(clip.start or 0.0), duration=clip_duration(clip))


class ClipAudio:
    """One clip's audio, decoded once at the file's own rate and resampled on request.

    ``waveform(sample_rate)`` is ``load_clip_audio(clip, sample_rate=...)`` bit for bit (the same
    decode, then the same soxr call on the same samples), so any number of representations at any
    rates share one decode. An audio source for :meth:`m3bert.embed.Embedder.open_job` (``where``
    names it in messages). A decoding failure is kept and raised by every ``waveform`` call.
    """

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self.where = str(clip.path)
        self._native: np.ndarray | None = None  # (n_samples,) at the file's rate
        self._rate: int | None = None
        self._error: M3bertError | None = None
        self._by_rate: dict[int, np.ndarray] = {}

    def decode(self) -> "ClipAudio":
        """Decode now (in a producer thread); a failure is kept for ``waveform``."""
        if self._native is None and self._error is None:
            try:
                rate: int | None = int(sf.info(self.where).samplerate)
            except Exception:  # missing or unreadable: load_audio below says why, naming the file
                rate = None
            try:
                if rate is None:
                    load_clip_audio(self.clip, sample_rate=44100)
                    return self  # readable after all (a name soundfile.info refuses): decoded per rate
                self._native = load_audio(self.clip.path, sample_rate=rate, offset=float(self.clip.start or 0.0),
                                          duration=clip_duration(self.clip), min_samples=1)
                self._rate = rate
            except M3bertError as exc:
                self._error = exc
        return self

    def waveform(self, sample_rate: int) -> np.ndarray:
        """The clip at ``sample_rate``: mono float32 ``(n_samples,)``, checked as ``load_audio`` checks it."""
        if self._error is not None:
            raise self._error
        if self._native is None:
            self.decode()
            if self._error is not None:
                raise self._error
            if self._native is None:
                return load_clip_audio(self.clip, sample_rate=sample_rate)
        sr = int(sample_rate)
        if sr not in self._by_rate:
            y = resample(self._native, orig_sample_rate=int(self._rate), sample_rate=sr)
            self._by_rate[sr] = validate_waveform(y, sample_rate=sr, source=self.where)
        return self._by_rate[sr]

    def release(self) -> None:
        """Let go of the samples (the representations have prepared the clip)."""
        self._native, self._by_rate = None, {}
        if self._error is None:
            self._error = DataError(f"{self.where}: audio released (internal error: used after preparation)")


def slice_waveform(waveform: np.ndarray, *, sample_rate: int, seconds: float = SLICE_SECONDS) -> list[np.ndarray]:
    """Non-overlapping ``seconds``-long slices ``[(n,), ...]``; the remainder is dropped (Kim et al.);
    a waveform shorter than one slice is returned whole."""
    n = int(round(seconds * sample_rate))
    if waveform.shape[0] < n:
        return [waveform]
    return [waveform[i:i + n] for i in range(0, waveform.shape[0] - n + 1, n)]


def frame_stats(frames: np.ndarray, pooling: str) -> np.ndarray:
    """Frames ``(n_frames, C)`` -> ``(C,)`` mean (``"mean"``) or ``(2C,)`` mean and std (``"meanstd"``), float32."""
    mean = frames.mean(0)
    if pooling == "mean":
        return mean.astype(np.float32)
    return np.concatenate([mean, frames.std(0)]).astype(np.float32)


def mean_std_over(slices: np.ndarray) -> np.ndarray:
    """``(n_slices, L, D) -> (L, 2D)``: mean and (population) std over slices, concatenated."""
    return np.concatenate([slices.mean(0), slices.std(0)], axis=-1).astype(np.float32)


def stack_layers(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Per-layer vectors of possibly different widths -> ``(L, D_max)``, zero-padded.

    Zero columns are inert for the probes (standardised to 0, so their weights never move)."""
    width = max(int(v.shape[-1]) for v in vectors)
    out = np.zeros((len(vectors), width), np.float32)
    for i, v in enumerate(vectors):
        out[i, : v.shape[-1]] = v
    return out


class Representation:
    """Base class: subclasses set ``name`` and implement ``cache_key``, ``layer_names`` and ``embed_clip``."""

    name: str = ""
    kind: str = "representation"  # "model" | "baseline" | "embeddings" | "hear" | "chance"
    poolings: tuple[str, ...] = POOLINGS  # poolings it can produce
    predictor: str | None = None  # "chance": evaluated without a probe
    cacheable: bool = True  # False when extraction is free (chance)
    shares_audio: bool = False  # True: prepare_clip / finish_clips take audio decoded once (ClipAudio)

    @property
    def cache_key(self) -> str:
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What results.json records about this representation."""
        return {"name": self.name, "kind": self.kind, "cache_key": self.cache_key, "layer_names": self.layer_names}

    def sharing_input_features(self, memo: FeatureMemo) -> ContextManager[None]:
        """Within the block, share input features with other representations through ``memo``
        (models over the same audio); representations without input features ignore it."""
        return contextlib.nullcontext()

    def check_pooling(self, pooling: str) -> None:
        if pooling not in self.poolings:
            raise ConfigError(f"representation {self.name!r} cannot pool {pooling!r}; it supports {list(self.poolings)}")

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        """``(n_layers, D)`` for one clip."""
        raise NotImplementedError

    def prepare_clip(self, audio: ClipAudio, *, pooling: str) -> Any:
        """Stage 1 (``shares_audio``), in a producer thread: the work that needs no encoder
        (resampling, features) on the clip's shared audio. Default: nothing (``audio`` itself)."""
        return audio

    def finish_clips(self, prepared: Iterable[Any], *, pooling: str) -> Iterator[np.ndarray | M3bertError]:
        """Stage 2, in the calling thread: per prepared clip, in order, its row ``(n_layers, D)`` or
        the ``M3bertError`` that stopped it. Default: :meth:`embed_clip` of each clip."""
        for audio in prepared:
            try:
                yield np.asarray(self.embed_clip(audio.clip, pooling=pooling), dtype=np.float32)
            except M3bertError as exc:
                yield exc

    def embed_clips(self, clips: Sequence[Clip], *, pooling: str = "mean", progress: bool = False,
                    on_error: ErrorHook | None = None) -> np.ndarray:
        """``(n_clips, n_layers, D)`` float32; failed rows are NaN when ``on_error`` is given."""
        self.check_pooling(pooling)
        rows: list[np.ndarray | None] = []
        bar = progress_bar(total=len(clips), desc=f"embed {self.name}", unit="clip", leave=False) if progress else None
        if self.shares_audio:  # decoding and features in a producer thread, the encoder here
            results: Iterable[Any] = self.finish_clips(prefetch(self._prepared(clips, pooling), depth=PREFETCH_CLIPS),
                                                      pooling=pooling)
        else:
            results = self.finish_clips((ClipAudio(c) for c in clips), pooling=pooling)
        try:
            for clip, row in zip(clips, results):
                if isinstance(row, M3bertError):
                    if on_error is None:
                        raise row
                    on_error(clip, row)
                    rows.append(None)
                else:
                    rows.append(np.asarray(row, dtype=np.float32))
                if bar is not None:
                    bar.update(1)
        finally:
            getattr(results, "close", lambda: None)()
            if bar is not None:
                bar.close()
        return fill_failed(rows, len(self.layer_names))

    def _prepared(self, clips: Sequence[Clip], pooling: str) -> Iterator[Any]:
        for clip in clips:
            audio = ClipAudio(clip).decode()
            try:
                yield self.prepare_clip(audio, pooling=pooling)
            finally:
                audio.release()


def fill_failed(rows: list[np.ndarray | None], n_layers: int) -> np.ndarray:
    good = [r for r in rows if r is not None]
    shape = good[0].shape if good else (n_layers, 0)
    out = np.full((len(rows), *shape), np.nan, np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            if r.shape != shape:
                raise DataError(f"embedding {i} has shape {r.shape}, the others {shape}")
            out[i] = r
    return out


class ModelRepresentation(Representation):
    """An m3bert model through :func:`m3bert.embed.load_model`: every hidden state, pooled over the
    clip's frames (``mean``, ``meanstd``) or over Kim's slices (``slices-meanstd``).

    ``embedder``: an already loaded model for ``spec`` (else it is loaded). ``feature_memo``: a
    :class:`~m3bert.features.memo.FeatureMemo` the model shares with others over the same audio
    for its whole life; without one, :meth:`sharing_input_features` lends it one for a block
    (``run_benchmark`` does, for one run).
    """

    kind = "model"
    shares_audio = True

    def __init__(self, spec: str, *, name: str | None = None, batch_size: int = 8, embedder: Embedder | None = None,
                 feature_memo: FeatureMemo | None = None) -> None:
        if embedder is None:
            embedder = load_model(spec, feature_memo=feature_memo)
        elif feature_memo is not None:
            embedder.feature_memo = feature_memo
        self.embedder = embedder
        self.spec = str(spec)
        self.name = name or _default_model_name(self.spec)
        self.batch_size = int(batch_size)

    @property
    def cache_key(self) -> str:
        e = self.embedder
        settings = [getattr(e, a, None) for a in ("dtype", "window_frames", "hop_frames", "cmvn_mode")]
        return f"model:{e.model_id}:" + ":".join(str(s) for s in settings)

    @property
    def layer_names(self) -> list[str]:
        n = int(self.embedder.n_hidden_states)
        names = ["input"] + [f"layer{i}" for i in range(1, n)]
        enc = getattr(self.embedder, "encoder", None)
        if enc is not None and getattr(enc, "enrichment", None) is not None:
            names[-1] = "enrichment"
        return names

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "spec": self.spec, "model_id": self.embedder.model_id,
                "layer_dims": list(self.embedder.layer_dims)}

    @contextlib.contextmanager
    def sharing_input_features(self, memo: FeatureMemo) -> Iterator[None]:
        """The model reads and fills ``memo`` within the block, unless it has a memo of its own."""
        if self.embedder.feature_memo is not None:
            yield
            return
        self.embedder.feature_memo = memo
        try:
            yield
        finally:
            self.embedder.feature_memo = None

    def prepare_clip(self, audio: ClipAudio, *, pooling: str) -> list[Any]:
        """The clip's encoder jobs (``Embedder.open_job``: features and windows; a :class:`Failed`
        names what went wrong): one job, or one per 2.5 s slice with ``slices-meanstd``."""
        if pooling != "slices-meanstd":
            return [self.embedder.open_job(audio)]
        sr = int(self.embedder.sample_rate)
        try:
            slices = slice_waveform(audio.waveform(sr), sample_rate=sr)
        except M3bertError as exc:
            return [Failed(exc, exc)]
        return [self.embedder.open_job(s, sample_rate=sr, index=k) for k, s in enumerate(slices)]

    def finish_clips(self, prepared: Iterable[list[Any]], *, pooling: str) -> Iterator[np.ndarray | M3bertError]:
        """The encoder over the jobs of consecutive clips, batched together (``Embedder.iter_jobs``)."""
        sizes: deque[int] = deque()

        def jobs() -> Iterator[tuple[int, Any, Any]]:
            k = 0
            for clip_jobs in prepared:
                sizes.append(len(clip_jobs))
                for job in clip_jobs:
                    yield k, getattr(job, "item", None), job
                    k += 1

        pool = "mean" if pooling == "slices-meanstd" else pooling
        group: list[Any] = []
        results = self.embedder.iter_jobs(jobs(), level="clip", layers="all", pool=pool, batch_size=self.batch_size,
                                          errors="skip")
        for res in results:
            group.append(res)
            if len(group) < sizes[0]:
                continue
            sizes.popleft()
            failed = next((r.exception for r in group if r.exception is not None), None)
            if failed is not None:
                yield failed
            else:
                vecs = np.stack([stack_layers(list(r.output)) for r in group])  # (n_slices, L, D)
                yield vecs[0] if pooling != "slices-meanstd" else mean_std_over(vecs)
            group = []

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        return self.embed_clips([clip], pooling=pooling)[0]


def _default_model_name(spec: str) -> str:
    if spec.startswith("random:"):
        return spec
    p = Path(spec)
    return p.name if p.name not in ("best", "last", "checkpoints") else f"{p.parent.parent.name}/{p.name}"


class EmbeddingsDirRepresentation(Representation):
    """Precomputed embeddings: an embeddings folder, one file per audio file mirroring the dataset tree.

    Files are found and read by :class:`m3bert.embed.folder.EmbeddingsFolder`: the file for
    ``ROOT/a/b/song.wav`` is ``DIR/a/b/song.npy`` or ``DIR/a/b/song.wav.npy`` (what ``m3bert
    embed`` writes), any of its shapes becomes one vector per layer (frames are time-averaged).
    Clips that are time ranges of one file all get the file's vector (the files carry no time
    stamps); ``describe()`` says so. Only ``mean`` pooling (the files are already pooled).
    """

    kind = "embeddings"
    poolings = ("mean",)
    cacheable = False  # the files can change under us: never cache their pooled copies

    def __init__(self, name: str, directory: str | Path, *, dataset_root: str | Path | None = None,
                 folder: EmbeddingsFolder | None = None) -> None:
        self.name = name
        if folder is None:
            if not Path(directory).is_dir():
                raise ConfigError(f"--embeddings {name}:{directory}: not a folder")
            folder = EmbeddingsFolder(directory)
        self.folder = folder
        self.directory = folder.directory
        self.settings = folder.settings
        self.dataset_root = Path(dataset_root) if dataset_root is not None else None
        self._n_layers: int | None = None

    def for_task(self, root: str | Path | None) -> "EmbeddingsDirRepresentation":
        """The same embeddings, with file paths taken relative to a task's dataset root."""
        return EmbeddingsDirRepresentation(self.name, self.directory, dataset_root=root, folder=self.folder)

    @property
    def cache_key(self) -> str:
        return f"embeddings:{self.directory.resolve()}"

    @property
    def layer_names(self) -> list[str]:
        """``layer<i>``, and ``"input"`` for hidden state 0 when ``embed.json`` lists the layers
        written (``m3bert embed --layers all``), so weighted sums leave it out as for a model."""
        n = self._n_layers or 1
        layers = self.settings.get("layers") if isinstance(self.settings, dict) else None
        if isinstance(layers, list) and len(layers) == n and all(isinstance(i, int) for i in layers):
            return ["input" if i == 0 else f"layer{i}" for i in layers]
        return [f"layer{i}" for i in range(n)]

    def key_for(self, clip: Clip) -> str:
        """The folder key of a clip's audio file: its path relative to the dataset root."""
        if self.dataset_root is None:
            raise ConfigError(f"--embeddings {self.name}: the task has no dataset root to match {clip.path} against")
        try:
            rel = Path(clip.path).resolve().relative_to(self.dataset_root.resolve())
        except ValueError:
            raise DataError(f"--embeddings {self.name}: {clip.path} is not under the dataset root {self.dataset_root}") from None
        return rel.as_posix()

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        out = self.folder.layer_vectors(self.key_for(clip))
        self._n_layers = out.shape[0]
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "directory": str(self.directory), "settings": self.settings,
                "note": "one vector per audio file; clips that are time ranges of a file share it"}


class HearRepresentation(Representation):
    """Any HEAR 2021 module: ``load_model([weights])`` + ``get_scene_embeddings(audio (n, samples), model) -> (n, D)``.

    Poolings: ``mean`` is the module's scene embedding and ``slices-meanstd`` mean+std of the
    slices' scene embeddings; no ``meanstd`` (the scene API gives no frames to take a std over)."""

    kind = "hear"
    poolings = ("mean", "slices-meanstd")

    def __init__(self, module: str, weights: str | None = None, *, name: str | None = None) -> None:
        try:
            self.module = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--hear {module}: cannot import the module ({exc})") from None
        for attr in ("load_model", "get_scene_embeddings"):
            if not hasattr(self.module, attr):
                raise ConfigError(f"--hear {module}: not a HEAR module (no {attr}())")
        self.module_name = module
        self.weights = weights
        self.model = self.module.load_model(weights) if weights else self.module.load_model()
        if not hasattr(self.model, "sample_rate"):
            raise ConfigError(f"--hear {module}: the model has no sample_rate attribute (HEAR API)")
        self.sample_rate = int(self.model.sample_rate)
        self.name = name or (f"hear:{module}" + (f":{Path(weights).name}" if weights else ""))

    @property
    def cache_key(self) -> str:
        version = getattr(self.module, "__version__", "")
        wid = ""
        if self.weights and Path(self.weights).is_file():
            wid = file_sha1(self.weights)
        elif self.weights:
            wid = str(self.weights)
        return f"hear:{self.module_name}:{version}:{wid}"

    @property
    def layer_names(self) -> list[str]:
        return ["scene"]

    def _scene(self, wave: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            emb = self.module.get_scene_embeddings(torch.from_numpy(np.ascontiguousarray(wave, np.float32))[None], self.model)
        emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != 1:
            raise DataError(f"--hear {self.module_name}: get_scene_embeddings returned shape {emb.shape}, expected (1, D)")
        return emb[0].astype(np.float32)

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        wave = load_clip_audio(clip, sample_rate=self.sample_rate)
        if pooling == "mean":
            return self._scene(wave)[None]
        return mean_std_over(np.stack([self._scene(s)[None] for s in slice_waveform(wave, sample_rate=self.sample_rate)]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "module": self.module_name, "weights": self.weights}
