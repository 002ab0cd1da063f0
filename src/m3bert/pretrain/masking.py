"""Masking policies for masked-reconstruction pre-training (M2BERT, Greer et al. 2023).

Every policy is a pure, seeded function on a padded batch::

    corrupted, loss_mask = mask_cfm(frames, lengths, rng=rng, cfg=CFMConfig())

``frames`` is ``(batch, frames, channels)`` float, ``lengths`` ``(batch,)`` the number of real
frames of each row. The result is a corrupted copy of ``frames`` (the input is never modified)
and a boolean ``loss_mask`` ``(batch, frames, channels)`` that is True on the cells the
reconstruction loss must count. Padding (frames at or after ``lengths[b]``) is never changed
and never counted -- the seed implementation masked and scored padding, which rewards the
model for predicting zeros it can see.

Policies (paper section "Masking policy 1-3"):

* **CFM**, contiguous frame masking: span lengths from a geometric distribution with
  ``p = 0.2`` restricted to ``[2, 7]`` (mean 3.87 frames, as the paper states; SpanBERT's
  truncated-and-renormalised geometric, not a clip, which would give 4.15), start uniform,
  until 15 % of the row's real frames are covered. Each span is zeroed (70 %), replaced by
  one random real frame of the same row (20 %) or left unchanged (10 %); all three count in
  the loss.
* **CCM**, contiguous channel masking: width ``c ~ U{1..H}``, start ``~ U{0..H-c}`` over the
  ``H`` channels of the named groups (default ``mel+cqt``, 272 channels of the M3BERT set),
  zeroed over all real frames of the row.
* **PM**, patch masking: the real region is tiled into equal squares of ``patch_size``
  frames x ``patch_size`` channels; squares are drawn with replacement until 15 % of the real
  cells are masked (zeroed).

Policies combine (``["cfm", "ccm"]`` is the paper's best): each is applied to the output of
the previous one and the loss masks are OR-ed. New policies are added with
:func:`register_masking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError
from m3bert.core.registry import Registry

# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass
class CFMConfig:
    """Contiguous frame masking."""

    ratio: float = bounded(0.15, gt=0, le=1)  # fraction of each row's real frames to mask
    p: float = bounded(0.2, gt=0, le=1)  # parameter of the geometric span-length distribution
    min_span: int = bounded(2, ge=1)  # shortest span (frames)
    max_span: int = bounded(7, ge=1)  # longest span (frames)
    zero_prob: float = bounded(0.7, ge=0, le=1)  # probability a span is set to zero (= the CMVN mean)
    random_prob: float = bounded(0.2, ge=0, le=1)  # probability a span is replaced by one random real frame; rest unchanged

    def __post_init__(self) -> None:
        _check_ratio("masking.cfm.ratio", self.ratio)
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"masking.cfm.p={self.p!r}; expected 0 < p <= 1")
        if not 1 <= self.min_span <= self.max_span:
            raise ConfigError(
                f"masking.cfm span range [{self.min_span}, {self.max_span}]; expected 1 <= min_span <= max_span"
            )
        if self.zero_prob < 0 or self.random_prob < 0 or self.zero_prob + self.random_prob > 1.0 + 1e-9:
            raise ConfigError(
                f"masking.cfm zero_prob={self.zero_prob!r} random_prob={self.random_prob!r}; "
                "expected non-negative probabilities summing to at most 1"
            )


@dataclass
class CCMConfig:
    """Contiguous channel masking."""

    groups: str = "mel+cqt"  # channel groups (FeatureSpec names joined by '+') the block lives in
    max_width: int = bounded(0, ge=0)  # largest block width; 0 = all H channels of the groups (the paper)

    def __post_init__(self) -> None:
        if not isinstance(self.groups, str) or not self.groups.strip("+, "):
            raise ConfigError(f"masking.ccm.groups={self.groups!r}; expected group names like 'mel+cqt'")
        if int(self.max_width) < 0:
            raise ConfigError(f"masking.ccm.max_width={self.max_width!r}; expected >= 0 (0 = all channels)")


@dataclass
class PMConfig:
    """Patch masking."""

    ratio: float = bounded(0.15, gt=0, le=1)  # fraction of each row's real cells (frames x channels) to mask
    patch_size: int = bounded(16, ge=1)  # side of the square patches, in frames and in channels

    def __post_init__(self) -> None:
        _check_ratio("masking.pm.ratio", self.ratio)
        if int(self.patch_size) < 1:
            raise ConfigError(f"masking.pm.patch_size={self.patch_size!r}; expected a positive integer")


@dataclass
class MaskingConfig:
    """Which policies corrupt the input, and their settings."""

    policies: list[str] = field(default_factory=lambda: ["cfm", "ccm"])  # applied in order; paper's best: CFM+CCM
    cfm: CFMConfig = field(default_factory=CFMConfig)  # contiguous frame masking settings
    ccm: CCMConfig = field(default_factory=CCMConfig)  # contiguous channel masking settings
    pm: PMConfig = field(default_factory=PMConfig)  # patch masking settings

    def __post_init__(self) -> None:
        if isinstance(self.policies, str):
            self.policies = [p for p in self.policies.replace(",", "+").split("+") if p]
        if not self.policies:
            raise ConfigError("masking.policies is empty; expected at least one of " f"{available_maskings()}")
        for name in self.policies:
            if name not in _REGISTRY:
                raise ConfigError(f"masking.policies: unknown policy {name!r}; registered: {available_maskings()}")
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"masking.policies={self.policies!r} repeats a policy")


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{name}={value!r}; expected a fraction in (0, 1]")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator (used as is) or an integer seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ConfigError("masking needs a seed or a numpy Generator (every random choice takes a seed)")
    return np.random.default_rng(int(rng))


def _check_batch(frames: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> np.ndarray:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 3:
        shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ConfigError(f"masking expects frames of shape (batch, frames, channels), got {shape}")
    lens = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64).reshape(-1)
    b, t, _ = frames.shape
    if lens.shape[0] != b:
        raise ConfigError(f"masking: lengths has {lens.shape[0]} entries for a batch of {b}")
    if (lens < 0).any() or (lens > t).any():
        raise ConfigError(f"masking: lengths {lens.tolist()} must lie in [0, {t}] (the padded length)")
    return lens


def span_length_probs(*, p: float, min_span: int, max_span: int) -> np.ndarray:
    """P(length = min_span + i), the geometric law ``p (1-p)^(l-1)`` restricted to the range."""
    lengths = np.arange(min_span, max_span + 1)
    w = p * (1.0 - p) ** (lengths - 1)
    return w / w.sum()


def sample_span_lengths(rng: np.random.Generator, n: int, *, p: float, min_span: int, max_span: int) -> np.ndarray:
    """``n`` span lengths from the restricted geometric law (int64 ``(n,)``)."""
    probs = span_length_probs(p=p, min_span=min_span, max_span=max_span)
    return min_span + rng.choice(len(probs), size=n, p=probs)


def cfm_spans(length: int, *, rng: np.random.Generator, cfg: CFMConfig) -> list[tuple[int, int, str, int]]:
    """The spans CFM masks in one row of ``length`` real frames: ``[(start, stop, mode, source), ...]``.

    ``mode`` is ``"zero"``, ``"random"`` or ``"keep"``; ``source`` is the real frame copied
    over a ``"random"`` span. Spans are drawn until ``round(ratio * length)`` distinct frames
    (at least one for a non-empty row) are covered; spans may overlap earlier ones (as in
    SpanBERT) and the span that crosses the budget is shortened so the budget is met exactly.
    Draws are made in blocks (one numpy call per quantity) because a 30 s row needs ~50 spans.
    """
    if length <= 0:
        return []
    budget = min(length, max(1, int(round(cfg.ratio * length))))
    covered = np.zeros(length, dtype=bool)
    n_covered = 0
    spans: list[tuple[int, int, str, int]] = []
    modes = ("zero", "random", "keep")
    mode_p = np.array([cfg.zero_prob, cfg.random_prob, max(0.0, 1.0 - cfg.zero_prob - cfg.random_prob)])
    mode_p = mode_p / mode_p.sum()
    block = budget // cfg.min_span + 4
    while n_covered < budget:
        sizes = np.minimum(sample_span_lengths(rng, block, p=cfg.p, min_span=cfg.min_span, max_span=cfg.max_span), length)
        starts = (rng.random(block) * (length - sizes + 1)).astype(np.int64)
        kinds = rng.choice(3, size=block, p=mode_p)
        sources = rng.integers(0, length, size=block)
        for span, start, kind, source in zip(sizes.tolist(), starts.tolist(), kinds.tolist(), sources.tolist()):
            stop = start + span
            new = np.flatnonzero(~covered[start:stop])
            if len(new) > budget - n_covered:  # shorten the last span to land exactly on the budget
                stop = start + int(new[budget - n_covered - 1]) + 1
            covered[start:stop] = True
            n_covered += min(len(new), budget - n_covered)
            spans.append((start, stop, modes[kind], source))
            if n_covered >= budget:
                break
    return spans


def channel_block(n_channels: int, *, rng: np.random.Generator, max_width: int = 0) -> tuple[int, int]:
    """CCM's block ``[start, start + c)`` within ``n_channels``: ``c ~ U{1..W}``, ``start ~ U{0..H-c}``."""
    widest = n_channels if max_width <= 0 else min(max_width, n_channels)
    width = int(rng.integers(1, widest + 1))
    start = int(rng.integers(0, n_channels - width + 1))
    return start, start + width


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------

