"""Wu et al. (2021)'s worker targets: ``wu_lps``, ``wu_mfcc``, ``wu_chroma``, ``wu_tempogram``, ``wu_prosody``.

Wu et al., "Multi-task self-supervised pre-training for music classification", sec. 3.2: besides
waveform reconstruction (W, no feature set) the workers predict the log power spectrum (L), prosody
(P, "as used in [PASE]": zero-crossing rate, energy, voiced/unvoiced probability and F0, "4 features"),
MFCC (M), chroma (C) and tempogram (T), all with "librosa implementations with hop_length = 160,
n_fft = 2048, sr = 16000 in order to align each hop as 10ms to match encoder parameters, with other
default parameters". Every set here is that: 16 kHz, ``n_fft`` 2048 (Hann), hop 160, librosa's
defaults otherwise (librosa 0.11):

============  ========  ===========================================================================
set           channels  what (``P = |librosa.stft(y, n_fft=2048, hop_length=160)|**2``)
============  ========  ===========================================================================
wu_lps        1025      ``power_to_db(P)`` (ref 1, amin 1e-10, top_db 80): all 1 + n_fft/2 bins
wu_mfcc       20        ``feature.mfcc(y, sr, n_fft, hop_length)``: 20 coefficients of 128 mel bands
wu_chroma     12        ``feature.chroma_stft(y, sr, n_fft, hop_length)`` (tuning estimated per clip)
wu_tempogram  384       ``feature.tempogram(y, sr, hop_length)``: lags 0..383 frames (0..3.83 s)
wu_prosody    4         lf0, voiced_prob, energy, zcr (PASE's order; below)
============  ========  ===========================================================================

The paper states only the prosody count (4); the others are librosa's defaults at ``n_fft`` 2048.

**Frame contract.** A mono 16 kHz waveform of ``n`` samples (any ``n >= 1``) gives exactly
``1 + n // 160`` frames in every set, frame ``t`` centred on sample ``160 t`` (``center=True``: the
signal padded by ``n_fft // 2`` at both ends, with zeros, or with copies of the end samples for zcr, as
librosa does), so frame ``t`` of every worker target and frame ``t`` of the waveform encoder's input
(``wave16k``) describe the same 10 ms.

**Prosody** (PASE's ``Prosody`` transform, Pascual et al. 2019): ``lf0`` is the natural log of F0 in
Hz, linearly interpolated across unvoiced frames from the voiced frames around them (held constant
before the first and after the last voiced frame; ``log(f0_fmin)`` if no frame is voiced);
``voiced_prob`` is pYIN's voicing probability; ``energy`` is ``feature.rms`` and ``zcr``
``feature.zero_crossing_rate``, both with ``frame_length = n_fft`` (librosa's default 2048).
Deviations from PASE, following Wu: F0 by YIN/pYIN instead of SWIPE, a voicing *probability* instead of
PASE's 0/1 flag, 128 ms frames for rms and zcr instead of 20 ms, and F0 searched in C2-C7
(65.4-2093 Hz, librosa's recommended range for music) instead of PASE's 60-300 Hz for speech.

``f0_method`` chooses how F0 and the voiced frames are found (``voiced_prob`` is the same in both):

* ``"pyin"``, the reference: ``librosa.pyin`` at its defaults (0.1-semitone grid, HMM decoding);
  voiced frames are pYIN's voiced flag.
* ``"yin"`` (default, for speed): the YIN cumulative mean normalised difference (CMND) computed as
  librosa computes it, F0 = ``librosa.yin``'s estimate from it (first trough below 0.1, else the
  global minimum, refined by parabolic interpolation), and ``voiced_prob`` = pYIN's observation
  model in closed form: over pYIN's Beta(2, 18) prior on 100 thresholds, a threshold above the
  deepest CMND trough ``h`` voices the frame and one at or below it gives ``no_trough_prob = 0.01``,
  so ``voiced_prob = 1 - 0.99 * F(h)`` (``F`` the prior's discretised CDF; 0 for a frame without a
  trough, e.g. digital silence). That is pYIN's ``voiced_prob`` (equal to within 1e-15 on the test
  signals; pYIN can lose a trough's mass when two troughs fall in one pitch bin). Voiced frames are
  ``voiced_prob >= voiced_threshold`` (0.1) instead of pYIN's HMM decoding. Measured against pYIN
  on synthetic signals: voiced flags agree on 99-100 % of the frames of a tone in silence and a chirp,
  88-99 % of six harmonic melodies and 89 % of white noise (the HMM voices 11 % of its frames); F0 is
  within 5 cents (pYIN's grid is 10) on 100 % of the frames both call voiced for the tone and the chirp
  and 87-100 % for the melodies, the misses at note changes, where pYIN's HMM keeps the pitch
  continuous and YIN decides frame by frame (tolerances in ``tests/test_features_wu.py``).

**Cost** per 30 s clip in CPU seconds on one thread (``OMP_NUM_THREADS=1``, the 2-core build machine,
librosa 0.11): lps 0.04, mfcc 0.04, chroma 0.09 (0.03 with ``tuning=0``), tempogram 0.07, prosody 0.19
with ``"yin"`` (0.16 of it the CMND) and 11.8 with ``"pyin"`` (its Viterbi over 1202 states is most of
it; 1.8 on a 0.25-semitone grid); all five through :func:`worker_features`, which computes the STFT
once for the sets that read it, 0.35-0.39.

The sets are raw values (``cmvn="none"`` by default): PASE z-normalises its worker targets with
training-set statistics, which is ``cmvn="corpus"`` here or the caller's business. There is one
implementation (librosa), so the ``"reference"`` and ``"fast"`` backends are the same function; a
torch STFT (``fast.py``) would save ~0.03 s per clip of the 0.4 s total, not worth a second path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import librosa
import numpy as np
import scipy.stats

from m3bert.audio import check_sample_rate, validate_waveform
from m3bert.core.errors import AudioError, ConfigError, DataError
from m3bert.features.base import CMVN_MODES, FeatureSet, register_backend
from m3bert.features.spec import FeatureSpec, dataclass_replace_checked, register_feature_set

SAMPLE_RATE = 16000  # Hz, the paper's sr
N_FFT = 2048  # the paper's n_fft
HOP_LENGTH = 160  # the paper's hop (10 ms at 16 kHz)
#: the paper's worker letters -> worker feature keys (W, waveform reconstruction, has no feature set)
WORKER_FEATURES: dict[str, str] = {"L": "lps", "M": "mfcc", "C": "chroma", "T": "tempogram", "P": "prosody"}
#: worker feature key -> registered feature-set name
FEATURE_SET_NAMES: dict[str, str] = {key: f"wu_{key}" for key in WORKER_FEATURES.values()}
PROSODY_GROUPS = ("lf0", "voiced_prob", "energy", "zcr")  # PASE's channel order (lf0, uv, egy, zcr)
F0_METHODS = ("yin", "pyin")
C2_HZ = 65.40639132514966  # librosa.note_to_hz("C2")
C7_HZ = 2093.004522404789  # librosa.note_to_hz("C7")
# pYIN's observation-model constants (librosa.pyin defaults), shared by the "yin" method's voicing
PYIN_THRESHOLDS = 100
PYIN_BETA = (2.0, 18.0)
PYIN_NO_TROUGH_PROB = 0.01
YIN_TROUGH_THRESHOLD = 0.1  # librosa.yin's default trough threshold
CMND_BLOCK_FRAMES = 2048  # frames per CMND block: bounds memory to ~3 x 2048 x 2048 floats per block


def _positive_int(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{cfg.NAME}.{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class WuConfig:
    """Frame geometry shared by every worker target (Wu et al. sec. 3.2)."""

    NAME: ClassVar[str] = "wu"
    sample_rate: int = SAMPLE_RATE  # Hz ("sr = 16000"); FeatureSet.extract resamples other rates to it
    n_fft: int = N_FFT  # STFT size and analysis frame ("n_fft = 2048", 128 ms at 16 kHz)
    hop_length: int = HOP_LENGTH  # samples between frame centres ("hop_length = 160", 10 ms)
    cmvn: str = "none"  # raw targets; "corpus" = PASE's z-normalisation with training-set statistics
    cmvn_eps: float = 1e-3  # CMVN std floor (relative, as every feature set here)

    def __post_init__(self) -> None:
        _positive_int(self, "sample_rate", "n_fft", "hop_length")
        check_sample_rate(self.sample_rate, what=f"{self.NAME}.sample_rate")
        if self.hop_length > self.n_fft:
            raise ConfigError(f"{self.NAME}.hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"{self.NAME}.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}")
        if not (isinstance(self.cmvn_eps, (int, float)) and self.cmvn_eps > 0):
            raise ConfigError(f"{self.NAME}.cmvn_eps must be > 0, got {self.cmvn_eps!r}")


@dataclass(frozen=True)
class LpsConfig(WuConfig):
    """Log power spectrum (L): ``librosa.power_to_db(|stft|**2)`` at its defaults."""

    NAME: ClassVar[str] = "wu_lps"
    amin: float = 1e-10  # power floor before the log (librosa default)
    top_db: float | None = 80.0  # dB kept below the clip's maximum (librosa default); None = no clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.amin, (int, float)) and self.amin > 0):
            raise ConfigError(f"{self.NAME}.amin must be > 0, got {self.amin!r}")
        if self.top_db is not None and not (isinstance(self.top_db, (int, float)) and self.top_db > 0):
            raise ConfigError(f"{self.NAME}.top_db must be None or > 0, got {self.top_db!r}")


@dataclass(frozen=True)
class MfccConfig(WuConfig):
    """MFCC (M): ``librosa.feature.mfcc`` (dB power mel, top_db 80, orthonormal DCT-II)."""

    NAME: ClassVar[str] = "wu_mfcc"
    n_mfcc: int = 20  # coefficients (librosa default)
    n_mels: int = 128  # mel bands under the DCT (librosa default)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self, "n_mfcc", "n_mels")
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"{self.NAME}.n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")


@dataclass(frozen=True)
class ChromaConfig(WuConfig):
    """Chroma (C): ``librosa.feature.chroma_stft`` (power spectrogram, per-frame max-normalised)."""

    NAME: ClassVar[str] = "wu_chroma"
    n_chroma: int = 12  # pitch classes (librosa default; "folded into 12 bins as one octave")
    tuning: float | None = None  # offset in bins; None = estimated per clip (librosa default; costs 0.06 s / 30 s)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self, "n_chroma")
        if self.tuning is not None and not (isinstance(self.tuning, (int, float)) and -0.5 <= self.tuning < 0.5):
            raise ConfigError(f"{self.NAME}.tuning must be None or a number in [-0.5, 0.5), got {self.tuning!r}")


@dataclass(frozen=True)
class TempogramConfig(WuConfig):
    """Tempogram (T): ``librosa.feature.tempogram`` of the mel spectral-flux onset envelope."""

    NAME: ClassVar[str] = "wu_tempogram"
    win_length: int = 384  # autocorrelation window in frames = channels (librosa default; 3.84 s at 10 ms)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self, "win_length")


@dataclass(frozen=True)
class ProsodyConfig(WuConfig):
    """Prosody (P): lf0, voiced_prob, energy, zcr (module docstring)."""

    NAME: ClassVar[str] = "wu_prosody"
    f0_method: str = "yin"  # "yin" (fast, 0.2 CPU s per 30 s) | "pyin" (the reference, 12 CPU s per 30 s)
    f0_fmin: float = C2_HZ  # lowest F0 searched (Hz), C2; also the lf0 of a clip with no voiced frame
    f0_fmax: float = C7_HZ  # highest F0 searched (Hz), C7
    f0_resolution: float = 0.1  # pyin's pitch grid in semitones (librosa default); "pyin" only
    voiced_threshold: float = 0.1  # "yin": voiced where voiced_prob >= this (agrees best with pYIN's flag)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.f0_method not in F0_METHODS:
            raise ConfigError(f"{self.NAME}.f0_method must be one of {list(F0_METHODS)}, got {self.f0_method!r}")
        numbers = (self.f0_fmin, self.f0_fmax, self.f0_resolution, self.voiced_threshold)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ConfigError(f"{self.NAME}: f0_fmin, f0_fmax, f0_resolution and voiced_threshold must be numbers, "
                              f"got {numbers!r}")
        if not 0 < self.f0_fmin < self.f0_fmax <= self.sample_rate / 2:
            raise ConfigError(f"{self.NAME}: expected 0 < f0_fmin < f0_fmax <= sample_rate/2 = "
                              f"{self.sample_rate / 2:g} Hz, got f0_fmin={self.f0_fmin!r}, f0_fmax={self.f0_fmax!r}")
        if self.sample_rate / self.f0_fmin >= self.n_fft - 1:
            raise ConfigError(f"{self.NAME}: one period of f0_fmin={self.f0_fmin:g} Hz at {self.sample_rate} Hz does "
                              f"not fit in n_fft={self.n_fft} samples; raise f0_fmin or n_fft")
        if not 0 < self.f0_resolution <= 1 or not 0 < self.voiced_threshold < 1:
            raise ConfigError(f"{self.NAME}: expected 0 < f0_resolution <= 1 and 0 < voiced_threshold < 1, got "
                              f"{self.f0_resolution!r} and {self.voiced_threshold!r}")


CONFIGS: dict[str, type[WuConfig]] = {"lps": LpsConfig, "mfcc": MfccConfig, "chroma": ChromaConfig,
                                      "tempogram": TempogramConfig, "prosody": ProsodyConfig}


def worker_config(key: str, **overrides: Any) -> WuConfig:
    """The checked config of worker feature ``key`` (``"lps"`` ... ``"prosody"``) with overrides."""
    if key not in CONFIGS:
        raise ConfigError(f"unknown worker feature {key!r}; expected one of {list(CONFIGS)} (paper letters: "
                          f"{WORKER_FEATURES}; W, waveform reconstruction, has no feature set)")
    return dataclass_replace_checked(CONFIGS[key](), overrides, where=f"feature set {FEATURE_SET_NAMES[key]!r}")


def group_sizes(key: str, cfg: WuConfig) -> list[tuple[str, int]]:
    """``[(group, n_channels)]`` of worker feature ``key`` under ``cfg``."""
    sizes = {"lps": lambda c: [("lps", 1 + c.n_fft // 2)], "mfcc": lambda c: [("mfcc", c.n_mfcc)],
             "chroma": lambda c: [("chroma", c.n_chroma)], "tempogram": lambda c: [("tempogram", c.win_length)],
             "prosody": lambda c: [(g, 1) for g in PROSODY_GROUPS]}
    return sizes[key](cfg)


def worker_dims(configs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, int]:
    """Channels per worker feature key; defaults ``{"lps": 1025, "mfcc": 20, "chroma": 12,
    "tempogram": 384, "prosody": 4}``. ``configs`` = per-key overrides as for :func:`worker_features`."""
    configs = _check_config_keys(configs)
    return {key: sum(n for _, n in group_sizes(key, worker_config(key, **configs.get(key, {})))) for key in CONFIGS}


# --------------------------------------------------------------------------------------------- maths


def _power(y: np.ndarray, cfg: WuConfig) -> np.ndarray:
    """``|stft|**2`` ``(1 + n_fft // 2, n_frames)`` float32, as librosa's features compute it."""
    return np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length)) ** 2


