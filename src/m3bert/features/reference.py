"""librosa reference implementation of the M3BERT 324-d features: the truth the fast path must match.

Every group is computed the way the paper says ("Audio preprocessing": librosa, 44.1 kHz, Hamming
window 2048, hop 1024, mel and CQT as ln(10 S + 1e-6)), each by its own librosa call, so this
module is deliberately simple and slow. Shapes follow librosa: ``(n_channels, n_frames)``.

Magnitudes: mel is a *power* mel spectrogram (librosa's ``melspectrogram`` default, power 2);
the CQT is the *magnitude* ``|C|`` (librosa's ``cqt`` is complex; the seed code took ``np.abs``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import librosa
import numpy as np

from m3bert.core.registry import Registry

CqtFn = Callable[[np.ndarray, Any, float], np.ndarray]


def log_compress(S: np.ndarray, *, scale: float = 10.0, offset: float = 1e-6) -> np.ndarray:
    """The paper's log amplitude ``ln(scale * S + offset)`` (same shape as ``S``)."""
    return np.log(scale * S + offset)


def delta_width_for(n_frames: int, width: int) -> int:
    """Savitzky-Golay width for ``n_frames`` frames: ``width``, or for clips shorter than ``width``
    frames the largest odd width that fits (at least 3), so clips of one analysis window (3 frames)
    still get a delta instead of an error."""
    if n_frames >= width:
        return width
    w = n_frames if n_frames % 2 == 1 else n_frames - 1
    return max(3, w)


def delta(mfcc: np.ndarray, *, width: int) -> np.ndarray:
    """First-order delta along frames, ``(n_mfcc, n_frames)`` (librosa's ``feature.delta``, interp mode)."""

    return librosa.feature.delta(mfcc, width=delta_width_for(mfcc.shape[-1], width), order=1, axis=-1, mode="interp")


def estimate_tuning(y: np.ndarray, cfg: Any) -> float:
    """Tuning deviation (fractions of a chroma bin) estimated the way ``librosa.feature.chroma_stft``
    does it: piptrack on the Hamming power spectrogram."""

    S = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=cfg.window)) ** 2
    return float(librosa.estimate_tuning(S=S, sr=cfg.sample_rate, bins_per_octave=cfg.n_chroma))


def cqt_literal(y: np.ndarray, cfg: Any, tuning: float) -> np.ndarray:
    """Literal CQT magnitude ``(n_cqt, n_frames)``: ``n_cqt`` bins at ``cqt_bins_per_octave`` from
    ``cqt_fmin`` (default 144 bins, 24/octave, from C1: six octaves, C1..B6)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_fft too large" for clips shorter than the longest filter
        C = librosa.cqt(y, sr=cfg.sample_rate, hop_length=cfg.hop_length, fmin=cfg.cqt_fmin, n_bins=cfg.n_cqt,
                        bins_per_octave=cfg.cqt_bins_per_octave, tuning=tuning)
    return np.abs(C)


def cqt_chroma1008(y: np.ndarray, cfg: Any, tuning: float) -> np.ndarray:
    """The seed authors' "CQT": ``librosa.feature.chroma_cqt(n_chroma=144, bins_per_octave=None)``.

    That call computes a 7-octave CQT at 144 bins/octave from C1 (1008 bins), folds it into 144
    pitch-class bins (1/12 semitone each, octave information gone) and max-normalises every frame
    (norm = inf). It is ~10x slower than the literal CQT; offered to reproduce their inputs exactly.
    ``cqt_fmin`` is honoured; ``cqt_bins_per_octave`` is not used (it equals ``n_cqt`` here).
    """

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return librosa.feature.chroma_cqt(y=y, sr=cfg.sample_rate, hop_length=cfg.hop_length, fmin=cfg.cqt_fmin,
                                          n_chroma=cfg.n_cqt, bins_per_octave=None, tuning=tuning)


#: cqt_variant -> reference function ``(y, cfg, tuning) -> (n_cqt, n_frames)`` (linear magnitude)
CQT_VARIANTS = Registry("CQT variant")  # name -> librosa reference CQT (the truth for the fast paths)
CQT_VARIANTS.add("literal", cqt_literal)
CQT_VARIANTS.add("chroma1008", cqt_chroma1008)


def reference_groups(y: np.ndarray, cfg: Any) -> dict[str, np.ndarray]:
    """All groups of one waveform ``(n_samples,)`` at ``cfg.sample_rate``, each ``(n_channels, n_frames)``.

    Keys in channel order: chroma, mfcc, dmfcc, mel (log), cqt (log).
    """

    sr, n_fft, hop, win = cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.window
    tuning = estimate_tuning(y, cfg) if cfg.tuning is None else float(cfg.tuning)
    chroma = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=n_fft, hop_length=hop, window=win, tuning=tuning,
                                         n_chroma=cfg.n_chroma)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, window=win, n_mels=cfg.n_mels,
                                         power=2.0)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=cfg.n_mfcc, n_fft=n_fft, hop_length=hop, window=win,
                                n_mels=cfg.n_mels)
    dmfcc = delta(mfcc, width=cfg.delta_width)
    cqt = CQT_VARIANTS[cfg.cqt_variant](y, cfg, tuning)
    return {
        "chroma": chroma,
        "mfcc": mfcc,
        "dmfcc": dmfcc,
        "mel": log_compress(mel, scale=cfg.log_scale, offset=cfg.log_offset),
        "cqt": log_compress(cqt, scale=cfg.log_scale, offset=cfg.log_offset),
    }


def reference_frames(y: np.ndarray, cfg: Any) -> np.ndarray:
    """Raw (un-normalised) frames ``(n_frames, n_channels)`` float32 of one waveform."""
    groups = reference_groups(y, cfg)
    n_frames = 1 + len(y) // cfg.hop_length
    parts = [g[:, :n_frames] for g in groups.values()]
    if any(p.shape[1] != n_frames for p in parts):  # pragma: no cover - librosa contract
        raise RuntimeError(f"reference features: frame counts {[p.shape for p in parts]} != {n_frames}")
    return np.ascontiguousarray(np.concatenate(parts, axis=0).T, dtype=np.float32)
