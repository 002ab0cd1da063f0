"""A periodicity-preserving baseline: tempogram statistics (``--baseline tempogram-stats``).

Why (issue 17): on the built-in corpus no representation learned the tempo task (R^2 between
-0.06 and 0.04 for the encoders, the MFCC and the raw-feature statistics, chance included).
Those representations pool frames by their mean and std over time, which keeps *what* sounds
but throws away *when*: a clip at 80 BPM and the same clip at 120 BPM have nearly the same frame
statistics. A tempogram keeps the periodicities of the onsets; pooled over time it still says at
which rates events recur. This baseline is the floor a rhythm-aware representation must beat.

Per frame (librosa, 22,050 Hz, hop 512 = 23 ms, window 192 frames = 4.5 s; hop 256 measured the
same on the built-in tempo and dance tasks at 1.4x the cost):

* ``acf``: the autocorrelation tempogram of the onset-strength envelope
  (``librosa.feature.tempogram``), read at ``bins_per_octave`` log-spaced tempi from ``bpm_min``
  to ``bpm_max`` (linear interpolation between lags). It peaks at the tempo and its
  *sub*-harmonics (a pulse at 120 BPM also recurs every 1 s = 60 BPM).
* ``dft``: the magnitude of the Fourier tempogram (``librosa.feature.fourier_tempogram``) at the
  same tempi, normalised per frame; it peaks at the tempo and its *harmonics* (240, 360 BPM).
* ``product``: ``acf * dft`` (negative ACF set to 0): the harmonics of one and the sub-harmonics
  of the other cancel, leaving the tempo itself (the ACF x DFT combination of Peeters, "Template-
  based estimation of time-varying tempo", EURASIP J. Adv. Signal Process., 2007).
* ``cyclic``: ``product`` folded over octaves (bins of equal tempo class modulo a factor 2
  summed; Grosche, Mueller & Kurth, "Cyclic tempogram", ICASSP 2010): invariant to the metrical
  level a piece is notated or played at, which the corpus's quarter-note tempo label is not.
* ``onset``: the onset strength itself (how much happens).

Pooling (the benchmark's, so this row is compared like for like): ``mean`` = the time-mean of
the per-frame vector; ``meanstd`` = mean and std concatenated; ``slices-meanstd`` (Kim et al.)
= the mean of each 2.5 s slice, then mean and std over slices. One "layer" named after the
baseline. Deviation: the tempogram window (4.5 s) is longer than Kim's slices, so with
``slices-meanstd`` the slow tempi are read from zero-padded windows.
"""

from __future__ import annotations

import warnings

import librosa
import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.baselines import BASELINE_VERSION, BASELINES
from m3bert.evaluate.representations import Representation, load_clip_audio, slice_waveform
from m3bert.tasks.registry import Clip

RHYTHM_VERSION = 1  # bump when these features would change: part of the cache key
POOLINGS = ("mean", "meanstd", "slices-meanstd")


def bpm_grid(bpm_min: float, bpm_max: float, bins_per_octave: int) -> np.ndarray:
    """Log-spaced tempi ``bpm_min * 2**(k / bins_per_octave)`` up to ``bpm_max`` (inclusive), ``(G,)``."""
    if not 0 < bpm_min < bpm_max or bins_per_octave < 1:
        raise ConfigError(f"tempogram-stats: bpm range ({bpm_min}, {bpm_max}) and bins_per_octave={bins_per_octave}; "
                          "expected 0 < min < max and >= 1 bin per octave")
    n = int(np.floor(bins_per_octave * np.log2(bpm_max / bpm_min) + 1e-9)) + 1
    return bpm_min * 2.0 ** (np.arange(n) / bins_per_octave)


