"""Kim et al. (2020)'s representation network (Table 3 / Fig. 4) and its multi-source strategies, ``kim-cnn``.

The network (Table 3): ``conv1`` 5x5 (16, time stride 2) -> max-pool 2x2 -> ``conv2`` 3x3 (32) ->
pool -> ``conv3`` (64) -> pool -> ``conv4`` (64) -> pool -> ``conv5`` (128) -> pool -> ``conv61``
3x3 (256) -> ``conv62`` 1x1 (256) -> global average pooling -> ``fc-feature`` FC(256), each with
batch normalisation and ReLU, zero 'same' padding; the representation is ``fc-feature``. Dropout
(0.5) sits between ``fc-feature`` and the per-source ``fc-output``, which are task heads here
(:mod:`m3bert.enrich.multisource`), so the exported model is the representation network alone.

**One mechanism for the five strategies** (Table 4, Fig. 5): the network is seven *stages*
(conv1 .. conv5 blocks, the conv6 block with the pooling, fc-feature). The first
``shared_stages`` are shared; the rest is repeated in ``n_branches`` per-source branches whose
outputs are concatenated. :data:`STRATEGIES` maps the paper's names to that one parameter,
placing the branch point as the authors' released code does (``musmtl/model.py``: ``branch_at='2'``
shares only the conv1 block, so conv2 is the first per-source layer; ``'4'`` shares conv1-3;
``'6'`` shares conv1-5; ``'fc'`` shares everything up to fc-feature):

==========  ==============  =========  ==============
strategy    shared stages   branches   dimensionality
==========  ==============  =========  ==============
SS-R        7 (one source)  1          d
MSS-CR      0               m          d x m
MS-CR@2     1               m          d x m
MS-CR@4     3               m          d x m
MS-CR@6     5               m          d x m
MS-SR@FC    7               1          d
==========  ==============  =========  ==============

**Keeping T for the Embedder.** The encoder interface returns hidden states ``(B, T, D)`` with the
input's ``T``. Kim's network pools time away (four 2x2 pools, a time stride and the GAP), and its
representation is one vector per 2.5 s window. We keep the network exactly as published and
*repeat the window's vector on each of its frames*, rather than changing it into a frequency-only
pooling network with time-'same' convolutions (which would be a different model with a different
receptive field and no ``fc-feature`` per excerpt). With ``max_frames`` = 216 (2.5 s of
``kim_mel``) the Embedder's windows are the paper's excerpts: a clip's mean-pooled embedding is the
frame-weighted mean of its window vectors, and the Kim protocol (non-overlapping 2.5 s slices,
mean + std over slices) sees exactly the paper's per-slice ``fc-feature``. Frame-level outputs are
piecewise constant per window, which is what the network can tell.

Hidden states: ``[gap, fc-feature]``, each concatenated over branches, so both have width
``d x n_branches`` (``fc_dim`` must equal the last conv width, as in the paper: 256 = 256) and
every layer tool (``--layers all``, bench's layer grid) works.

Variable lengths: a batch may hold windows shorter than ``T`` (``lengths``). Padded frames are
zeroed after every block, convolutions use zero padding, pools run in ``ceil_mode`` on post-ReLU
(non-negative) maps, batch-norm statistics in training use the valid positions only and the GAP
averages over valid positions, so a padded window gives exactly the output it gives alone.
``ceil_mode`` (the paper's pools floor) changes nothing for 216 frames x 128 bands except that an
odd trailing row joins the GAP, and lets windows shorter than 64 frames through.

``kim-cnn`` is the paper's network on ``kim_mel``; ``kim-cnn-324`` the same on the 324-d M3BERT
features (1.07 s windows of 46 frames at 43 Hz); ``kim-cnn-tiny`` a quarter-width network on 64
mel bands for tests and the built-in corpus.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import ConfigError
from m3bert.models.base import ModelBase, register_architecture, register_model_config
from m3bert.models.layers import MaskedBatchNorm2d

N_STAGES = 7  # conv1, conv2, conv3, conv4, conv5, conv6 block (+ GAP), fc-feature


@dataclass(frozen=True)
class Strategy:
    """One of the paper's representation strategies (Table 4) as the network's two parameters."""

    name: str  # "ss-r" | "mss-cr" | "ms-cr@2" | "ms-cr@4" | "ms-cr@6" | "ms-sr@fc"
    shared_stages: int  # stages before the branch point
    concatenated: bool  # one branch per source (d x m) or a single shared representation (d)
    size_code: float  # the paper's ordinal network size r* (sec. 5.2): SS-R 0 ... MSS-CR 1
    label: str  # as the paper writes it


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("ss-r", N_STAGES, False, 0.0, "SS-R"),
    Strategy("ms-sr@fc", N_STAGES, False, 0.2, "MS-SR@FC"),
    Strategy("ms-cr@6", 5, True, 0.4, "MS-CR@6"),
    Strategy("ms-cr@4", 3, True, 0.6, "MS-CR@4"),
    Strategy("ms-cr@2", 1, True, 0.8, "MS-CR@2"),
    Strategy("mss-cr", 0, True, 1.0, "MSS-CR"),
)}


def get_strategy(name: str) -> Strategy:
    key = str(name).lower()
    if key not in STRATEGIES:
        raise ConfigError(f"strategy={name!r}; expected one of {[s.label for s in STRATEGIES.values()]}")
    return STRATEGIES[key]


def strategy_overrides(name: str, sources: list[str]) -> dict[str, Any]:
    """``KimConfig`` fields of ``strategy`` for these sources (SS-R needs one, the others two or more)."""
    s = get_strategy(name)
    m = len(sources)
    if s.name == "ss-r" and m != 1:
        raise ConfigError(f"strategy SS-R learns from one source, got {m}: {sources}; use MSS-CR, MS-CR@k or MS-SR@FC")
    if s.name != "ss-r" and m < 2:
        raise ConfigError(f"strategy {s.label} needs at least two sources, got {sources}; one source is SS-R")
    return {"shared_stages": s.shared_stages, "n_branches": m if s.concatenated else 1, "sources": list(sources)}


@dataclass
class KimConfig:
    """Architecture of Kim et al.'s CNN (Table 3) with its branch point."""

    n_input: int = bounded(128, ge=1)  # frequency bins per frame (the feature set's channels)
    max_frames: int = bounded(216, ge=1)  # frames per window (2.5 s of kim_mel: Table 3's 216)
    channels: list[int] = bounded(default_factory=lambda: [16, 32, 64, 64, 128, 256], ge=1, items=True)  # conv1..conv5, conv61/62
    conv1_kernel: int = bounded(5, ge=1)  # conv1 is k x k (5); the others 3x3 and conv62 1x1
    conv1_stride: int = bounded(2, ge=1)  # conv1's stride on the time axis (Table 3: 2)
    fc_dim: int = bounded(256, ge=1)  # d, the fc-feature width (must equal channels[-1])
    shared_stages: int = bounded(N_STAGES, ge=0, le=N_STAGES)  # stages before the branch point (not 6)
    n_branches: int = bounded(1, ge=1)  # per-source branches after the branch point
    sources: list[str] = field(default_factory=list)  # source of each branch (or of the shared net), for the record
    bn_momentum: float = bounded(0.1, gt=0, le=1)  # batch-norm running-average momentum (torch default)
    bn_eps: float = bounded(1e-5, gt=0)  # batch-norm epsilon (torch default)

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        if len(self.channels) != 6:
            raise ConfigError(f"model.channels={self.channels}; expected 6 widths (conv1..conv5, conv6)")
        if self.fc_dim != self.channels[-1]:
            raise ConfigError(f"model.fc_dim={self.fc_dim} must equal the last conv width {self.channels[-1]} "
                              "(the two hidden states, gap and fc-feature, share one width)")
        if self.shared_stages == 6:
            raise ConfigError("model.shared_stages=6 would share the GAP but branch fc-feature; use 7 (MS-SR@FC) or <= 5")
        if self.shared_stages == N_STAGES and self.n_branches != 1:
            raise ConfigError(f"model.n_branches={self.n_branches} with shared_stages={N_STAGES}: nothing is left to branch")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KimConfig":
        return from_dict(cls, data, where="model")