MaskFn = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]
_REGISTRY: Registry = Registry("masking policy")


def register_masking(name: str) -> Callable[[MaskFn], MaskFn]:
    """Decorator: register ``fn(frames, lengths, *, rng, cfg: MaskingConfig, spec) -> (x, mask)``."""
    return _REGISTRY.register(name)


def available_maskings() -> list[str]:
    return sorted(_REGISTRY)


def mask_cfm(
    frames: torch.Tensor, lengths: torch.Tensor | Sequence[int], *, rng: np.random.Generator | int, cfg: CFMConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous frame masking. ``frames (B, T, C)`` -> ``(corrupted (B, T, C), loss_mask (B, T, C))``."""
    lens = _check_batch(frames, lengths)
    rng = as_rng(rng)
    b, t, c = frames.shape
    out = frames.clone()
    frame_mask = np.zeros((b, t), dtype=bool)
    for i in range(b):
        length = int(lens[i])
        for start, stop, mode, source in cfm_spans(length, rng=rng, cfg=cfg):
            frame_mask[i, start:stop] = True
            if mode == "zero":
                out[i, start:stop] = 0
            elif mode == "random":
                out[i, start:stop] = frames[i, source]
    mask = torch.from_numpy(frame_mask).to(frames.device)[:, :, None].expand(b, t, c).clone()
    return out, mask


def mask_ccm(
    frames: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    *,
    rng: np.random.Generator | int,
    channels: np.ndarray | Sequence[int],
    max_width: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous channel masking over the channel list ``channels`` (H indices, e.g. mel+cqt).

    The block is contiguous in ``channels`` order (the groups' own order), zeroed over the
    row's real frames. ``frames (B, T, C)`` -> ``(corrupted (B, T, C), loss_mask (B, T, C))``.
    """
    lens = _check_batch(frames, lengths)
    rng = as_rng(rng)
    channels = np.asarray(channels, dtype=np.int64)
    b, t, c = frames.shape
    if channels.size == 0 or channels.min() < 0 or channels.max() >= c:
        raise ConfigError(f"masking.ccm: channel indices must be non-empty and within [0, {c}), got {channels.size} "
                          f"indices in [{channels.min() if channels.size else '-'}, {channels.max() if channels.size else '-'}]")
    mask = np.zeros((b, t, c), dtype=bool)
    for i in range(b):
        start, stop = channel_block(len(channels), rng=rng, max_width=max_width)
        if lens[i] == 0:
            continue
        mask[i, : lens[i], channels[start:stop]] = True
    mask_t = torch.from_numpy(mask).to(frames.device)
    return frames.masked_fill(mask_t, 0), mask_t


def mask_pm(
    frames: torch.Tensor, lengths: torch.Tensor | Sequence[int], *, rng: np.random.Generator | int, cfg: PMConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch masking: ``frames (B, T, C)`` -> ``(corrupted (B, T, C), loss_mask (B, T, C))``.

    Squares sit on a grid over the real region (edge squares are cut by the row's length and
    the channel count). Drawing squares with replacement until the budget is met uncovers new
    squares in a uniformly random order, so a random permutation is walked instead (same law,
    no wasted draws). The last square may overshoot the budget by less than one square.
    """
    lens = _check_batch(frames, lengths)
    rng = as_rng(rng)
    b, t, c = frames.shape
    s = int(cfg.patch_size)
    mask = np.zeros((b, t, c), dtype=bool)
    n_col = -(-c // s)
    for i in range(b):
        length = int(lens[i])
        if length == 0:
            continue
        budget = max(1, int(round(cfg.ratio * length * c)))
        n_row = -(-length // s)
        order = rng.permutation(n_row * n_col)
        covered = 0
        for k in order:
            r, q = divmod(int(k), n_col)
            f0, f1 = r * s, min(length, (r + 1) * s)
            c0, c1 = q * s, min(c, (q + 1) * s)
            mask[i, f0:f1, c0:c1] = True
            covered += (f1 - f0) * (c1 - c0)
            if covered >= budget:
                break
    mask_t = torch.from_numpy(mask).to(frames.device)
    return frames.masked_fill(mask_t, 0), mask_t


@register_masking("cfm")
def _cfm(frames, lengths, *, rng, cfg: MaskingConfig, spec: Any):
    return mask_cfm(frames, lengths, rng=rng, cfg=cfg.cfm)


@register_masking("ccm")
def _ccm(frames, lengths, *, rng, cfg: MaskingConfig, spec: Any):
    return mask_ccm(frames, lengths, rng=rng, channels=ccm_channels(spec, cfg.ccm), max_width=cfg.ccm.max_width)


@register_masking("pm")
def _pm(frames, lengths, *, rng, cfg: MaskingConfig, spec: Any):
    return mask_pm(frames, lengths, rng=rng, cfg=cfg.pm)


def ccm_channels(spec: Any, cfg: CCMConfig) -> np.ndarray:
    """Channel indices CCM works on: ``spec.channels(cfg.groups)`` (``spec`` a FeatureSpec)."""
    if spec is None:
        raise ConfigError("masking.ccm needs the feature set's channel spec to resolve "
                          f"groups={cfg.groups!r}; pass spec=feature_set.spec")
    return np.asarray(spec.channels(cfg.groups), dtype=np.int64)


def apply_masking(
    frames: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    *,
    rng: np.random.Generator | int,
    cfg: MaskingConfig,
    spec: Any = None,
    policies: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``policies`` (default ``cfg.policies``) in order; loss masks are OR-ed.

    ``frames (B, T, C)``, ``lengths (B,)`` -> ``(corrupted (B, T, C), loss_mask (B, T, C) bool)``.
    ``spec`` (a ``FeatureSpec``) is needed by policies that address channel groups (CCM).
    """
    rng = as_rng(rng)
    names = list(policies) if policies is not None else list(cfg.policies)
    if not names:
        raise ConfigError(f"no masking policy given; registered: {available_maskings()}")
    x, mask = frames, None
    for name in names:
        if name not in _REGISTRY:
            raise ConfigError(f"unknown masking policy {name!r}; registered: {available_maskings()}")
        x, m = _REGISTRY[name](x, lengths, rng=rng, cfg=cfg, spec=spec)
        mask = m if mask is None else (mask | m)
    return x, mask
