"""Kim et al. (2020)'s input: the dB-scaled 128-band mel spectrogram, registered as ``kim_mel``.

The paper (sec. 3.1.1): "we use the dB-scale mel-scale magnitude spectrum of an input audio
fragment, extracted by applying 128-band mel-filter banks on the Short-Time Fourier Transform
(STFT) ... We choose a 1024-sample window size and 256-sample hop size, translating to about 46 ms
and 11.6 ms respectively for a sampling rate of 22 kHz. We also applied standardization to each
frequency band of the mel spectrum, making use of the mean and variance of all individual mel
spectra in the training set." The released code (``musmtl/utils.py: extract_mel``) computes
``librosa.power_to_db(librosa.feature.melspectrogram(y, sr=22050, n_fft=1024, hop_length=256))``,
i.e. a Hann-windowed power mel spectrogram (Slaney mel, 128 bands, 0 Hz to 11025 Hz) in dB with
``ref=1``, ``amin=1e-10`` and ``top_db=80`` below the clip's maximum. Those are the defaults here;
2.5 s of audio is ``1 + 55125 // 256 = 216`` frames, Table 3's time axis.

Differences, by design: audio is mono (the paper duplicates a mono file into its two stereo
channels, so a stereo input plane carries no more than ours for mono music); CMVN defaults to
``clip`` so a model can embed any single file, and the multi-source trainer
(:mod:`m3bert.enrich.multisource`) switches it to ``corpus`` with the training set's per-band
statistics, the paper's standardisation, which the trained model then carries in its folder.

Backends: ``reference`` (librosa, the truth) and ``fast`` (one batched torch STFT with librosa's
own window and filter bank; equal to ~1e-4 dB).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import librosa
import numpy as np
import torch

from m3bert.core.errors import ConfigError
from m3bert.features.base import CMVN_MODES, FeatureSet, register_backend
from m3bert.features.fast import power_spectrogram, single_thread
from m3bert.features.spec import FeatureSpec, dataclass_replace_checked, register_feature_set

NAME = "kim_mel"


@dataclass(frozen=True)
class KimMelConfig:
    """Kim et al. 2020 sec. 3.1.1 / ``musmtl/config.py``: 22050 Hz, n_fft 1024, hop 256, 128 mel bands, dB."""

    sample_rate: int = 22050  # Hz ("a sampling rate of 22 kHz"; musmtl SR = 22050)
    n_fft: int = 1024  # STFT window ("1024-sample window size", ~46 ms)
    hop_length: int = 256  # hop ("256-sample hop size", ~11.6 ms)
    n_mels: int = 128  # mel bands ("128-band mel-filter banks")
    window: str = "hann"  # librosa.feature.melspectrogram's window
    fmin: float = 0.0  # lowest mel frequency (librosa default)
    fmax: float | None = None  # highest mel frequency; None = sample_rate / 2 (librosa default)
    amin: float = 1e-10  # power_to_db floor (librosa default)
    top_db: float | None = 80.0  # dB range kept below the clip's maximum (librosa default); None = no clipping
    cmvn: str = "clip"  # "clip" | "corpus" (the paper's per-band training-set statistics) | "none"
    cmvn_eps: float = 1e-3  # CMVN std floor (relative, as every feature set here)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{NAME}.{name} must be a positive integer, got {v!r}")
        if self.hop_length > self.n_fft:
            raise ConfigError(f"{NAME}.hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if not (isinstance(self.fmin, (int, float)) and 0 <= self.fmin < fmax <= nyquist):
            raise ConfigError(f"{NAME}: expected 0 <= fmin < fmax <= sample_rate/2 = {nyquist}, "
                              f"got fmin={self.fmin!r}, fmax={self.fmax!r}")
        if not self.amin > 0 or (self.top_db is not None and not self.top_db > 0) or not self.cmvn_eps > 0:
            raise ConfigError(f"{NAME}: amin, top_db (or None) and cmvn_eps must be > 0, got "
                              f"{self.amin!r}, {self.top_db!r}, {self.cmvn_eps!r}")
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"{NAME}.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}")
        if not isinstance(self.window, str):
            raise ConfigError(f"{NAME}.window must be a window name such as 'hann', got {self.window!r}")


class KimMel(FeatureSet):
    """dB mel spectrogram ``(n_frames, n_mels)`` at 22.05 kHz / hop 256, then CMVN."""

    def __init__(self, config: KimMelConfig) -> None:
        super().__init__(NAME, config, FeatureSpec.from_sizes(NAME, [("mel", config.n_mels)]))


def to_db(power: np.ndarray, cfg: KimMelConfig) -> np.ndarray:
    """``librosa.power_to_db(power, ref=1, amin, top_db)`` of one clip ``(n_mels, n_frames)``."""
    db = 10.0 * np.log10(np.maximum(power, cfg.amin))
    if cfg.top_db is not None:
        db = np.maximum(db, db.max() - cfg.top_db)
    return db.astype(np.float32)


@register_backend(KimMel, "reference")
def _reference(self: KimMel, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    c = self.config
    out = []
    for y in waveforms:
        S = librosa.feature.melspectrogram(y=np.asarray(y, np.float32), sr=c.sample_rate, n_fft=c.n_fft,
                                           hop_length=c.hop_length, window=c.window, center=True,
                                           pad_mode="constant", power=2.0, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax)
        db = librosa.power_to_db(S, ref=1.0, amin=c.amin, top_db=c.top_db)
        out.append(np.ascontiguousarray(db.T, dtype=np.float32))
    return out


@functools.lru_cache(maxsize=8)
def _banks(sample_rate: int, n_fft: int, window: str, n_mels: int, fmin: float, fmax: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    win = librosa.filters.get_window(window, n_fft, fftbins=True).astype(np.float32)
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(win), torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))


@register_backend(KimMel, "fast")
def _fast(self: KimMel, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One zero-padded batch through one STFT (exact per clip: centred frames never read past
    ``n_fft // 2`` samples beyond a clip's end, see :mod:`m3bert.features.fast`)."""
    c = self.config
    n_frames = [1 + len(y) // c.hop_length for y in waveforms]
    batch = torch.zeros(len(waveforms), max(len(y) for y in waveforms), dtype=torch.float32)
    for i, y in enumerate(waveforms):
        batch[i, : len(y)] = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    win, mel_fb = _banks(c.sample_rate, c.n_fft, c.window, c.n_mels, float(c.fmin), c.fmax)
    with single_thread(), torch.inference_mode():
        mel = torch.matmul(mel_fb, power_spectrogram(batch, n_fft=c.n_fft, hop_length=c.hop_length, window=win))
        mel = mel.numpy()
    return [np.ascontiguousarray(to_db(mel[i, :, :t].astype(np.float64), c).T) for i, t in enumerate(n_frames)]


@register_feature_set(NAME)
def create_kim_mel(**config: Any) -> KimMel:
    """``get_feature_set("kim_mel", cmvn="corpus", top_db=None, ...)``."""
    return KimMel(dataclass_replace_checked(KimMelConfig(), config, where=f"feature set {NAME!r}"))
