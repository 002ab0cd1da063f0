"""Baselines every benchmark table should carry, registered by name (``--baseline NAME``).

* ``mfcc``   -- Kim et al. (2020)'s MFCC baseline: 20 MFCCs + delta + delta-delta (librosa,
  22,050 Hz, n_fft 2048, hop 512) = 60 per frame; Kim's 120-d statistics are its ``meanstd``.
* ``raw``    -- the encoder's own input: the 324-d M3BERT frames (``m3bert324``, not normalised:
  per-clip CMVN would erase the means). What pre-training adds is the gap between a model and
  this row.
* ``random`` -- the same encoder with random weights (``random:m2bert-small``, seed 0): what the
  architecture gives without pre-training (Greer et al.'s "M2BERT, no pretraining" row).
* ``chance`` -- no features: predicts the training prior (majority class, tag prevalence, train
  mean); the floor of every metric.

Pooling is the benchmark's, as for the encoders (issue 17: like for like): ``mean`` = the
time-mean of the frames (60-d MFCC, 324-d raw), ``meanstd`` = mean and std concatenated (120-d,
648-d); ``slices-meanstd`` (Kim) cuts 2.5 s slices, takes each slice's mean and std, then mean and
std over the slices (240-d, 1296-d), as before. (Until version 1 the frame baselines gave mean+std
whatever the pooling; ``BASELINE_VERSION`` 2 keys their caches apart.)

The statistics are computed in the benchmark's producer thread from the clip's audio decoded
once for every representation (``prepare_clip``); see :mod:`m3bert.evaluate.representations`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import librosa
import numpy as np

from m3bert.core.errors import DataError, M3bertError
from m3bert.core.registry import Registry
from m3bert.evaluate.representations import (
    ClipAudio,
    ModelRepresentation,
    Representation,
    frame_stats,
    load_clip_audio,
    mean_std_over,
    slice_waveform,
)
from m3bert.features import get_feature_set
from m3bert.features.memo import FeatureMemo
from m3bert.tasks.registry import Clip

BASELINE_VERSION = 2  # bump when a baseline's numbers would change: it is part of the cache key
BASELINES = Registry("baseline")  # name -> factory(**kwargs) -> Representation


def get_baseline(name: str, **kwargs: Any) -> Representation:
    """A new baseline representation by name; an unknown name is a ``ConfigError`` listing the known ones."""
    return BASELINES.lookup(name)(**kwargs)


def available_baselines() -> list[str]:
    return sorted(BASELINES)


class StatsBaseline(Representation):
    """Frame-level features summarised over time by the benchmark's pooling (one 'layer')."""

    kind = "baseline"
    sample_rate: int = 22050
    shares_audio = True

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """``(n_samples,) -> (n_frames, C)``."""
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        return [self.name]

    def stats(self, wave: np.ndarray, pooling: str = "meanstd") -> np.ndarray:
        """``(1, C)`` time-mean (``"mean"``) or ``(1, 2C)`` mean and std (``"meanstd"``) of the frames."""
        f = self.frames(wave)
        if f.ndim != 2 or f.shape[0] == 0 or not np.all(np.isfinite(f)):
            raise DataError(f"baseline {self.name}: frames of shape {f.shape} (or non-finite), expected (n_frames >= 1, C)")
        return frame_stats(f, pooling)[None]

    def pool_waveform(self, wave: np.ndarray, pooling: str) -> np.ndarray:
        """The clip's row ``(1, D)`` for ``pooling`` from its waveform at ``self.sample_rate``."""
        if pooling != "slices-meanstd":
            return self.stats(wave, pooling)
        slices = slice_waveform(wave, sample_rate=self.sample_rate)
        return mean_std_over(np.stack([self.stats(s, "meanstd") for s in slices]))

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        self.check_pooling(pooling)
        return self.pool_waveform(load_clip_audio(clip, sample_rate=self.sample_rate), pooling)

    def prepare_clip(self, audio: ClipAudio, *, pooling: str) -> np.ndarray | M3bertError:
        """The whole work, in the producer thread: the row, or the failure naming the clip."""
        try:
            return self.pool_waveform(audio.waveform(self.sample_rate), pooling)
        except M3bertError as exc:
            return exc

    def finish_clips(self, prepared: Iterable[Any], *, pooling: str) -> Iterator[np.ndarray | M3bertError]:
        yield from prepared


