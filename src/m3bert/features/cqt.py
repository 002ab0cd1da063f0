"""A fast constant-Q transform that reproduces ``librosa.cqt`` (the literal 144-bin M3BERT CQT).

``librosa.cqt`` spends most of its ~45 ms per 30 s clip rebuilding its filter bank (wavelets, their
FFTs and sparsification) on every call. This module runs librosa's own multirate algorithm
(``librosa.core.constantq.vqt`` with ``gamma=0``: early downsampling, one octave of filters per
STFT, halving the signal between octaves with soxr, trimming, ``1/sqrt(length)`` scaling) with the
same public building blocks (``filters.wavelet``, ``util.sparsify_rows``, ``resample``), but
builds every octave's frequency-domain filter bank once per configuration and applies it as a
dense complex matmul on a torch STFT. The numbers are librosa's up to float32 summation order
(~1e-6 relative in the Frobenius norm; the tests hold it to 1e-3 of the log-CQT as the issue asks).

Norm: librosa's defaults, i.e. L1-normalised wavelets (``norm=1``), Hann window,
``filter_scale=1``, ``sparsity=0.01``, ``scale=True`` (outputs divided by sqrt(filter length)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import librosa
import numpy as np
import soxr
import torch

from m3bert.core.errors import ConfigError


@dataclass(frozen=True)
class _Octave:
    n_fft: int  # STFT size of this octave (next power of two above its longest filter)
    hop_length: int  # hop at this octave's sample rate
    basis: torch.Tensor  # (n_filters, n_fft // 2 + 1) complex64 frequency-domain filters


@dataclass(frozen=True)
class CqtPlan:
    """Everything about a CQT configuration that does not depend on the signal."""

    early_factor: int  # initial downsampling factor (power of two) before the top octave
    octaves: tuple[_Octave, ...]  # top octave first, as librosa computes them
    n_bins: int  # output bins
    inv_sqrt_lengths: np.ndarray  # (n_bins,) float32, librosa's scale=True normalisation


def _relative_bandwidth(freqs: np.ndarray) -> np.ndarray:
    """librosa.filters._relative_bandwidth: local octave resolution around each frequency."""
    logf = np.log2(freqs)
    bpo = np.empty_like(freqs)
    bpo[0] = 1 / (logf[1] - logf[0])
    bpo[-1] = 1 / (logf[-1] - logf[-2])
    bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
    return (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)


def _num_two_factors(x: int) -> int:
    n = 0
    while x > 0 and x % 2 == 0:
        n, x = n + 1, x // 2
    return n


@functools.lru_cache(maxsize=8)
def cqt_plan(sample_rate: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
             tuning: float = 0.0, window: str = "hann", filter_scale: float = 1.0, norm: float = 1.0,
             sparsity: float = 0.01) -> CqtPlan:
    """Build (once) the multirate filter banks of ``librosa.cqt`` for one configuration."""

    n_octaves = int(math.ceil(n_bins / bins_per_octave))
    n_filters = min(bins_per_octave, n_bins)
    fmin = fmin * 2.0 ** (tuning / bins_per_octave)
    freqs = librosa.interval_frequencies(n_bins=n_bins, fmin=fmin, intervals="equal",
                                         bins_per_octave=bins_per_octave, sort=True)
    alpha = _relative_bandwidth(freqs)
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sample_rate, window=window,
                                                filter_scale=filter_scale, gamma=0, alpha=alpha)
    nyquist = sample_rate / 2.0
    if cutoff > nyquist:

        raise ConfigError(f"CQT top filter reaches {cutoff:.0f} Hz, above Nyquist {nyquist:.0f} Hz; use fewer bins")
    # librosa's __early_downsample_count
    count1 = max(0, int(np.ceil(np.log2(nyquist / cutoff)) - 1) - 1)
    count2 = max(0, _num_two_factors(hop_length) - n_octaves + 1)
    count = min(count1, count2)
    factor = 2 ** count
    sr, hop = sample_rate / factor, hop_length // factor
    octaves = []
    my_sr, my_hop = sr, hop
    for i in range(n_octaves):
        sl = slice(-n_filters, None) if i == 0 else slice(-n_filters * (i + 1), -n_filters * i)
        basis, lengths = librosa.filters.wavelet(freqs=freqs[sl], sr=my_sr, filter_scale=filter_scale, norm=norm,
                                                 pad_fft=True, window=window, gamma=0, alpha=alpha[sl])
        n_fft = basis.shape[1]
        basis = basis * (lengths[:, None] / float(n_fft))
        fft_basis = np.fft.fft(basis, n=n_fft, axis=1)[:, : n_fft // 2 + 1]
        fft_basis = librosa.util.sparsify_rows(fft_basis, quantile=sparsity, dtype=np.complex64).toarray()
        fft_basis = fft_basis * np.sqrt(sr / my_sr)
        octaves.append(_Octave(n_fft, my_hop, torch.from_numpy(np.ascontiguousarray(fft_basis, dtype=np.complex64))))
        if my_hop % 2 == 0:
            my_hop //= 2
            my_sr /= 2.0
        elif i < n_octaves - 1:  # librosa would stop downsampling and silently mis-scale; refuse instead

            raise ConfigError(f"CQT hop_length {hop_length} must be divisible by 2^{n_octaves - 1 + count}")
    lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window=window, filter_scale=filter_scale,
                                                 gamma=0, alpha=alpha)
    return CqtPlan(factor, tuple(octaves), n_bins, (1.0 / np.sqrt(lengths)).astype(np.float32))


def _halve(y: np.ndarray, factor: int) -> np.ndarray:
    """librosa.resample(y, orig_sr=factor, target_sr=1, res_type="soxr_hq", scale=True)."""

    n_out = int(np.ceil(y.shape[-1] / factor))
    z = soxr.resample(y, factor, 1, quality="soxr_hq")
    if z.shape[-1] > n_out:
        z = z[:n_out]
    elif z.shape[-1] < n_out:
        z = np.pad(z, (0, n_out - z.shape[-1]))
    return (z * np.sqrt(factor)).astype(y.dtype, copy=False)


def cqt_magnitude(y: np.ndarray, plan: CqtPlan) -> np.ndarray:
    """``|librosa.cqt(y, ...)|`` for one clip ``(n_samples,)`` -> ``(n_bins, n_frames)`` float32."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    if plan.early_factor > 1:
        y = _halve(y, plan.early_factor)
    responses = []
    with torch.inference_mode():
        for i, octv in enumerate(plan.octaves):
            x = torch.from_numpy(y)
            D = torch.stft(x, n_fft=octv.n_fft, hop_length=octv.hop_length, window=torch.ones(octv.n_fft),
                           center=True, pad_mode="constant", return_complex=True)
            responses.append(torch.matmul(octv.basis, D).abs())
            if i < len(plan.octaves) - 1:
                y = _halve(y, 2)
        n_frames = min(r.shape[-1] for r in responses)
        out = torch.empty(plan.n_bins, n_frames)
        end = plan.n_bins
        for r in responses:  # librosa's __trim_stack: top octave fills the top bins
            n = r.shape[0]
            if end < n:
                out[:end] = r[-end:, :n_frames]
            else:
                out[end - n: end] = r[:, :n_frames]
            end -= n
    return out.numpy() * plan.inv_sqrt_lengths[:, None]


def literal_cqt_batch(waveforms: Sequence[np.ndarray], cfg: Any, tunings: Sequence[float]) -> list[np.ndarray]:
    """Fast ``cqt_variant="literal"``: ``[(n_cqt, n_frames_i)]`` linear magnitudes, one per clip."""
    out = []
    for y, tuning in zip(waveforms, tunings):
        plan = cqt_plan(int(cfg.sample_rate), int(cfg.hop_length), float(cfg.cqt_fmin), int(cfg.n_cqt),
                        int(cfg.cqt_bins_per_octave), float(tuning))
        out.append(cqt_magnitude(y, plan))
    return out