def _interp_rows(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values (K, T)`` sampled at fractional row positions ``at (G,)`` -> ``(G, T)`` (linear; 0 outside)."""
    k = values.shape[0]
    lo = np.floor(at).astype(np.int64)
    frac = (at - lo)[:, None]
    inside = (lo >= 0) & (lo + 1 < k)
    lo_c = np.clip(lo, 0, k - 1)
    hi_c = np.clip(lo + 1, 0, k - 1)
    out = values[lo_c] * (1 - frac) + values[hi_c] * frac
    out[~inside] = 0.0
    return out


class TempogramStatsBaseline(Representation):
    """Tempogram statistics of a clip (module doc): ``(1, D)`` per clip."""

    kind = "baseline"
    poolings = POOLINGS

    def __init__(self, *, sample_rate: int = 22050, hop_length: int = 512, win_length: int = 192,
                 bpm_min: float = 30.0, bpm_max: float = 480.0, bins_per_octave: int = 12,
                 name: str = "tempogram-stats") -> None:
        if hop_length < 1 or win_length < 4:
            raise ConfigError(f"tempogram-stats: hop_length={hop_length}, win_length={win_length}; expected >= 1 and >= 4")
        self.name = name
        self.sample_rate = int(sample_rate)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.bins_per_octave = int(bins_per_octave)
        self.bpm = bpm_grid(bpm_min, bpm_max, self.bins_per_octave)
        self.bpm_min, self.bpm_max = float(bpm_min), float(bpm_max)
        frame_rate = self.sample_rate / self.hop_length
        if 60.0 * frame_rate / self.bpm[0] >= self.win_length:
            raise ConfigError(f"tempogram-stats: bpm_min={bpm_min} needs a lag of {60 * frame_rate / bpm_min:.0f} frames, "
                              f"longer than win_length={win_length}")
        self._lags = 60.0 * frame_rate / self.bpm  # fractional ACF lag (frames) of each tempo
        freqs = librosa.fourier_tempo_frequencies(sr=self.sample_rate, win_length=self.win_length, hop_length=self.hop_length)
        self._dft_pos = np.interp(self.bpm, freqs, np.arange(len(freqs)))  # fractional DFT bin of each tempo

    @property
    def cache_key(self) -> str:
        return (f"baseline:tempogram-stats:v{BASELINE_VERSION}.{RHYTHM_VERSION}:sr{self.sample_rate}:hop{self.hop_length}:"
                f"win{self.win_length}:bpm{self.bpm_min:g}-{self.bpm_max:g}:b{self.bins_per_octave}:librosa{librosa.__version__}")

    @property
    def layer_names(self) -> list[str]:
        return [self.name]

    @property
    def block_names(self) -> list[tuple[str, int]]:
        """``(name, width)`` of each block of the per-frame vector, in order."""
        g = len(self.bpm)
        return [("acf", g), ("dft", g), ("product", g), ("cyclic", self.bins_per_octave), ("onset", 1)]

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """``(n_samples,) -> (n_frames, D)`` per-frame tempogram features (module doc)."""
        wave = np.asarray(wave, np.float32)
        if wave.ndim != 1 or wave.size < self.hop_length * 4:
            raise DataError(f"baseline {self.name}: waveform of shape {wave.shape}, expected a mono clip of at least "
                            f"{self.hop_length * 4} samples")
        oenv = librosa.onset.onset_strength(y=wave, sr=self.sample_rate, hop_length=self.hop_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a clip shorter than the window: librosa zero-pads it
            acf = librosa.feature.tempogram(onset_envelope=oenv, sr=self.sample_rate, hop_length=self.hop_length,
                                            win_length=self.win_length)  # (win, T), 1 at lag 0
            dft = np.abs(librosa.feature.fourier_tempogram(onset_envelope=oenv, sr=self.sample_rate,
                                                           hop_length=self.hop_length, win_length=self.win_length))
        acf_g = np.maximum(_interp_rows(acf, self._lags), 0.0)  # (G, T)
        dft_g = _interp_rows(dft, self._dft_pos)
        dft_g = dft_g / np.maximum(dft_g.max(axis=0, keepdims=True), 1e-10)
        n_t = min(acf_g.shape[1], dft_g.shape[1], oenv.shape[0])  # the DFT tempogram can have one frame more
        acf_g, dft_g = acf_g[:, :n_t], dft_g[:, :n_t]
        prod = acf_g * dft_g
        b = self.bins_per_octave
        cyclic = np.zeros((b, n_t))
        for k in range(len(self.bpm)):
            cyclic[k % b] += prod[k]
        out = np.concatenate([acf_g, dft_g, prod, cyclic, oenv[None, :n_t]]).T
        if not np.all(np.isfinite(out)):
            raise DataError(f"baseline {self.name}: non-finite tempogram features")
        return out.astype(np.float32)  # (T, D)

    def pool(self, wave: np.ndarray, pooling: str) -> np.ndarray:
        """``(1, D)`` (mean) or ``(1, 2D)`` (meanstd, slices-meanstd) for one waveform."""
        if pooling == "slices-meanstd":
            means = np.stack([self.frames(s).mean(0) for s in slice_waveform(wave, sample_rate=self.sample_rate)])
            return np.concatenate([means.mean(0), means.std(0)])[None].astype(np.float32)
        f = self.frames(wave)
        if pooling == "mean":
            return f.mean(0)[None]
        return np.concatenate([f.mean(0), f.std(0)])[None].astype(np.float32)

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        self.check_pooling(pooling)
        return self.pool(load_clip_audio(clip, sample_rate=self.sample_rate), pooling)


BASELINES.add("tempogram-stats", TempogramStatsBaseline)
