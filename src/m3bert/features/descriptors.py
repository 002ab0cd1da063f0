"""Interpretable audio descriptors per frame, registered as the feature set ``descriptors``.

The paper's correlational analysis (Greer et al. 2023, "Correlational analysis", Figs. 5-6)
correlates librosa descriptors with the encoder's output units. This feature set computes them
**frame-aligned with the model's input**: the same sample rate, ``n_fft``, hop and centring as
``m3bert324`` by default (44.1 kHz, 2048, 1024, ``center=True``), so frame ``t`` here is frame ``t``
of the encoder's input and of its hidden states (``n_frames = 1 + n_samples // hop_length``).
``m3bert analyze`` builds it with the analysed model's own ``sample_rate`` / ``n_fft`` / ``hop_length``.

Values are raw (no CMVN: ``cmvn`` must be ``"none"``). One channel group per descriptor, in order:

==============  ========  ===================================================================
group           channels  what (librosa call; STFT = ``stft(window, center=True)`` magnitude S)
==============  ========  ===================================================================
centroid        1         ``feature.spectral_centroid(S=S)`` (Hz)
bandwidth       1         ``feature.spectral_bandwidth(S=S)`` (Hz, p = 2)
rolloff         1         ``feature.spectral_rolloff(S=S, roll_percent=0.85)`` (Hz)
flatness        1         ``feature.spectral_flatness(S=S)`` (0..1, power 2)
contrast        7         ``feature.spectral_contrast(S=S, fmin=200, n_bands=6)`` (dB, one per band)
onset_strength  1         ``onset.onset_strength`` on the dB power mel of the same STFT (spectral flux)
rms             1         ``feature.rms(y=y, frame_length=n_fft)`` (loudness)
zcr             1         ``feature.zero_crossing_rate(y, frame_length=n_fft)``
f0              1         ``pyin(fmin=65.41 Hz (C2), fmax=2093 Hz (C7), resolution=0.25)`` Hz; **0 unvoiced**
voiced_prob     1         pYIN's voicing probability
voiced          1         pYIN's voiced flag (0/1): analyses use f0 only where this is 1
harmonicity     1         energy of ``decompose.hpss(D)``'s harmonic part / energy of the frame
percussiveness  1         energy of the percussive part / energy of the frame
brightness      1         fraction of the frame's power-spectrum energy at or above 1500 Hz
tempo           1         dominant tempo (BPM) of ``feature.tempogram`` in 30-300 BPM; 0 if none
==============  ========  ===================================================================

Energies are sums of the power spectrum ``|D|^2`` over frequency; a silent frame gets 0 for the
ratios. With soft HPSS masks (librosa's default, ``margin=1``) harmonicity + percussiveness <= 1, so
the two are *not* complementary by construction. The tempo resolution is coarse at hop 1024
(the lag of 9 frames is 287 BPM, 10 frames 258 BPM), adequate for "fast vs slow" only.

Cost, measured on one core of this 2-core machine (``OMP_NUM_THREADS=1``, 60 s of test signal at
44.1 kHz): 3.1 s per minute of audio without f0 (HPSS's two median filters are most of it), 5.9 s with
f0. pYIN's Viterbi decoding dominates f0: 2.8 s per minute on the default quarter-semitone grid
(``f0_resolution=0.25``) and ~11 s per minute on librosa's default 0.1-semitone grid. ``f0=False``
drops the three f0 groups (the analysis then has no f0).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import librosa
import numpy as np

from m3bert.core.errors import ConfigError
from m3bert.features.base import FeatureSet, register_backend
from m3bert.features.spec import FeatureSpec, dataclass_replace_checked, register_feature_set

NAME = "descriptors"
F0_GROUPS = ("f0", "voiced_prob", "voiced")
#: group -> the 0/1 group whose 1-frames are the only valid frames of it (analyses skip the others)
MASKED_BY = {"f0": "voiced"}
#: groups describing the *shape* of the spectrum, undefined in digital silence (this set returns 0 there,
#: as librosa does for the centroid): an analysis should skip silent frames for them (see ``rms``)
UNDEFINED_IN_SILENCE = ("centroid", "bandwidth", "rolloff", "flatness", "contrast", "harmonicity", "percussiveness",
                        "brightness")
#: group -> (unit, one-line meaning), for reports
DESCRIPTOR_INFO: dict[str, tuple[str, str]] = {
    "centroid": ("Hz", "spectral centroid"),
    "bandwidth": ("Hz", "spectral bandwidth"),
    "rolloff": ("Hz", "spectral roll-off (85 % of the magnitude)"),
    "flatness": ("", "spectral flatness"),
    "contrast": ("dB", "spectral contrast per octave band"),
    "onset_strength": ("", "onset strength (spectral flux of the dB mel)"),
    "rms": ("", "RMS loudness"),
    "zcr": ("", "zero-crossing rate"),
    "f0": ("Hz", "fundamental frequency (pYIN), voiced frames only"),
    "voiced_prob": ("", "pYIN voicing probability"),
    "voiced": ("", "pYIN voiced flag"),
    "harmonicity": ("", "harmonic energy fraction (HPSS)"),
    "percussiveness": ("", "percussive energy fraction (HPSS)"),
    "brightness": ("", "energy fraction above the brightness cut-off"),
    "tempo": ("BPM", "dominant tempogram tempo"),
}


@dataclass(frozen=True)
class DescriptorsConfig:
    """Configuration of the descriptor set; the frame geometry defaults are ``m3bert324``'s."""

    sample_rate: int = 44100  # Hz; input at other rates is resampled (as for the model's features)
    n_fft: int = 2048  # STFT size (= window length); also the frame length of RMS and ZCR
    hop_length: int = 1024  # samples between frame centres: must equal the model's feature hop
    window: str = "hann"  # STFT window of the spectral descriptors (librosa's default for them)
    rolloff_percent: float = 0.85  # roll-off: frequency below which this fraction of the magnitude lies
    contrast_fmin: float = 200.0  # lower edge of the first contrast band (Hz; librosa's default)
    contrast_bands: int = 6  # octave bands of spectral contrast (n_bands + 1 channels)
    brightness_hz: float = 1500.0  # brightness cut-off (Juslin 2000 / MIRtoolbox's default)
    hpss_kernel: int = 31  # median-filter size of HPSS (librosa's default)
    hpss_margin: float = 1.0  # HPSS margin (1 = soft masks, librosa's default)
    f0: bool = True  # compute f0 / voicing with pYIN (slow; False drops the three f0 groups)
    f0_fmin: float = 65.40639132514966  # pYIN lowest f0, C2 (Hz)
    f0_fmax: float = 2093.004522404789  # pYIN highest f0, C7 (Hz)
    f0_frame_length: int = 2048  # pYIN frame (at 44.1 kHz it covers 3 periods of C2)
    f0_resolution: float = 0.25  # pYIN pitch grid in semitones (librosa's default 0.1 makes f0 ~4x slower)
    tempo_win_length: int = 384  # tempogram window in frames (librosa's default; ~8.9 s at hop 1024)
    tempo_min_bpm: float = 30.0  # tempogram peak searched in [tempo_min_bpm, tempo_max_bpm]
    tempo_max_bpm: float = 300.0
    cmvn: str = "none"  # descriptors are raw values; anything else is refused

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "contrast_bands", "hpss_kernel", "f0_frame_length",
                     "tempo_win_length"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{NAME}.{name} must be a positive integer, got {v!r}")
        if self.hop_length > self.n_fft:
            raise ConfigError(f"{NAME}.hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.cmvn != "none":
            raise ConfigError(f"{NAME}.cmvn must be 'none' (descriptors are raw, interpretable values), got {self.cmvn!r}")
        if not isinstance(self.f0, bool):
            raise ConfigError(f"{NAME}.f0 must be true or false, got {self.f0!r}")
        nyquist = self.sample_rate / 2
        checks = {
            "rolloff_percent": 0 < self.rolloff_percent < 1,
            "brightness_hz": 0 < self.brightness_hz < nyquist,
            "contrast_fmin": 0 < self.contrast_fmin and self.contrast_fmin * 2 ** self.contrast_bands < nyquist,
            "f0_fmin/f0_fmax": 0 < self.f0_fmin < self.f0_fmax < nyquist,
            "tempo_min_bpm/tempo_max_bpm": 0 < self.tempo_min_bpm < self.tempo_max_bpm,
            "hpss_margin": self.hpss_margin >= 1,
            "f0_resolution": 0 < self.f0_resolution <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                values = {k: getattr(self, k) for k in name.split("/")}
                raise ConfigError(f"{NAME}.{name}: invalid value(s) {values} (sample rate {self.sample_rate} Hz, "
                                  f"Nyquist {nyquist:.0f} Hz); see DescriptorsConfig for the expected ranges")
        if self.f0 and self.sample_rate / self.f0_fmin >= self.f0_frame_length:
            raise ConfigError(f"{NAME}.f0_frame_length={self.f0_frame_length} is shorter than one period of "
                              f"f0_fmin={self.f0_fmin:.2f} Hz at {self.sample_rate} Hz; raise it or f0_fmin")


def group_sizes(cfg: DescriptorsConfig) -> list[tuple[str, int]]:
    """``[(group, n_channels)]`` in channel order for this configuration."""
    sizes = [("centroid", 1), ("bandwidth", 1), ("rolloff", 1), ("flatness", 1), ("contrast", cfg.contrast_bands + 1),
             ("onset_strength", 1), ("rms", 1), ("zcr", 1)]
    if cfg.f0:
        sizes += [(g, 1) for g in F0_GROUPS]
    sizes += [("harmonicity", 1), ("percussiveness", 1), ("brightness", 1), ("tempo", 1)]
    return sizes


class Descriptors(FeatureSet):
    """Interpretable per-frame descriptors (module docstring); one librosa implementation.

    The base class wants named backends; ``"reference"`` and ``"fast"`` are the same function here
    (there is no faster path), so ``extract`` works with its default arguments.
    """

    def __init__(self, config: DescriptorsConfig) -> None:
        super().__init__(NAME, config, FeatureSpec.from_sizes(NAME, group_sizes(config)))

    @property
    def channel_names(self) -> list[str]:
        """One name per channel: the group name, or ``group_i`` for groups of several channels."""
        return [g.name if g.size == 1 else f"{g.name}_{i}" for g in self.spec.groups for i in range(g.size)]

    def groups_of(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Every group of one waveform at ``self.sample_rate``, each ``(n_channels, n_frames)`` float64."""
        return descriptor_groups(np.asarray(y, dtype=np.float32), self.config)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (a silent frame)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def tempo_per_frame(onset_env: np.ndarray, cfg: DescriptorsConfig) -> np.ndarray:
    """Dominant tempo (BPM) per frame: the tempogram's peak within the configured BPM range; 0 for
    frames whose tempogram is flat zero (silence)."""
    tg = librosa.feature.tempogram(onset_envelope=onset_env, sr=cfg.sample_rate, hop_length=cfg.hop_length,
                                   win_length=cfg.tempo_win_length)
    with np.errstate(divide="ignore"):
        bpm = librosa.tempo_frequencies(tg.shape[0], hop_length=cfg.hop_length, sr=cfg.sample_rate)
    ok = np.flatnonzero((bpm >= cfg.tempo_min_bpm) & (bpm <= cfg.tempo_max_bpm))
    if ok.size == 0:  # pragma: no cover - only with a tiny tempo_win_length
        raise ConfigError(f"{NAME}: no tempogram lag falls in [{cfg.tempo_min_bpm}, {cfg.tempo_max_bpm}] BPM with "
                          f"tempo_win_length={cfg.tempo_win_length}; raise it")
    sub = tg[ok]
    peak = bpm[ok][np.argmax(sub, axis=0)]
    return np.where(sub.max(axis=0) > 0, peak, 0.0)


def descriptor_groups(y: np.ndarray, cfg: DescriptorsConfig) -> dict[str, np.ndarray]:
    """All groups of one waveform ``(n_samples,)`` at ``cfg.sample_rate``, each ``(n_channels, n_frames)``."""
    sr, n_fft, hop = cfg.sample_rate, cfg.n_fft, cfg.hop_length
    D = librosa.stft(y, n_fft=n_fft, hop_length=hop, window=cfg.window, center=True)
    S = np.abs(D)
    power = S.astype(np.float64) ** 2
    energy = power.sum(axis=0)
    out: dict[str, np.ndarray] = {
        "centroid": librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=n_fft, hop_length=hop),
        "bandwidth": librosa.feature.spectral_bandwidth(S=S, sr=sr, n_fft=n_fft, hop_length=hop),
        "rolloff": librosa.feature.spectral_rolloff(S=S, sr=sr, n_fft=n_fft, hop_length=hop,
                                                    roll_percent=cfg.rolloff_percent),
        "flatness": librosa.feature.spectral_flatness(S=S, n_fft=n_fft, hop_length=hop),
        "contrast": librosa.feature.spectral_contrast(S=S, sr=sr, n_fft=n_fft, hop_length=hop, fmin=cfg.contrast_fmin,
                                                      n_bands=cfg.contrast_bands),
    }
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=S ** 2, sr=sr, n_fft=n_fft, hop_length=hop))
    onset = librosa.onset.onset_strength(S=mel_db, sr=sr, n_fft=n_fft, hop_length=hop)
    out["onset_strength"] = onset[None, :]
    out["rms"] = librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop)
    out["zcr"] = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)
    if cfg.f0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pYIN warns on all-unvoiced input
            f0, voiced, prob = librosa.pyin(y, fmin=cfg.f0_fmin, fmax=cfg.f0_fmax, sr=sr,
                                            frame_length=cfg.f0_frame_length, hop_length=hop, center=True,
                                            resolution=cfg.f0_resolution)
        voiced = np.asarray(voiced, dtype=bool) & np.isfinite(f0)
        out["f0"] = np.where(voiced, np.nan_to_num(f0, nan=0.0), 0.0)[None, :]
        out["voiced_prob"] = np.nan_to_num(prob, nan=0.0)[None, :]
        out["voiced"] = voiced.astype(np.float64)[None, :]
    H, P = librosa.decompose.hpss(D, kernel_size=cfg.hpss_kernel, margin=cfg.hpss_margin)
    out["harmonicity"] = _ratio((np.abs(H).astype(np.float64) ** 2).sum(axis=0), energy)[None, :]
    out["percussiveness"] = _ratio((np.abs(P).astype(np.float64) ** 2).sum(axis=0), energy)[None, :]
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    out["brightness"] = _ratio(power[freqs >= cfg.brightness_hz].sum(axis=0), energy)[None, :]
    out["tempo"] = tempo_per_frame(onset, cfg)[None, :]
    return {name: np.asarray(out[name], dtype=np.float64) for name, _ in group_sizes(cfg)}


def descriptor_frames(y: np.ndarray, cfg: DescriptorsConfig) -> np.ndarray:
    """Raw frames ``(n_frames, n_channels)`` float32 of one waveform."""
    groups = descriptor_groups(y, cfg)
    n_frames = 1 + len(y) // cfg.hop_length
    bad = {k: v.shape for k, v in groups.items() if v.shape[1] != n_frames}
    if bad:  # pragma: no cover - librosa contract
        raise RuntimeError(f"{NAME}: frame counts {bad} != {n_frames}")
    return np.ascontiguousarray(np.concatenate(list(groups.values()), axis=0).T, dtype=np.float32)


def _frames(self: Descriptors, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [descriptor_frames(y, self.config) for y in waveforms]


register_backend(Descriptors, "reference")(_frames)
register_backend(Descriptors, "fast")(_frames)


@register_feature_set(NAME)
def create_descriptors(**config: Any) -> Descriptors:
    """``get_feature_set("descriptors", f0=False, hop_length=512, ...)``."""
    cfg = dataclass_replace_checked(DescriptorsConfig(), config, where=f"feature set {NAME!r}")
    return Descriptors(cfg)
