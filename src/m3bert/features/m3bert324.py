"""The M3BERT 324-d feature set (Greer et al. 2023, "Audio preprocessing"), registered as ``m3bert324``.

Per frame (44.1 kHz, Hamming window 2048, hop 1024, centred frames):

======  ========  =====================================================================
group   channels  what
======  ========  =====================================================================
chroma  0-11      ``chroma_stft`` (power spectrogram, per-frame max-normalised)
mfcc    12-31     20 MFCCs (128-band power mel -> dB (top 80 dB) -> orthonormal DCT-II)
dmfcc   32-51     first-order delta of the MFCCs (Savitzky-Golay, width 9)
mel     52-179    ln(10 * S + 1e-6) of the 128-band power mel spectrogram
cqt     180-323   ln(10 * |C| + 1e-6) of a 144-bin CQT (``cqt_variant``, below)
======  ========  =====================================================================

then CMVN (per clip and channel by default; ``cmvn="seed"`` reproduces the seed code's
speechpy call, which removes each frame's mean over its channels, see ``normalize.py``).
``cqt_variant="literal"`` (default) is a 144-bin CQT at 24 bins
per octave from C1 (six octaves, C1-B6); ``"chroma1008"`` reproduces the seed authors' code,
``chroma_cqt(n_chroma=144)`` over a 1008-bin CQT (see ``reference.cqt_chroma1008``).

Tuning: librosa's ``chroma_stft`` estimates the tuning of every clip by default; we fix it at
0 (A440) by default (``tuning=0.0``) because a per-chunk estimate shifts neighbouring chunks of one
song by different fractions of a bin and costs 23-90 ms per clip. ``tuning=None`` restores the
estimate (computed once per clip and used for both chroma and CQT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from m3bert.audio import check_sample_rate
from m3bert.core.errors import ConfigError
from m3bert.features import cqt, fast, reference
from m3bert.features.base import CMVN_MODES, FeatureSet, register_backend
from m3bert.features.spec import FeatureSpec, dataclass_replace_checked, register_feature_set

NAME = "m3bert324"

# the literal CQT has a fast path that reproduces librosa.cqt (see cqt.py); chroma1008 uses librosa
fast.FAST_CQT.add("literal", cqt.literal_cqt_batch)
C1_HZ = 32.70319566257483  # librosa.note_to_hz("C1")


@dataclass(frozen=True)
class M3bert324Config:
    """Configuration of the M3BERT feature set; defaults are the paper's."""

    sample_rate: int = 44100  # Hz; input at other rates is resampled (soxr HQ)
    n_fft: int = 2048  # STFT size = window length (46 ms); also the shortest accepted clip
    hop_length: int = 1024  # samples between frame centres (23 ms)
    window: str = "hamming"  # STFT window (scipy name, periodic as librosa uses it)
    n_chroma: int = 12  # chroma bins (chroma_stft)
    n_mfcc: int = 20  # MFCC coefficients (delta-MFCC has as many)
    n_mels: int = 128  # mel bands (log-mel group and the MFCC's mel front end)
    delta_width: int = 9  # Savitzky-Golay window of the delta (librosa default); shrinks for clips < 9 frames
    n_cqt: int = 144  # CQT bins in the output
    cqt_bins_per_octave: int = 24  # literal variant: 24 bins/octave x 6 octaves = 144
    cqt_fmin: float = C1_HZ  # lowest CQT bin (Hz), C1
    cqt_variant: str = "literal"  # "literal" 144-bin CQT | "chroma1008" seed authors' chroma_cqt(n_chroma=144)
    tuning: float | None = 0.0  # tuning offset in bins for chroma and CQT; None = estimate per clip (librosa default)
    log_scale: float = 10.0  # mel and CQT become ln(log_scale * S + log_offset)
    log_offset: float = 1e-6  # keeps the log of silence finite
    cmvn: str = "clip"  # "clip" per-example, per-channel CMVN | "corpus" store-level statistics | "none" |
    # "seed": the seed code's speechpy call (per-frame mean over channels removed, no variance scaling)
    cmvn_eps: float = 1e-3  # CMVN std floor, relative: max(std, eps * max(1, |mean|)) (silence stays ~0)

    def __post_init__(self) -> None:
        ints = ("sample_rate", "n_fft", "hop_length", "n_chroma", "n_mfcc", "n_mels", "delta_width", "n_cqt",
                "cqt_bins_per_octave")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{NAME}.{name} must be a positive integer, got {v!r}")
        check_sample_rate(self.sample_rate, what=f"{NAME}.sample_rate")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ConfigError(f"{NAME}.delta_width must be odd and >= 3, got {self.delta_width}")
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"{NAME}.n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        if self.hop_length > self.n_fft:
            raise ConfigError(f"{NAME}.hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.cqt_variant not in reference.CQT_VARIANTS:
            raise ConfigError(f"{NAME}.cqt_variant must be one of {sorted(reference.CQT_VARIANTS)}, "
                              f"got {self.cqt_variant!r}")
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"{NAME}.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}")
        if self.tuning is not None and not (isinstance(self.tuning, (int, float)) and -0.5 <= self.tuning <= 0.5):
            raise ConfigError(f"{NAME}.tuning must be None or a number in [-0.5, 0.5], got {self.tuning!r}")
        if not (isinstance(self.cqt_fmin, (int, float)) and self.cqt_fmin > 0):
            raise ConfigError(f"{NAME}.cqt_fmin must be a positive frequency in Hz, got {self.cqt_fmin!r}")
        if self.log_scale <= 0 or self.log_offset <= 0 or self.cmvn_eps <= 0:
            raise ConfigError(f"{NAME}: log_scale, log_offset and cmvn_eps must be > 0")
        if not isinstance(self.window, str):
            raise ConfigError(f"{NAME}.window must be a window name such as 'hamming', got {self.window!r}")


class M3bert324(FeatureSet):
    """Chroma + MFCC + delta-MFCC + log-mel + log-CQT, then CMVN (324 channels by default).

    Backends: ``"reference"`` (librosa, one call per group: the truth) and ``"fast"`` (one batched
    torch STFT shared by chroma/mel/MFCC; the CQT from ``fast.FAST_CQT``).
    """

    def __init__(self, config: M3bert324Config) -> None:
        spec = FeatureSpec.from_sizes(NAME, [("chroma", config.n_chroma), ("mfcc", config.n_mfcc),
                                             ("dmfcc", config.n_mfcc), ("mel", config.n_mels), ("cqt", config.n_cqt)])
        super().__init__(NAME, config, spec)


@register_backend(M3bert324, "reference")
def _reference(self: M3bert324, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [reference.reference_frames(y, self.config) for y in waveforms]


@register_backend(M3bert324, "fast")
def _fast(self: M3bert324, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    return fast.fast_frames_batch(waveforms, self.config)


@register_feature_set(NAME)
def create_m3bert324(**config: Any) -> M3bert324:
    """``get_feature_set("m3bert324", cqt_variant="chroma1008", cmvn="corpus", ...)``."""
    cfg = dataclass_replace_checked(M3bert324Config(), config, where=f"feature set {NAME!r}")
    return M3bert324(cfg)
