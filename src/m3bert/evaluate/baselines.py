"""Baselines every benchmark table should carry, registered by name (``--baseline NAME``).

* ``mfcc``   -- Kim et al. (2020)'s MFCC baseline: 20 MFCCs + delta + delta-delta (librosa,
  22,050 Hz, n_fft 2048, hop 512), mean and std over time = 120-d.
* ``raw``    -- the encoder's own input: the 324-d M3BERT frames (``m3bert324``, not normalised:
  per-clip CMVN would erase the means), mean and std over time = 648-d. What pre-training adds
  is the gap between a model and this row.
* ``random`` -- the same encoder with random weights (``random:m2bert-small``, seed 0): what the
  architecture gives without pre-training (Greer et al.'s "M2BERT, no pretraining" row).
* ``chance`` -- no features: predicts the training prior (majority class, tag prevalence, train
  mean); the floor of every metric.

Hand-made statistics are already pooled over the whole clip, so they ignore ``pooling`` except
that ``slices-meanstd`` (Kim) cuts 2.5 s slices, pools each, and takes mean+std over slices.
"""

from __future__ import annotations

from typing import Any

import librosa
import numpy as np

from m3bert.core.errors import DataError
from m3bert.core.registry import Registry
from m3bert.evaluate.representations import ModelRepresentation, Representation, load_clip_audio, mean_std_over, slice_waveform
from m3bert.features import get_feature_set
from m3bert.tasks.registry import Clip

BASELINE_VERSION = 1  # bump when a baseline's numbers would change: it is part of the cache key
BASELINES = Registry("baseline")  # name -> factory(**kwargs) -> Representation


def get_baseline(name: str, **kwargs: Any) -> Representation:
    """A new baseline representation by name; an unknown name is a ``ConfigError`` listing the known ones."""
    return BASELINES.lookup(name)(**kwargs)


def available_baselines() -> list[str]:
    return sorted(BASELINES)


class StatsBaseline(Representation):
    """Frame-level features summarised by mean and std over time (one 'layer')."""

    kind = "baseline"
    sample_rate: int = 22050

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """``(n_samples,) -> (n_frames, C)``."""
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        return [self.name]

    def stats(self, wave: np.ndarray) -> np.ndarray:
        f = self.frames(wave)
        if f.ndim != 2 or f.shape[0] == 0 or not np.all(np.isfinite(f)):
            raise DataError(f"baseline {self.name}: frames of shape {f.shape} (or non-finite), expected (n_frames >= 1, C)")
        return np.concatenate([f.mean(0), f.std(0)]).astype(np.float32)[None]  # (1, 2C)

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        self.check_pooling(pooling)
        wave = load_clip_audio(clip, sample_rate=self.sample_rate)
        if pooling == "mean":
            return self.stats(wave)
        return mean_std_over(np.stack([self.stats(s) for s in slice_waveform(wave, sample_rate=self.sample_rate)]))


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
    name = "raw"

    def __init__(self, feature_set: str = "m3bert324") -> None:
        self.fs = get_feature_set(feature_set)
        self.sample_rate = int(self.fs.sample_rate)

    @property
    def cache_key(self) -> str:
        return f"baseline:raw:v{BASELINE_VERSION}:{self.fs.name}:{self.fs.config_hash(with_stats=False)}"

    def frames(self, wave: np.ndarray) -> np.ndarray:
        return self.fs.extract(wave, sample_rate=self.sample_rate, normalize=False)


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
