"""PASE and PASE+ waveform encoders (Wu et al. 2021 sec. 3.1), architectures ``pase`` and ``pase+``.

**PASE** (Pascual et al. 2019, sec. 2; Wu: "the same encoder architecture as the original PASE
work"): a SincNet layer (Ravanelli & Bengio 2018: 64 learnable band-pass filters of 251 taps, each
a difference of two windowed sincs whose cut-offs are the parameters) followed by 7 one-dimensional
conv blocks, every block conv -> batch norm -> PReLU. Kernels ``[20, 11, 11, 11, 11, 11, 11]``,
strides ``[10, 2, 1, 2, 1, 2, 2]`` (product 160: one output per 10 ms at 16 kHz), widths
``[64, 128, 128, 256, 256, 512, 512]``, then a 1x1 projection to 100 dims and a batch norm without
affine parameters (the released ``cfg/frontend/PASE.cfg``). **PASE+** (Ravanelli et al. 2020,
sec. 2; ``cfg/frontend/PASE+.cfg``): the same convs, plus *skip connections* (the outputs of the
SincNet layer and of every conv block but the last are averaged to frame rate, projected to 256
dims without bias and summed into the output) and a *QRNN* (Bradbury et al. 2017: one layer of 512
units, causal window of 2 frames, fo-pooling) on the last block, projected to 256 dims. We
implement the QRNN as in the paper (its fo-pooling is a linear recurrence, evaluated here by a
log-depth parallel scan, exact up to rounding, so no custom kernel is needed). Parameters: ``pase`` 5.82 M (PASE
paper: 5.8 M), ``pase+`` 7.83 M (Wu et al.: ~8 M).

Input: ``frames (B, T, 160)``, the ``wave16k`` feature set (:mod:`m3bert.features.waveform`):
frame ``t`` holds samples ``160 t - 80 .. 160 t + 79``; the network reads the frames as one
waveform of ``160 T`` samples and returns ``T`` frames, frame ``t`` centred on the centre of input
frame ``t`` (to 5 samples), i.e. on sample ``160 t``, where the worker targets' centred frames are
(the skips of the lower blocks are centred within 35 samples, 2.2 ms, of it).

Hidden states (every one ``(B, T, emb_dim)`` at frame rate, one width so every layer tool,
``--layers all`` and bench's layer grid, works):

* ``pase``: ``[projection, embedding]``: the 1x1 projection of the last conv block and PASE's output
  (its batch norm). PASE has no other ``emb_dim``-wide state; the conv blocks are 64..512 wide and
  run at 16..1 steps per frame. Hidden state 0 is the one the benchmark treats as the input layer.
* ``pase+``: ``[skips, recurrent, embedding]``: the summed skip projections (what the conv blocks
  contribute, multi-scale and local), the projected QRNN output (the long-context path) and PASE+'s
  output (their normalised sum), so layer selection tells which path a task needs.

Deviations from the released code, and why:

* Zero padding instead of reflection, with each conv's ``kernel - stride`` padding split so output
  step ``t`` is centred on its input steps (``centred_padding``; the released ``(k//2 - 1, k//2)``
  puts PASE's frame ``t`` near sample ``160 t + 150``). A padded window in a batch then gives exactly
  what it gives alone: padded steps are zeroed after every block and batch-norm statistics skip
  them (:mod:`m3bert.models.layers`), and the QRNN is causal, so padding after a window never
  reaches its valid frames.
* Skips are averaged to frame rate *before* their (linear, bias-free) projection: the same numbers
  as projecting first, without a ``(B, 256, 160 T)`` tensor for the SincNet skip.
* The SincNet low cut-off is clamped to ``nyquist - min_band`` (the released code clamps only the
  high one, so a low cut-off that drifts past Nyquist gives ``high < low``); a symmetric Hamming
  window (torch's) replaces the released code's half-window formula.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import ConfigError
from m3bert.models.base import ModelBase, register_architecture, register_model_config
from m3bert.models.encoder import Enrichment, EnrichmentConfig
from m3bert.models.layers import MaskedBatchNorm1d, time_mask


@dataclass
class PaseConfig:
    """PASE's encoder (``cfg/frontend/PASE.cfg``): SincNet + conv blocks + projection."""

    n_input: int = bounded(160, ge=1)  # samples per input frame (wave16k's hop_length) = the product of the strides
    max_frames: int = bounded(1001, ge=1)  # frames per window: 1001 = a 10 s clip (Wu's AudioSet clips) in one window
    sample_rate: int = bounded(16000, ge=1)  # Hz of the input waveform; the SincNet cut-offs are in its Hz
    sinc_filters: int = bounded(64, ge=1)  # SincNet band-pass filters (PASE: 64)
    sinc_kernel: int = bounded(251, ge=1)  # SincNet filter length in samples, odd (PASE: 251)
    sinc_min_low_hz: float = bounded(50.0, gt=0)  # lowest low cut-off a filter can learn (SincNet: 50 Hz)
    sinc_min_band_hz: float = bounded(50.0, gt=0)  # narrowest band a filter can learn (SincNet: 50 Hz)
    kernels: list[int] = bounded(default_factory=lambda: [20, 11, 11, 11, 11, 11, 11], ge=1, items=True)  # conv block kernels
    strides: list[int] = bounded(default_factory=lambda: [10, 2, 1, 2, 1, 2, 2], ge=1, items=True)  # conv block strides
    channels: list[int] = bounded(default_factory=lambda: [64, 128, 128, 256, 256, 512, 512], ge=1, items=True)  # block widths
    emb_dim: int = bounded(100, ge=1)  # output width (PASE: 100)
    prelu_init: float = bounded(0.0, ge=0, le=1)  # initial PReLU slope (released code: 0, the blocks start as ReLUs)
    bn_momentum: float = bounded(0.1, gt=0, le=1)  # batch-norm running-average momentum (torch default)
    bn_eps: float = bounded(1e-5, gt=0)  # batch-norm epsilon (torch default)
    enrichment: EnrichmentConfig | None = None  # M3BERT's enrichment layer on the output (set by m3bert enrich)

    def __post_init__(self) -> None:
        if isinstance(self.enrichment, dict):
            self.enrichment = from_dict(EnrichmentConfig, self.enrichment, where="model.enrichment")
        self.kernels, self.strides, self.channels = (list(map(int, v)) for v in (self.kernels, self.strides, self.channels))
        if not len(self.kernels) == len(self.strides) == len(self.channels) >= 1:
            raise ConfigError(f"model.kernels/strides/channels must have one equal length >= 1, got "
                              f"{len(self.kernels)}/{len(self.strides)}/{len(self.channels)}")
        if math.prod(self.strides) != self.n_input:
            raise ConfigError(f"model.strides={self.strides} multiply to {math.prod(self.strides)}, but one output frame "
                              f"is n_input={self.n_input} samples; they must be equal")
        bad = [(k, s) for k, s in zip(self.kernels, self.strides) if k < s]
        if bad:
            raise ConfigError(f"model.kernels: each kernel must be >= its stride, got (kernel, stride) {bad}")
        if self.sinc_kernel % 2 == 0:
            raise ConfigError(f"model.sinc_kernel={self.sinc_kernel} must be odd (symmetric, zero-phase filters)")
        if self.sinc_min_low_hz + self.sinc_min_band_hz >= self.sample_rate / 2 - 30:
            raise ConfigError(f"model.sinc_min_low_hz + sinc_min_band_hz = {self.sinc_min_low_hz + self.sinc_min_band_hz} "
                              f"leaves no band below Nyquist ({self.sample_rate / 2} Hz)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return from_dict(cls, data, where="model")


@dataclass
class PasePlusConfig(PaseConfig):
    """PASE+'s encoder (``cfg/frontend/PASE+.cfg``): PASE's convs + skip projections + QRNN."""

    emb_dim: int = bounded(256, ge=1)  # output width (PASE+: 256)
    rnn_dim: int = bounded(512, ge=1)  # QRNN units (PASE+: 512)
    qrnn_window: int = bounded(2, ge=1)  # QRNN causal convolution width in frames (PASE+: 2)


def centred_padding(kernels: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """``(left, right)`` zero padding per conv: ``kernel - stride`` in all (``L`` steps in, ``L / stride``
    out), split so output step ``t`` is centred on its ``stride`` input steps. An odd total leaves half a
    step; its sign is chosen from the coarsest layer down so the errors cancel (PASE: +5 samples)."""
    units = [math.prod(strides[:i]) for i in range(len(strides))]  # samples per input step of each conv
    pads: list[tuple[int, int]] = [(0, 0)] * len(kernels)
    error = 0.0
    for i in reversed(range(len(kernels))):
        total = kernels[i] - strides[i]
        left = total // 2
        if total % 2:  # left = total // 2 puts the centre half a step late, left + 1 half a step early
            if error > 0:
                left += 1
                error -= units[i] / 2
            else:
                error += units[i] / 2
        pads[i] = (left, total - left)
    return pads


def centre_offset(kernels: list[int], strides: list[int], pads: list[tuple[int, int]]) -> float:
    """Samples by which output frame ``t``'s receptive field is centred after the centre of input frame ``t``."""
    return sum(((k - s) / 2 - p[0]) * math.prod(strides[:i]) for i, (k, s, p) in enumerate(zip(kernels, strides, pads)))


class SincConv(nn.Module):
    """SincNet's layer: ``n`` band-pass filters, ``h = (2 f2 sinc(2 f2 n) - 2 f1 sinc(2 f1 n)) w(n) / (2 (f2 - f1))``.

    The parameters are the cut-offs (initialised mel-spaced, as SincNet); :meth:`band_edges` maps them
    to a valid band ``min_low <= low < high <= nyquist`` whatever their values."""

    def __init__(self, cfg: PaseConfig) -> None:
        super().__init__()
        self.sample_rate, self.min_low, self.min_band = float(cfg.sample_rate), cfg.sinc_min_low_hz, cfg.sinc_min_band_hz
        mel = np.linspace(_to_mel(30.0), _to_mel(self.sample_rate / 2 - (self.min_low + self.min_band)), cfg.sinc_filters + 1)
        hz = _to_hz(mel)
        self.low_hz = nn.Parameter(torch.tensor(hz[:-1], dtype=torch.float32))  # (n,) raw low cut-offs
        self.band_hz = nn.Parameter(torch.tensor(np.diff(hz), dtype=torch.float32))  # (n,) raw bandwidths
        half = (cfg.sinc_kernel - 1) // 2
        self.register_buffer("taps", torch.arange(-half, half + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hamming_window(cfg.sinc_kernel, periodic=False), persistent=False)

    def band_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` cut-offs in Hz, each ``(n_filters,)``, ``min_low <= low < high <= nyquist``."""
        nyquist = self.sample_rate / 2
        low = torch.clamp(self.min_low + self.low_hz.abs(), max=nyquist - self.min_band)
        high = torch.clamp(low + self.min_band + self.band_hz.abs(), max=nyquist)
        return low, high

    def filters(self) -> torch.Tensor:
        """The filters ``(n_filters, 1, kernel)``, unit gain at the centre tap before windowing."""
        low, high = self.band_edges()
        f1, f2 = (low / self.sample_rate)[:, None], (high / self.sample_rate)[:, None]  # cycles per sample
        h = 2 * f2 * torch.sinc(2 * f2 * self.taps) - 2 * f1 * torch.sinc(2 * f1 * self.taps)
        return (h * self.window / (2 * (f2 - f1))).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.taps.shape[0] // 2
        return F.conv1d(x, self.filters(), padding=half)  # zero-phase: output sample i is centred on input i


def _to_mel(hz: Any) -> Any:
    return 2595 * np.log10(1 + np.asarray(hz) / 700)


def _to_hz(mel: Any) -> Any:
    return 700 * (10 ** (np.asarray(mel) / 2595) - 1)


class Block(nn.Module):
    """conv (zero padding ``pad``) -> batch norm (statistics over valid steps) -> PReLU; padded steps kept at zero.

    ``conv`` is the SincNet layer (which pads itself), or ``None`` for a ``Conv1d(c_in, c_out, kernel,
    stride)``; its padding is the conv's own when that gives the same numbers (symmetric, or one more
    on the left with a stride whose last window never reaches the right pad), saving a copy of ``x``."""

    def __init__(self, conv: nn.Module | None, c_in: int, c_out: int, *, kernel: int, stride: int,
                 pad: tuple[int, int], cfg: PaseConfig) -> None:
        super().__init__()
        self.stride, self.pad = stride, pad
        native = conv is not None or pad[0] == pad[1] or (pad[0] == pad[1] + 1 and stride > 1)
        self.extra_pad = None if native else pad
        self.conv = conv if conv is not None else nn.Conv1d(c_in, c_out, kernel, stride, padding=pad[0] if native else 0)
        self.bn = MaskedBatchNorm1d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.act = nn.PReLU(c_out, init=cfg.prelu_init)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C_in, L)``, valid ``lengths (B,)`` -> ``(B, C_out, L / stride)``, their lengths."""
        x = self.conv(x if self.extra_pad is None else F.pad(x, self.extra_pad))
        lengths = torch.div(lengths, self.stride, rounding_mode="floor")
        valid = time_mask(lengths, x.shape[-1])
        x = self.act(self.bn(x, valid))
        return (x if bool(valid.all()) else x * valid[:, None, :]), lengths


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c_t = a_t c_{t-1} + b_t`` along axis 1 (``c_{-1} = 0``) for ``a, b (B, T, H)`` -> ``c (B, T, H)``.

    Hillis-Steele scan of the affine maps ``c -> a c + b``: ``ceil(log2 T)`` elementwise steps, exact up
    to rounding (no logs or divisions), and causal: ``c_t`` reads steps ``<= t`` only."""
    d = 1
    while d < a.shape[1]:
        b = b + a * F.pad(b[:, :-d], (0, 0, d, 0))
        a = a * F.pad(a[:, :-d], (0, 0, d, 0), value=1.0)
        d *= 2
    return b


class QRNN(nn.Module):
    """One QRNN layer with fo-pooling (Bradbury et al. 2017, as PASE+ uses it): a causal convolution of
    ``window`` frames gives ``z = tanh``, ``f, o = sigmoid``; ``c_t = f_t c_{t-1} + (1 - f_t) z_t``, ``h_t = o_t c_t``."""

    def __init__(self, n_in: int, n_hidden: int, *, window: int) -> None:
        super().__init__()
        self.window = window
        self.gates = nn.Linear(window * n_in, 3 * n_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, T, n_in)`` -> ``h (B, T, n_hidden)``; step ``t`` reads frames ``t - window + 1 .. t``."""
        t = x.shape[1]
        past = [F.pad(x, (0, 0, k, 0))[:, :t] for k in range(self.window - 1, 0, -1)]
        z, f, o = self.gates(torch.cat([*past, x], dim=-1)).chunk(3, dim=-1)
        f = torch.sigmoid(f)
        return torch.sigmoid(o) * linear_scan(f, (1 - f) * torch.tanh(z))


class PaseEncoder(ModelBase):
    """PASE: ``forward(frames (B, T, 160), lengths (B,)) -> [projection, embedding]``, each ``(B, T, emb_dim)``."""

    architecture = "pase"
    input_kind: ClassVar[str] = "waveform"  # frames are raw samples (wave16k), not spectral features
    hidden_state_names: ClassVar[tuple[str, ...]] = ("projection", "embedding")

    def __init__(self, cfg: PaseConfig, *, feature_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_config = feature_config
        self.enrichment = Enrichment(cfg.emb_dim, cfg.enrichment) if cfg.enrichment is not None else None
        half = (cfg.sinc_kernel - 1) // 2
        self.sinc = Block(SincConv(cfg), 1, cfg.sinc_filters, kernel=cfg.sinc_kernel, stride=1, pad=(half, half), cfg=cfg)
        pads = centred_padding(cfg.kernels, cfg.strides)
        c_in = [cfg.sinc_filters, *cfg.channels[:-1]]
        self.blocks = nn.ModuleList(Block(None, ci, co, kernel=k, stride=s, pad=p, cfg=cfg)
                                    for ci, co, k, s, p in zip(c_in, cfg.channels, cfg.kernels, cfg.strides, pads))
        self.proj = nn.Linear(self.proj_input, cfg.emb_dim)  # PASE's last 1x1 conv ("W")
        self.norm_out = MaskedBatchNorm1d(cfg.emb_dim, affine=False, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        # initialisation: torch's defaults for Conv1d / Linear / BatchNorm (the released code's too)

    @property
    def proj_input(self) -> int:
        return self.cfg.channels[-1]

    @property
    def n_hidden_states(self) -> int:
        return len(self.hidden_state_names) + (self.enrichment is not None)

    @property
    def layer_dims(self) -> list[int]:
        return [self.cfg.emb_dim] * len(self.hidden_state_names) + ([self.enrichment.out_dim] if self.enrichment else [])

    @property
    def frame_rate(self) -> float:
        """Output frames per second (100 for 16 kHz / 160)."""
        return self.cfg.sample_rate / self.cfg.n_input

    @property
    def centre_offset_samples(self) -> float:
        """Samples by which output frame ``t`` is centred after input frame ``t``'s centre (module doc)."""
        return centre_offset(self.cfg.kernels, self.cfg.strides, [b.pad for b in self.blocks])

    def convs(self, frames: torch.Tensor, lengths: torch.Tensor | None = None, *,
              keep: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """SincNet + conv blocks: ``(last block (B, C, T), [SincNet and blocks but the last, each averaged
        to frame rate (B, C_k, T)] if keep else [], valid frame mask (B, T))``."""
        if frames.dim() != 3 or frames.shape[-1] != self.cfg.n_input:
            raise ConfigError(f"{self.architecture} input must be (batch, frames, {self.cfg.n_input}) waveform frames "
                              f"(feature set wave16k), got {tuple(frames.shape)}")
        b, t, n = frames.shape
        if t > self.cfg.max_frames:
            raise ConfigError(f"sequence of {t} frames exceeds model.max_frames={self.cfg.max_frames}; window it")
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=frames.device)
        else:
            lengths = torch.as_tensor(lengths, device=frames.device)
            if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
                raise ConfigError(f"lengths must be (batch,)=({b},) with values in [1, {t}], got {lengths.tolist()}")
        valid = time_mask(lengths, t)
        x = (frames if bool(valid.all()) else frames * valid[:, :, None]).reshape(b, 1, t * n)
        samples = lengths * n
        kept = []
        for i, block in enumerate([self.sinc, *self.blocks]):
            x, samples = block(x, samples)
            if keep and i < len(self.blocks):  # steps of a frame are contiguous: average them
                kept.append(x.reshape(b, x.shape[1], t, -1).mean(dim=-1))
        return x, kept, valid

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        h, _, valid = self.convs(frames, lengths)
        p = self.proj(h.transpose(1, 2))  # (B, T, emb_dim)
        return self._finish([p], p, valid)

    def _finish(self, states: list[torch.Tensor], out: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """Append the normalised output and zero every state's padded frames."""
        y = self.norm_out(out.transpose(1, 2), valid).transpose(1, 2)
        m = valid[:, :, None].to(y.dtype)
        enriched = (self.enrichment(y),) if self.enrichment is not None else ()
        return [s * m for s in (*states, y, *enriched)]


class PasePlusEncoder(PaseEncoder):
    """PASE+: ``forward(frames (B, T, 160), lengths (B,)) -> [skips, recurrent, embedding]``, each ``(B, T, emb_dim)``."""

    architecture = "pase+"
    hidden_state_names: ClassVar[tuple[str, ...]] = ("skips", "recurrent", "embedding")

    def __init__(self, cfg: PasePlusConfig, *, feature_config: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, feature_config=feature_config)
        widths = [cfg.sinc_filters, *cfg.channels[:-1]]  # SincNet and every block but the last
        self.skips = nn.ModuleList(nn.Linear(c, cfg.emb_dim, bias=False) for c in widths)
        self.qrnn = QRNN(cfg.channels[-1], cfg.rnn_dim, window=cfg.qrnn_window)

    @property
    def proj_input(self) -> int:
        return self.cfg.rnn_dim

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        h, kept, valid = self.convs(frames, lengths, keep=True)
        skips = sum(proj(k.transpose(1, 2)) for proj, k in zip(self.skips, kept))  # (B, T, emb_dim)
        recurrent = self.proj(self.qrnn(h.transpose(1, 2)))  # (B, T, emb_dim)
        return self._finish([skips, recurrent], skips + recurrent, valid)


register_architecture("pase", config_cls=PaseConfig, model_cls=PaseEncoder,
                      description="PASE (Pascual et al. 2019): SincNet + 7 conv blocks on the 16 kHz waveform, 100-d at 100 Hz")
register_architecture("pase+", config_cls=PasePlusConfig, model_cls=PasePlusEncoder,
                      description="PASE+ (Ravanelli et al. 2020): PASE's convs + skip projections + QRNN, 256-d at 100 Hz")
register_model_config("pase", architecture="pase", feature_set="wave16k")  # the paper's sizes
register_model_config("pase+", architecture="pase+", feature_set="wave16k")
# an eighth of the widths, 16 SincNet filters of 101 taps: CPU-sized, for tests and the built-in corpus
TINY = {"sinc_filters": 16, "sinc_kernel": 101, "channels": [16, 32, 32, 64, 64, 128, 128], "emb_dim": 64}
register_model_config("pase-tiny", architecture="pase", feature_set="wave16k", **TINY)
register_model_config("pase+-tiny", architecture="pase+", feature_set="wave16k", rnn_dim=128, **TINY)