def _mel_db(power: np.ndarray, cfg: WuConfig, n_mels: int) -> np.ndarray:
    """``power_to_db(melspectrogram(...))`` at librosa's defaults: what mfcc and onset_strength read."""
    return librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=cfg.sample_rate, n_mels=n_mels))


def cmnd_voicing(y: np.ndarray, cfg: ProsodyConfig) -> tuple[np.ndarray, np.ndarray]:
    """YIN's F0 (Hz) and pYIN's voicing probability per frame, each ``(n_frames,)`` float64.

    One pass over the cumulative mean normalised difference (de Cheveigne & Kawahara 2002, eq. 8),
    computed block by block as librosa computes it; see the module docstring for the voicing formula.
    """
    sr, fl = cfg.sample_rate, cfg.n_fft
    frames = librosa.util.frame(np.pad(y, fl // 2), frame_length=fl, hop_length=cfg.hop_length)  # (fl, n_frames)
    min_period = int(np.floor(sr / cfg.f0_fmax))
    max_period = min(int(np.ceil(sr / cfg.f0_fmin)), fl - 1)
    thresholds = np.linspace(0, 1, PYIN_THRESHOLDS + 1)
    prior_cdf = scipy.stats.beta.cdf(thresholds, *PYIN_BETA)
    f0, prob = [], []
    for start in range(0, frames.shape[1], CMND_BLOCK_FRAMES):
        block = frames[:, start:start + CMND_BLOCK_FRAMES]
        acf = librosa.autocorrelate(block, max_size=max_period + 1, axis=-2)
        energy = np.cumsum(np.square(block), axis=-2)
        energy[0] = 0  # as librosa: its d(1) is 2 (r0 - r1), so F0 and voicing equal librosa's
        diff = 2 * (acf[0:1] - acf[1:max_period + 1]) - energy[:max_period]  # d(tau), tau = 1..max_period
        mean = np.cumsum(diff, axis=-2) / np.arange(1, max_period + 1, dtype=diff.dtype)[:, None]
        d = diff[min_period - 1:] / (mean[min_period - 1:] + np.finfo(mean.dtype).tiny)  # tau = min..max_period
        trough = np.zeros(d.shape, dtype=bool)  # librosa's rule: strict local minima, both ends included
        trough[1:-1] = (d[1:-1] < d[:-2]) & (d[1:-1] <= d[2:])
        trough[0], trough[-1] = d[0] < d[1], d[-1] < d[-2]
        cols = np.arange(d.shape[1])
        below = trough & (d < YIN_TROUGH_THRESHOLD)
        idx = np.where(below.any(axis=0), np.argmax(below, axis=0), np.argmin(d, axis=0))
        mid = np.clip(idx, 1, d.shape[0] - 2)  # parabolic refinement, 0 at either end of the lag range
        a = d[mid + 1, cols] + d[mid - 1, cols] - 2 * d[mid, cols]
        b = (d[mid + 1, cols] - d[mid - 1, cols]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where((np.abs(b) < np.abs(a)) & (idx == mid), -b / a, 0.0)
        f0.append(sr / (min_period + idx + shift))
        deepest = np.where(trough, d, np.inf).min(axis=0)
        below_cdf = prior_cdf[np.searchsorted(thresholds[1:], deepest, side="right")]  # P(threshold <= deepest)
        prob.append(np.where(np.isfinite(deepest), 1 - (1 - PYIN_NO_TROUGH_PROB) * below_cdf, 0.0))
    return np.concatenate(f0).astype(np.float64), np.clip(np.concatenate(prob), 0, 1)


def interpolated_log_f0(f0: np.ndarray, voiced: np.ndarray, *, floor_hz: float) -> np.ndarray:
    """PASE's lf0: ``log(f0)`` on voiced frames, linear across unvoiced gaps, held at both ends;
    ``log(floor_hz)`` everywhere when no frame is voiced. ``f0``, ``voiced``: ``(n_frames,)``."""
    ok = np.asarray(voiced, dtype=bool) & np.isfinite(f0) & (f0 > 0)
    if not ok.any():
        return np.full(f0.shape, math.log(floor_hz))
    t = np.arange(f0.shape[0])
    return np.interp(t, t[ok], np.log(f0[ok]))


def prosody(y: np.ndarray, cfg: ProsodyConfig) -> np.ndarray:
    """lf0, voiced_prob, energy, zcr ``(4, n_frames)`` float64 of one waveform at ``cfg.sample_rate``."""
    sr, fl, hop = cfg.sample_rate, cfg.n_fft, cfg.hop_length
    if cfg.f0_method == "pyin":
        f0, voiced, prob = librosa.pyin(y, fmin=cfg.f0_fmin, fmax=cfg.f0_fmax, sr=sr, frame_length=fl, hop_length=hop,
                                        resolution=cfg.f0_resolution)
        prob = np.nan_to_num(prob, nan=0.0)
    else:
        f0, prob = cmnd_voicing(y, cfg)
        voiced = prob >= cfg.voiced_threshold
    lf0 = interpolated_log_f0(f0, voiced, floor_hz=cfg.f0_fmin)
    energy = librosa.feature.rms(y=y, frame_length=fl, hop_length=hop)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=fl, hop_length=hop)[0]
    return np.stack([lf0, prob, energy, zcr]).astype(np.float64)


def _compute(key: str, y: np.ndarray, cfg: Any, powers: dict[int, np.ndarray]) -> np.ndarray:
    """Worker feature ``key`` of one validated waveform -> ``(n_frames, n_channels)`` float32.

    ``powers`` caches the power STFT by ``n_fft`` so several sets of one clip share it."""
    with warnings.catch_warnings():
        # expected on valid input: n_fft > len(y) (centred zero padding covers it), tuning or pYIN on silence
        warnings.simplefilter("ignore", UserWarning)
        if key == "prosody":
            out = prosody(y, cfg)
        else:
            if cfg.n_fft not in powers:
                powers[cfg.n_fft] = _power(y, cfg)
            P = powers[cfg.n_fft]
            if key == "lps":
                out = librosa.power_to_db(P, ref=1.0, amin=cfg.amin, top_db=cfg.top_db)
            elif key == "mfcc":
                out = librosa.feature.mfcc(S=_mel_db(P, cfg, cfg.n_mels), n_mfcc=cfg.n_mfcc)
            elif key == "chroma":
                out = librosa.feature.chroma_stft(S=P, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                                  n_chroma=cfg.n_chroma, tuning=cfg.tuning)
            else:  # tempogram: onset_strength(y) is the spectral flux of this dB mel (128 bands)
                onset = librosa.onset.onset_strength(S=_mel_db(P, cfg, 128), sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                                     hop_length=cfg.hop_length)
                out = librosa.feature.tempogram(onset_envelope=onset, sr=cfg.sample_rate, hop_length=cfg.hop_length,
                                                win_length=cfg.win_length)
    return np.ascontiguousarray(np.asarray(out).T, dtype=np.float32)


# --------------------------------------------------------------------------------------------- feature sets


class WuWorkerFeatures(FeatureSet):
    """One worker target of Wu et al. as a feature set ``(n_samples,) -> (1 + n // hop, n_channels)``."""

    def __init__(self, key: str, config: WuConfig) -> None:
        name = FEATURE_SET_NAMES[key]
        super().__init__(name, config, FeatureSpec.from_sizes(name, group_sizes(key, config)))
        self.key = key

    @property
    def min_samples(self) -> int:
        """Any non-empty waveform: centred frames are zero-padded, so every ``n >= 1`` has its frames."""
        return 1


def _frames(self: WuWorkerFeatures, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [_compute(self.key, np.asarray(y, dtype=np.float32), self.config, {}) for y in waveforms]


register_backend(WuWorkerFeatures, "reference")(_frames)
register_backend(WuWorkerFeatures, "fast")(_frames)  # one implementation (module docstring)


def _factory(key: str) -> Any:
    def create(**config: Any) -> WuWorkerFeatures:
        return WuWorkerFeatures(key, worker_config(key, **config))

    create.__name__ = f"create_{FEATURE_SET_NAMES[key]}"
    create.__doc__ = f"``get_feature_set({FEATURE_SET_NAMES[key]!r}, **overrides)``; see ``{CONFIGS[key].__name__}``."
    return create


for _key in CONFIGS:
    register_feature_set(FEATURE_SET_NAMES[_key])(_factory(_key))


# --------------------------------------------------------------------------------------------- targets


def _check_config_keys(configs: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise ConfigError(f"worker feature configs: unknown key(s) {unknown}; expected some of {list(CONFIGS)}")
    return configs


def worker_features(wave: np.ndarray, *, names: Sequence[str], sample_rate: int = SAMPLE_RATE,
                    configs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Raw worker targets of one mono waveform ``(n_samples,)`` -> ``{name: (1 + n // hop, C)}`` float32.

    ``names``: worker feature keys (``"lps"``, ``"mfcc"``, ``"chroma"``, ``"tempogram"``, ``"prosody"``;
    ``WORKER_FEATURES`` maps the paper's letters to them). ``sample_rate`` must be the features' rate
    (16 kHz): resample first, so the frame count is that of the waveform the encoder reads.
    ``configs``: per-key config overrides, e.g. ``{"prosody": {"f0_method": "pyin"}}``; every key
    must keep one ``sample_rate`` and ``hop_length`` (one frame grid). No CMVN is applied.
    """
    if isinstance(names, str):
        raise ConfigError(f"worker_features: names must be a sequence of keys such as ['lps', 'prosody'], "
                          f"got the string {names!r}")
    configs = _check_config_keys(configs)
    cfgs = {key: worker_config(key, **configs.get(key, {})) for key in dict.fromkeys(names)}
    grids = {(c.sample_rate, c.hop_length) for c in cfgs.values()}
    if len(grids) > 1:
        raise ConfigError(f"worker_features: the configs use several (sample_rate, hop_length) frame grids "
                          f"{sorted(grids)}; expected one")
    y = validate_waveform(wave, sample_rate=sample_rate, min_samples=1, source="worker_features waveform")
    for key, cfg in cfgs.items():
        if sample_rate != cfg.sample_rate:
            raise AudioError(f"worker_features waveform: sample_rate {sample_rate} Hz, but {FEATURE_SET_NAMES[key]} "
                             f"is defined at {cfg.sample_rate} Hz; resample first (m3bert.audio.resample)")
    powers: dict[int, np.ndarray] = {}
    out = {key: _compute(key, y, cfg, powers) for key, cfg in cfgs.items()}
    for key, f in out.items():
        expected = (1 + y.shape[0] // cfgs[key].hop_length, sum(n for _, n in group_sizes(key, cfgs[key])))
        if f.shape != expected:  # pragma: no cover - guards the librosa contract
            raise DataError(f"worker_features: {key} has shape {f.shape}, expected {expected}")
        if not np.isfinite(f).all():
            raise AudioError(f"worker_features waveform: {key} is not finite (peak sample "
                             f"{float(np.abs(y).max()):.3g}); expected audio of plausible magnitude")
    return out
