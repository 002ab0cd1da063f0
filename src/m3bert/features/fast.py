"""Fast batched implementation of the M3BERT features (torch STFT + librosa's filter banks).

One zero-padded batch of clips goes through a single ``torch.stft``; chroma, mel and MFCC all
read the same power spectrogram. The filter banks, window and DCT matrix are librosa's own
(built once per config and cached), so the only numerical differences from the reference are
float32 summation order (~1e-7 relative). Batching is exact: centred frames with constant (zero)
padding never see past ``n_fft // 2`` samples beyond a clip's end, so zero-filling shorter clips
to the batch length changes none of their frames; frames past each clip's end are dropped.

The CQT is computed per clip by the function registered for the config's ``cqt_variant`` in
:data:`FAST_CQT` (see ``cqt.py`` for the fast literal CQT).

Threads: the whole path runs with one torch thread (restored afterwards). Its operations are small
(at most 1025 x 1292 per clip), intra-op threading gains little on them, and on a busy machine
OpenMP threads spinning against other processes made them up to 7x slower (measured: a 30 s clip
took 0.91 s with 2 threads vs 0.12 s with 1 under load 8 on 2 cores). Parallelism comes from
worker processes (``m3bert features --workers N``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Sequence

import librosa
import numpy as np
import scipy.fft
import torch

from m3bert.core.registry import Registry
from m3bert.features import reference

#: cqt_variant -> fast function ``(list[(n_samples_i,)], cfg, tunings) -> list[(n_cqt, n_frames_i)]``
#: (linear magnitude, before the log). Defaults to the librosa reference per clip.
FAST_CQT = Registry("fast CQT")  # variant -> batched CQT(waves, cfg, tunings) -> list of (n_bins, frames)


def _reference_cqt_batch(variant: str) -> Callable[[Sequence[np.ndarray], Any, Sequence[float]], list[np.ndarray]]:
    fn = reference.CQT_VARIANTS[variant]
    return lambda ys, cfg, tunings: [fn(y, cfg, t) for y, t in zip(ys, tunings)]


@functools.lru_cache(maxsize=16)
def _banks(sample_rate: int, n_fft: int, window: str, n_mels: int, n_mfcc: int, n_chroma: int,
           tuning: float) -> dict[str, torch.Tensor]:

    win = librosa.filters.get_window(window, n_fft, fftbins=True).astype(np.float32)
    mel_fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # (n_mels, 1 + n_fft // 2)
    chroma_fb = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=tuning, n_chroma=n_chroma)
    # DCT-II (orthonormal) as a matrix so MFCCs are one matmul: rows = first n_mfcc coefficients
    dct = scipy.fft.dct(np.eye(n_mels, dtype=np.float32), type=2, norm="ortho", axis=0)[:n_mfcc]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            for k, v in {"window": win, "mel": mel_fb, "chroma": chroma_fb, "dct": dct}.items()}


def power_spectrogram(batch: torch.Tensor, *, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """``(batch, n_samples)`` -> centred, zero-padded power STFT ``(batch, 1 + n_fft // 2, n_frames)``."""
    X = torch.stft(batch, n_fft=n_fft, hop_length=hop_length, window=window, center=True, pad_mode="constant",
                   return_complex=True)
    return X.real.square() + X.imag.square()


def power_to_db(S: torch.Tensor, *, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """librosa's ``power_to_db(S, ref=1.0)`` for one clip ``(n_mels, n_frames)`` (max over the clip)."""
    db = 10.0 * torch.log10(torch.clamp(S, min=amin))
    return torch.maximum(db, db.max() - top_db)


def normalize_max(S: torch.Tensor) -> torch.Tensor:
    """librosa's ``util.normalize(S, norm=inf, axis=0)``: each frame divided by its max; frames whose
    max is below the float32 tiny value are left as they are (silence stays zero)."""
    peak = S.abs().amax(dim=0, keepdim=True)
    tiny = torch.finfo(S.dtype).tiny
    return S / torch.where(peak < tiny, torch.ones_like(peak), peak)


@contextlib.contextmanager
def single_thread():
    """Run torch ops with one intra-op thread inside the block (see the module docstring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def clip_tunings(waveforms: Sequence[np.ndarray], cfg: Any) -> list[float]:
    """Tuning per clip: the configured value, or (``tuning=None``) librosa's estimate per clip."""
    if cfg.tuning is None:
        # as librosa.feature.chroma_stft does (costly; the default config fixes tuning=0)
        return [reference.estimate_tuning(y, cfg) for y in waveforms]
    return [float(cfg.tuning)] * len(waveforms)


def stft_groups_batch(waveforms: Sequence[np.ndarray], cfg: Any, tunings: Sequence[float]) -> list[dict[str, np.ndarray]]:
    """chroma, mfcc, dmfcc and log-mel of several clips from one batched STFT, ``[{group: (n, n_frames_i)}]``."""
    n_frames = [1 + len(y) // cfg.hop_length for y in waveforms]
    n_max = max(len(y) for y in waveforms)
    batch = torch.zeros(len(waveforms), n_max, dtype=torch.float32)
    for i, y in enumerate(waveforms):
        batch[i, : len(y)] = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    out: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        base = _banks(cfg.sample_rate, cfg.n_fft, cfg.window, cfg.n_mels, cfg.n_mfcc, cfg.n_chroma, tunings[0])
        power = power_spectrogram(batch, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=base["window"])
        mel = torch.matmul(base["mel"], power)  # (B, n_mels, T)
        for i, T in enumerate(n_frames):
            P = power[i, :, :T]
            banks = base if tunings[i] == tunings[0] else _banks(cfg.sample_rate, cfg.n_fft, cfg.window, cfg.n_mels,
                                                                 cfg.n_mfcc, cfg.n_chroma, tunings[i])
            chroma = normalize_max(torch.matmul(banks["chroma"], P))
            M = mel[i, :, :T]
            mfcc = torch.matmul(base["dct"], power_to_db(M)).numpy()
            log_mel = torch.log(cfg.log_scale * M + cfg.log_offset)
            out.append({"chroma": chroma.numpy(), "mfcc": mfcc, "dmfcc": reference.delta(mfcc, width=cfg.delta_width),
                        "mel": log_mel.numpy()})
    return out


def cqt_groups_batch(waveforms: Sequence[np.ndarray], cfg: Any, tunings: Sequence[float]) -> list[np.ndarray]:
    """Log-CQT of several clips, ``[(n_cqt, n_frames_i)]`` float32, by the variant's registered fast function."""
    cqt_fn = FAST_CQT.get(cfg.cqt_variant) or _reference_cqt_batch(cfg.cqt_variant)
    out = []
    for y, C in zip(waveforms, cqt_fn(waveforms, cfg, tunings)):
        T = 1 + len(y) // cfg.hop_length
        out.append(reference.log_compress(C[:, :T], scale=cfg.log_scale, offset=cfg.log_offset).astype(np.float32))
    return out


def fast_groups_batch(waveforms: Sequence[np.ndarray], cfg: Any) -> list[dict[str, np.ndarray]]:
    """All groups for several clips, ``[{group: (n_channels, n_frames_i)}]`` (like ``reference_groups``)."""
    tunings = clip_tunings(waveforms, cfg)
    out = stft_groups_batch(waveforms, cfg, tunings)
    for d, C in zip(out, cqt_groups_batch(waveforms, cfg, tunings)):
        d["cqt"] = C
    return out


def fast_frames_batch(waveforms: Sequence[np.ndarray], cfg: Any) -> list[np.ndarray]:
    """Raw frames ``[(n_frames_i, n_channels)]`` float32 for several clips."""
    out = []
    with single_thread():
        groups_list = fast_groups_batch(waveforms, cfg)
    for groups in groups_list:
        out.append(np.ascontiguousarray(np.concatenate(list(groups.values()), axis=0).T, dtype=np.float32))
    return out
