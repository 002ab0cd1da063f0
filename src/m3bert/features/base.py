"""The :class:`FeatureSet` base class: everything a feature set shares except its maths.

A concrete feature set (see ``m3bert324.py``) provides a frozen config dataclass (with at least
``sample_rate``, ``hop_length``, ``n_fft`` and ``cmvn``), a :class:`FeatureSpec`, and one raw
(un-normalised) extractor per backend name in ``backends``. This class adds validation,
resampling, batching, CMVN, frame timing, serialisation and identity hashing, so a new feature set
(Wu et al.'s worker targets, Kim et al.'s stereo mel) is one config + one or two functions +
``@register_feature_set(name)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from m3bert.audio import resample, validate_waveform
from m3bert.core.errors import AudioError, ConfigError, DataError
from m3bert.core.io import config_hash as _hash
from m3bert.features.normalize import cmvn_apply, cmvn_clip, cmvn_seed
from m3bert.features.spec import FeatureSpec

#: CMVN scopes a feature set may be configured with (see ``normalize.py``).
CMVN_MODES = ("clip", "corpus", "none", "seed")


class FeatureSet:
    """A named, configured waveform -> frames transform ``(n_samples,) -> (n_frames, n_channels)``.

    Frames are centred: frame ``t`` is centred on sample ``t * hop_length`` and
    ``n_frames = 1 + n_samples // hop_length``.
    """

    #: backend name -> name of the method computing raw frames for a list of waveforms
    #: ``(list[(n_samples_i,)]) -> list[(n_frames_i, n_channels)]`` at ``self.sample_rate``.
    backends: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, config: Any, spec: FeatureSpec) -> None:
        if getattr(config, "cmvn", "none") not in CMVN_MODES:
            raise ConfigError(f"feature set {name!r}: cmvn must be one of {list(CMVN_MODES)}, got {config.cmvn!r}")
        self.name = name
        self.config = config
        self.spec = spec
        self._cmvn_mean: np.ndarray | None = None
        self._cmvn_std: np.ndarray | None = None

    # ------------------------------------------------------------------ geometry and timing
    @property
    def n_channels(self) -> int:
        return self.spec.n_channels

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.config.hop_length)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def min_samples(self) -> int:
        """Shortest waveform accepted (one analysis window)."""
        return int(self.config.n_fft)

    def n_frames(self, n_samples: int) -> int:
        """Number of centred frames for ``n_samples`` samples at ``self.sample_rate``."""
        return 1 + int(n_samples) // self.hop_length

    def frame_times_ms(self, n_frames: int) -> np.ndarray:
        """Centre time of each frame in milliseconds, ``(n_frames,)`` float64."""
        return np.arange(int(n_frames), dtype=np.float64) * (1000.0 * self.hop_length / self.sample_rate)

    # ------------------------------------------------------------------ extraction
    def extract(self, waveform: np.ndarray, *, sample_rate: int, normalize: bool = True,
                backend: str = "fast") -> np.ndarray:
        """Frames of one mono waveform ``(n_samples,)`` -> ``(n_frames, n_channels)`` float32."""
        return self.extract_batch([waveform], sample_rate=sample_rate, normalize=normalize, backend=backend)[0]

    def extract_batch(self, waveforms: Sequence[np.ndarray], *, sample_rate: int, normalize: bool = True,
                      backend: str = "fast") -> list[np.ndarray]:
        """Frames of several waveforms (any lengths) -> ``[(n_frames_i, n_channels)]`` float32.

        Equal to calling :meth:`extract` on each; the fast backend shares one batched STFT.
        """
        if backend not in self.backends:
            raise ConfigError(f"feature set {self.name!r}: unknown backend {backend!r}; "
                              f"expected one of {sorted(self.backends)}")
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            raise DataError("extract_batch expects a list of waveforms; use extract() for a single (n_samples,) array")
        ready = []
        for i, w in enumerate(waveforms):
            # validate at the input rate first, so an error names what the caller passed
            x = validate_waveform(w, sample_rate=sample_rate, min_samples=1, source=f"waveform {i}")
            x = resample(x, orig_sample_rate=sample_rate, sample_rate=self.sample_rate)
            ready.append(validate_waveform(x, sample_rate=self.sample_rate, min_samples=self.min_samples,
                                           source=f"waveform {i}"))
        if not ready:
            return []
        raw: list[np.ndarray] = getattr(self, self.backends[backend])(ready)
        for i, (x, f) in enumerate(zip(ready, raw)):
            expected = (self.n_frames(x.shape[0]), self.n_channels)
            if f.shape != expected:  # pragma: no cover - guards backend bugs
                raise DataError(f"{self.name}/{backend}: produced {f.shape}, expected {expected}")
            if not np.isfinite(f).all():  # validate_waveform bounds the samples, so this is a last guard
                raise AudioError(f"waveform {i}: {self.name} features are not finite (peak sample "
                                 f"{float(np.abs(x).max()):.3g}); expected audio of plausible magnitude")
        return [self.normalize(f) for f in raw] if normalize else raw

    # ------------------------------------------------------------------ CMVN
    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """Apply this feature set's CMVN to raw ``(n_frames, n_channels)`` frames."""
        mode = self.config.cmvn
        eps = float(getattr(self.config, "cmvn_eps", 1e-3))
        if mode == "clip":
            return cmvn_clip(frames, eps=eps)
        if mode == "seed":
            return cmvn_seed(frames)
        if mode == "corpus":
            if self._cmvn_mean is None:
                raise ConfigError(f"feature set {self.name!r} uses corpus CMVN but has no statistics; compute them "
                                  f"over a feature store (FeatureStore.open(...).feature_set has them) or call "
                                  f"set_cmvn_stats(mean, std)")
            return cmvn_apply(frames, mean=self._cmvn_mean, std=self._cmvn_std, eps=eps)
        return np.asarray(frames, dtype=np.float32)

    def set_cmvn_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Corpus CMVN statistics, each ``(n_channels,)``."""
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean.shape != (self.n_channels,) or std.shape != (self.n_channels,):
            raise ConfigError(f"feature set {self.name!r}: CMVN statistics must have shape ({self.n_channels},), "
                              f"got mean {mean.shape}, std {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            raise ConfigError(f"feature set {self.name!r}: CMVN statistics must be finite with std >= 0")
        self._cmvn_mean, self._cmvn_std = mean, std

    @property
    def cmvn_stats(self) -> dict[str, list[float]] | None:
        if self._cmvn_mean is None:
            return None
        return {"mean": self._cmvn_mean.tolist(), "std": self._cmvn_std.tolist()}

    # ------------------------------------------------------------------ identity
    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config_dict(), "cmvn_stats": self.cmvn_stats}

    def config_hash(self, *, with_stats: bool = True) -> str:
        """Short stable hash of name + config (+ CMVN statistics unless ``with_stats=False``)."""
        d = self.to_dict()
        if not with_stats or d["cmvn_stats"] is None:
            d.pop("cmvn_stats")
        return _hash(d)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_channels={self.n_channels}, config={self.config})"


def register_backend(cls: type[FeatureSet], name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator attaching a raw-extraction method to a feature-set class under a backend name."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        attr = f"_backend_{name}"
        setattr(cls, attr, fn)
        cls.backends = {**cls.backends, name: attr}
        return fn

    return deco