def _time_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class ConvStage(nn.Module):
    """conv -> BN -> ReLU (-> conv 1x1 -> BN -> ReLU) -> 2x2 max-pool or GAP, padding kept at zero."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, time_stride: int = 1, pool: bool = True,
                 conv1x1: bool = False, cfg: KimConfig) -> None:
        super().__init__()
        self.time_stride, self.pool = time_stride, pool
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=(time_stride, 1), padding=kernel // 2)
        self.bn = MaskedBatchNorm2d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 1) if conv1x1 else None
        self.bn2 = MaskedBatchNorm2d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum) if conv1x1 else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x)
        if self.time_stride > 1:
            lengths = torch.div(lengths + self.time_stride - 1, self.time_stride, rounding_mode="floor")
        valid = _time_mask(lengths, x.shape[2])
        x = F.relu(self.bn(x, valid)) * valid[:, None, :, None]
        if self.conv2 is not None:
            x = F.relu(self.bn2(self.conv2(x), valid)) * valid[:, None, :, None]
        if self.pool:
            x = F.max_pool2d(x, 2, ceil_mode=True)
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            return x, lengths
        # global average pooling over the valid time steps and every frequency bin: (B, C)
        return x.sum((2, 3)) / (lengths.to(x.dtype)[:, None] * x.shape[3]), lengths


class FcStage(nn.Module):
    """``fc-feature``: Linear -> BN -> ReLU on the pooled vector."""

    def __init__(self, dim_in: int, dim: int, cfg: KimConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_in, dim)
        self.bn = nn.BatchNorm1d(dim, eps=cfg.bn_eps, momentum=cfg.bn_momentum)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.relu(self.bn(self.fc(x))), lengths


def build_stages(cfg: KimConfig, first: int, last: int) -> nn.ModuleList:
    """Stages ``first .. last - 1`` (0-based) of the network."""
    c = cfg.channels
    out = []
    for i in range(first, last):
        if i == 0:
            out.append(ConvStage(1, c[0], cfg.conv1_kernel, time_stride=cfg.conv1_stride, cfg=cfg))
        elif i < 5:
            out.append(ConvStage(c[i - 1], c[i], 3, cfg=cfg))
        elif i == 5:
            out.append(ConvStage(c[4], c[5], 3, pool=False, conv1x1=True, cfg=cfg))
        else:
            out.append(FcStage(c[5], cfg.fc_dim, cfg))
    return nn.ModuleList(out)


class KimEncoder(ModelBase):
    """Kim et al.'s CNN with ``n_branches`` per-source branches after ``shared_stages`` shared stages.

    ``forward(frames (B, T, n_input), lengths (B,)) -> [gap (B, T, D), fc-feature (B, T, D)]`` with
    ``D = fc_dim x n_branches``, each window's vector repeated on its ``T`` frames (module doc).
    :meth:`pooled` gives the ``(B, D)`` vectors themselves.
    """

    architecture = "kim-cnn"

    def __init__(self, cfg: KimConfig, *, feature_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_config = feature_config
        self.enrichment = None  # no M3BERT enrichment layer (callers may look for one)
        self.shared = build_stages(cfg, 0, cfg.shared_stages)
        self.branches = nn.ModuleList(build_stages(cfg, cfg.shared_stages, N_STAGES) for _ in range(cfg.n_branches)
                                      ) if cfg.shared_stages < N_STAGES else nn.ModuleList()
        # initialisation: torch's defaults for Conv2d / Linear / BatchNorm (the released code's too)

    @property
    def n_hidden_states(self) -> int:
        return 2

    @property
    def layer_dims(self) -> list[int]:
        return [self.cfg.fc_dim * self.cfg.n_branches] * 2

    def branch_slice(self, index: int) -> tuple[int, int]:
        """Columns of the representation that branch ``index`` writes (all of it without branches)."""
        if self.cfg.n_branches == 1:
            return 0, self.cfg.fc_dim
        if not 0 <= index < self.cfg.n_branches:
            raise ConfigError(f"branch {index} out of range: the model has {self.cfg.n_branches} branches")
        return index * self.cfg.fc_dim, (index + 1) * self.cfg.fc_dim

    def pooled(self, frames: torch.Tensor, lengths: torch.Tensor | None = None,
               branches: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gap, fc-feature)`` per window, each ``(B, D)``; ``branches`` computes only those (training)."""
        if frames.dim() != 3 or frames.shape[-1] != self.cfg.n_input:
            raise ConfigError(f"kim-cnn input must be (batch, frames, {self.cfg.n_input}), got {tuple(frames.shape)}")
        b, t, _ = frames.shape
        if t > self.cfg.max_frames:
            raise ConfigError(f"sequence of {t} frames exceeds model.max_frames={self.cfg.max_frames}; window it")
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=frames.device)
        else:
            lengths = torch.as_tensor(lengths, device=frames.device)
            if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
                raise ConfigError(f"lengths must be (batch,)=({b},) with values in [1, {t}], got {lengths.tolist()}")
        x = frames.unsqueeze(1) * _time_mask(lengths, t)[:, None, :, None].to(frames.dtype)  # (B, 1, T, F)
        n = lengths
        gap = None
        for i, stage in enumerate(self.shared):
            x, n = stage(x, n)
            if i == 5:
                gap = x
        if not len(self.branches):
            return gap, x
        gaps, fcs = [], []
        for k in (range(len(self.branches)) if branches is None else branches):
            y, m = x, n
            for j, stage in enumerate(self.branches[k]):
                y, m = stage(y, m)
                if self.cfg.shared_stages + j == 5:
                    gaps.append(y)
            fcs.append(y)
        return torch.cat(gaps, dim=1), torch.cat(fcs, dim=1)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        b, t = frames.shape[0], frames.shape[1]
        gap, fc = self.pooled(frames, lengths)
        return [gap[:, None, :].expand(b, t, gap.shape[1]), fc[:, None, :].expand(b, t, fc.shape[1])]


register_architecture("kim-cnn", config_cls=KimConfig, model_cls=KimEncoder,
                      description="Kim et al. 2020: VGG-like 2-D CNN, fc-feature FC(256), multi-source branches")
register_model_config("kim-cnn", architecture="kim-cnn", feature_set="kim_mel")  # Table 3 on 2.5 s of kim_mel
register_model_config("kim-cnn-324", architecture="kim-cnn", feature_set="m3bert324", n_input=324, max_frames=46)
# quarter width on 64 mel bands: CPU-sized, for tests and the built-in corpus experiment
register_model_config("kim-cnn-tiny", architecture="kim-cnn", feature_set="kim_mel", feature_options={"n_mels": 64},
                      n_input=64, channels=[4, 8, 16, 16, 32, 64], fc_dim=64)
