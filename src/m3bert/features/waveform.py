"""The raw waveform as frames, registered as ``wave16k``: the input of the PASE / PASE+ encoders.

Wu et al. 2021 (sec. 3.1) pre-train PASE and PASE+ (Pascual et al. 2019; Ravanelli et al. 2020),
which read the raw waveform at 16 kHz and emit one vector every 160 samples (10 ms, the product of
their conv strides). To pass that waveform through the feature store, the Embedder's windows and
``m3bert features`` unchanged, ``wave16k`` presents the mono 16 kHz signal as frames of
``hop_length`` = 160 consecutive samples: ``(n_frames, 160)`` float32 with
``n_frames = 1 + n_samples // 160``, the frame count of every centred feature set here (and of
librosa's ``center=True`` frames at hop 160, Wu's worker targets). Flattening the frames gives the
waveform back (:func:`frames_to_waveform`).

Alignment (our choice, stated): frame ``t`` holds samples ``160 t - 80 .. 160 t + 79``, i.e. the
signal is shifted by half a frame (80 zeros in front, zeros after the end). So frame ``t`` is
centred on sample ``160 t`` (to half a sample), exactly where a centred librosa frame ``t`` of the
worker targets is centred, and where :meth:`FeatureSet.frame_times_ms` places it (``10 t`` ms).
The price: samples after ``160 (n_frames - 1) + 79`` (at most 79, < 5 ms at the very end) are in no
frame, as a centred STFT frame reaches only ``n_fft / 2`` past its centre.
Without the shift (frame ``t`` = samples ``160 t .. 160 t + 159``) every encoder frame would sit
5 ms after its target frame. The encoders in :mod:`m3bert.models.pase` keep that centre: their
output frame ``t`` is centred on the centre of input frame ``t`` (to 5 samples, 0.3 ms).

No CMVN by default (``cmvn="none"``): the encoders read the raw waveform, as in PASE. ``gain="rms"``
optionally scales each extracted waveform (the store's examples of at most 30 s, the Embedder's
whole input) to ``target_rms``; PASE itself only scales randomly during training.

Backends: ``fast`` and ``reference`` are the same framing (there is nothing to approximate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.features.base import CMVN_MODES, FeatureSet, register_backend
from m3bert.features.spec import FeatureSpec, dataclass_replace_checked, register_feature_set

NAME = "wave16k"
GAINS = ("none", "rms")
RMS_FLOOR = 1e-3  # -60 dBFS: below it a clip is scaled as if it were this loud (silence is not blown up to noise)


@dataclass(frozen=True)
class WaveformConfig:
    """16 kHz mono waveform in frames of ``hop_length`` samples, frame ``t`` centred on sample ``hop_length * t``."""

    sample_rate: int = 16000  # Hz (PASE / PASE+ and Wu et al.: 16 kHz)
    hop_length: int = 160  # samples per frame = channels per frame (10 ms, the encoders' total stride)
    min_samples: int = 160  # shortest input accepted (one frame)
    gain: str = "none"  # "none" (raw samples, PASE) | "rms" (each waveform scaled to target_rms)
    target_rms: float = 0.1  # RMS after gain="rms" (-20 dBFS)
    cmvn: str = "none"  # "none" (raw waveform); "clip"/"corpus" would standardise each of the 160 sample phases
    cmvn_eps: float = 1e-3  # CMVN std floor (relative), for a cmvn other than "none"

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop_length", "min_samples"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{NAME}.{name} must be a positive integer, got {v!r}")
        if self.hop_length % 2:
            raise ConfigError(f"{NAME}.hop_length must be even (frames are centred by a half-frame shift), "
                              f"got {self.hop_length}")
        if self.gain not in GAINS:
            raise ConfigError(f"{NAME}.gain must be one of {list(GAINS)}, got {self.gain!r}")
        if not (isinstance(self.target_rms, (int, float)) and 0 < self.target_rms <= 1):
            raise ConfigError(f"{NAME}.target_rms must be in (0, 1], got {self.target_rms!r}")
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"{NAME}.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}")
        if not self.cmvn_eps > 0:
            raise ConfigError(f"{NAME}.cmvn_eps must be > 0, got {self.cmvn_eps!r}")


class Waveform(FeatureSet):
    """Mono waveform frames ``(n_frames, hop_length)``, frame ``t`` = samples ``[hop t - hop/2, hop t + hop/2)``."""

    def __init__(self, config: WaveformConfig) -> None:
        super().__init__(NAME, config, FeatureSpec.from_sizes(NAME, [("wave", config.hop_length)]))

    @property
    def min_samples(self) -> int:
        return int(self.config.min_samples)


def waveform_to_frames(y: np.ndarray, *, hop_length: int = 160) -> np.ndarray:
    """``(n_samples,)`` -> ``(1 + n_samples // hop_length, hop_length)`` float32, frame ``t`` centred on sample ``hop_length * t``.

    Zeros before the first sample and after the last; samples past the last frame's end (fewer than
    ``hop_length / 2``) are dropped.
    """
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n_frames = 1 + y.size // hop_length
    out = np.zeros(n_frames * hop_length, dtype=np.float32)
    shift = hop_length // 2
    take = min(y.size, out.size - shift)
    out[shift:shift + take] = y[:take]
    return out.reshape(n_frames, hop_length)


def frames_to_waveform(frames: np.ndarray, *, n_samples: int | None = None) -> np.ndarray:
    """Inverse of :func:`waveform_to_frames`: ``(n_frames, hop)`` -> the waveform ``(n_samples,)``.

    Without ``n_samples``: every sample the frames hold after the half-frame shift,
    ``(n_frames - 1) * hop + hop // 2`` (the original length rounded up to the frame grid).
    """
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[0] < 1:
        raise DataError(f"frames_to_waveform: expected (n_frames >= 1, hop), got {frames.shape}")
    hop = frames.shape[1]
    flat = frames.reshape(-1)[hop // 2:]
    if n_samples is None:
        return flat
    if not 0 <= int(n_samples) <= flat.size:
        raise DataError(f"frames_to_waveform: n_samples={n_samples}, but {frames.shape[0]} frames of {hop} "
                        f"hold at most {flat.size} samples")
    return flat[:int(n_samples)]


def apply_gain(y: np.ndarray, cfg: WaveformConfig) -> np.ndarray:
    """The waveform after ``cfg.gain``: unchanged, or scaled to ``cfg.target_rms`` (floored at :data:`RMS_FLOOR`)."""
    if cfg.gain == "none":
        return y
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return (y * (cfg.target_rms / max(rms, RMS_FLOOR))).astype(np.float32)


@register_backend(Waveform, "reference")
@register_backend(Waveform, "fast")
def _frames(self: Waveform, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    c = self.config
    return [waveform_to_frames(apply_gain(np.asarray(y, dtype=np.float32), c), hop_length=c.hop_length)
            for y in waveforms]


@register_feature_set(NAME)
def create_waveform(**config: Any) -> Waveform:
    """``get_feature_set("wave16k", gain="rms", ...)``."""
    return Waveform(dataclass_replace_checked(WaveformConfig(), config, where=f"feature set {NAME!r}"))