@BASELINES.register("mfcc")
class MfccBaseline(StatsBaseline):
    name = "mfcc"

    def __init__(self, *, n_mfcc: int = 20, n_fft: int = 2048, hop_length: int = 512, sample_rate: int = 22050) -> None:
        self.n_mfcc = n_mfcc
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.sample_rate = sample_rate

    @property
    def cache_key(self) -> str:
        return (f"baseline:mfcc:v{BASELINE_VERSION}:sr{self.sample_rate}:n{self.n_mfcc}:fft{self.n_fft}:"
                f"hop{self.hop_length}:librosa{librosa.__version__}")

    def frames(self, wave: np.ndarray) -> np.ndarray:
        m = librosa.feature.mfcc(y=wave, sr=self.sample_rate, n_mfcc=self.n_mfcc, n_fft=self.n_fft,
                                 hop_length=self.hop_length)  # (20, T)
        # librosa.feature.delta needs at least `width` (9) frames; short clips use the widest odd width that fits
        width = min(9, m.shape[1] if m.shape[1] % 2 else m.shape[1] - 1)
        if width < 3:
            raise DataError(f"baseline mfcc: clip too short for deltas ({m.shape[1]} frames)")
        d1 = librosa.feature.delta(m, width=width, order=1)
        d2 = librosa.feature.delta(m, width=width, order=2)
        return np.concatenate([m, d1, d2]).T  # (T, 60)


@BASELINES.register("raw")
class RawFeaturesBaseline(StatsBaseline):
    """The encoder's input frames. Within ``sharing_input_features`` it reads the frames a model
    over the same clip already extracted (un-normalised, the same feature configuration) from the
    shared memo instead of extracting them again: the same numbers, one extraction per clip."""

    name = "raw"

    def __init__(self, feature_set: str = "m3bert324") -> None:
        self.fs = get_feature_set(feature_set)
        self.sample_rate = int(self.fs.sample_rate)
        self.feature_memo: FeatureMemo | None = None  # lent by sharing_input_features

    @property
    def cache_key(self) -> str:
        return f"baseline:raw:v{BASELINE_VERSION}:{self.fs.name}:{self.fs.config_hash(with_stats=False)}"

    @contextlib.contextmanager
    def sharing_input_features(self, memo: FeatureMemo) -> Iterator[None]:
        if self.feature_memo is not None:
            yield
            return
        self.feature_memo = memo
        try:
            yield
        finally:
            self.feature_memo = None

    def frames(self, wave: np.ndarray) -> np.ndarray:
        memo = self.feature_memo
        key = memo.key(self.fs, wave, False) if memo is not None and memo.max_bytes > 0 else None
        hit = memo.get(key) if key is not None else None
        if hit is not None:
            return hit
        frames = np.asarray(self.fs.extract(wave, sample_rate=self.sample_rate, normalize=False), dtype=np.float32)
        if key is not None:
            memo.put(key, frames)
        return frames


@BASELINES.register("chance")
class ChanceBaseline(Representation):
    """No features: the runner predicts the training prior for this row."""

    name = "chance"
    kind = "chance"
    predictor = "chance"
    cacheable = False

    @property
    def cache_key(self) -> str:
        return "baseline:chance"

    @property
    def layer_names(self) -> list[str]:
        return ["none"]

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        return np.zeros((1, 0), np.float32)  # never reads audio


@BASELINES.register("random")
def random_encoder(**kwargs: Any) -> Representation:
    """The m2bert-small encoder with random weights (seed 0): the architecture without pre-training."""
    return ModelRepresentation("random:m2bert-small", name="random", **kwargs)
