"""Pre-training objectives: a registry, so new targets never touch the training loop.

An objective is an ``nn.Module`` that owns its head(s) and knows how to turn a clean batch
into a loss::

    out = objective(encoder, batch)          # ObjectiveOutput(loss, logs)
    sums = objective.evaluate(encoder, batch)  # {"loss[cfm+ccm]": (sum, count), ...}

It corrupts the input itself (masking belongs to the objective: MERT's discrete targets mask
too, Wu et al.'s workers predict from clean input), computes targets from the clean frames,
and reports JSON-able logs. The loop only sums losses, steps the optimizer and checkpoints
``objective.state_dict()`` as ``head.safetensors``.

Registered here: ``reconstruction`` -- M2BERT's masked reconstruction (Greer et al. 2023):
the masking policies of :mod:`m3bert.pretrain.masking`, a two-layer head, Huber loss (delta 1) over the
masked cells only (never padding).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import ConfigError
from m3bert.core.registry import Registry
from m3bert.models.heads import ReconstructionHead, ReconstructionHeadConfig
from m3bert.pretrain.masking import MaskingConfig, apply_masking


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch."""

    loss: torch.Tensor  # scalar, differentiable
    logs: dict[str, float] = field(default_factory=dict)  # plain numbers for the metrics log


class Objective(nn.Module):
    """Base class: subclasses set ``config_class`` and implement ``forward`` and ``evaluate``."""

    config_class: ClassVar[type]

    def __init__(self, cfg: Any, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> None:
        super().__init__()
        self.cfg, self.encoder_cfg, self.spec, self.masking = cfg, encoder_cfg, spec, masking

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:  # pragma: no cover
        """Validation sums: ``{name: (sum of per-cell losses, number of cells)}``."""
        raise NotImplementedError


_REGISTRY: Registry = Registry("objective")


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register an :class:`Objective` subclass under ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        return _REGISTRY.register(name)(cls)

    return deco


def available_objectives() -> list[str]:
    return sorted(_REGISTRY)


def objective_config(data: dict[str, Any] | Any) -> Any:
    """Resolve an ``objective:`` config mapping (``name`` picks the class) into its dataclass."""
    if dataclasses.is_dataclass(data):
        return data
    data = dict(data or {})
    name = data.get("name", "reconstruction")
    if name not in _REGISTRY:
        raise ConfigError(f"objective.name={name!r}; registered: {available_objectives()}")
    return from_dict(_REGISTRY[name].config_class, {**data, "name": name}, where="objective")


def create_objective(cfg: dict[str, Any] | Any, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> Objective:
    cfg = objective_config(cfg)
    return _REGISTRY[cfg.name](cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking)


# ---------------------------------------------------------------------------------------------
# Losses (pure)
# ---------------------------------------------------------------------------------------------


def cell_losses(pred: torch.Tensor, target: torch.Tensor, *, loss: str, huber_delta: float = 1.0) -> torch.Tensor:
    """Element-wise loss of the selected cells, ``(n,) -> (n,)`` float32."""
    pred, target = pred.float(), target.float()
    if loss == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    if loss == "l1":
        return (pred - target).abs()
    if loss == "mse":
        return (pred - target) ** 2
    raise ConfigError(f"objective.loss={loss!r}; expected 'huber', 'l1' or 'mse'")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, loss: str = "huber",
                huber_delta: float = 1.0) -> torch.Tensor:
    """Mean loss over the True cells of ``mask``; ``pred``/``target``/``mask`` all ``(B, T, C)``."""
    n = int(mask.sum())
    if n == 0:
        return pred.sum() * 0.0  # keeps the graph (DDP needs every parameter to get a gradient)
    return cell_losses(pred[mask], target[mask], loss=loss, huber_delta=huber_delta).mean()


# ---------------------------------------------------------------------------------------------
# Masked reconstruction (M2BERT)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReconstructionConfig:
    """Masked reconstruction of the input frames."""

    name: str = "reconstruction"  # registered objective name
    loss: str = "huber"  # per-cell loss: huber (paper) | l1 | mse
    huber_delta: float = bounded(1.0, gt=0)  # Huber threshold (paper: 1)
    layer: int = -1  # hidden state the head reads (-1 = last transformer layer)
    head: ReconstructionHeadConfig = field(default_factory=ReconstructionHeadConfig)  # head settings
    eval_policies: list[str] = field(default_factory=lambda: ["cfm", "ccm", "pm"])  # also scored alone at validation

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = from_dict(ReconstructionHeadConfig, self.head, where="objective.head")
        if self.loss not in ("huber", "l1", "mse"):
            raise ConfigError(f"objective.loss={self.loss!r}; expected 'huber', 'l1' or 'mse'")
        if float(self.huber_delta) <= 0:
            raise ConfigError(f"objective.huber_delta={self.huber_delta!r}; expected > 0")


@register_objective("reconstruction")
class Reconstruction(Objective):
    """Corrupt with the masking policies, reconstruct every cell, score only the masked ones."""

    config_class = ReconstructionConfig

    def __init__(self, cfg: ReconstructionConfig, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> None:
        super().__init__(cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking)
        self.head = ReconstructionHead(encoder_cfg.hidden, encoder_cfg.n_input, cfg=cfg.head)

    def corrupt(self, batch: Any, *, policies: list[str] | None = None, stream: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each row with its own generator (so masks do not depend on batch composition).

        Returns ``(corrupted (B, T, C), loss_mask (B, T, C) bool)``.
        """
        frames, lengths = batch.frames, batch.lengths.tolist()
        corrupted = frames.clone()
        mask = torch.zeros(frames.shape, dtype=torch.bool, device=frames.device)
        for i, n in enumerate(lengths):
            x, m = apply_masking(frames[i : i + 1, :n], [n], rng=batch.rng(i, stream), cfg=self.masking,
                                 spec=self.spec, policies=policies)
            corrupted[i, :n], mask[i, :n] = x[0], m[0]
        return corrupted, mask

    def reconstruct(self, encoder: nn.Module, corrupted: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states = encoder(corrupted, lengths)
        return self.head(states[self.cfg.layer])

    def _to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        device = self.head.dense.weight.device
        return [t.to(device, non_blocking=True) for t in tensors]

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:
        """``batch`` lives on the CPU (masks are drawn there); tensors move to the head's device."""
        corrupted, mask = self.corrupt(batch)
        corrupted, mask, frames, lengths = self._to_device(corrupted, mask, batch.frames, batch.lengths)
        pred = self.reconstruct(encoder, corrupted, lengths)
        loss = masked_loss(pred, frames, mask, loss=self.cfg.loss, huber_delta=self.cfg.huber_delta)
        real = float(batch.lengths.sum()) * batch.frames.shape[-1]
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "masked_fraction": float(mask.sum()) / max(real, 1.0)})

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:
        """Held-out loss for the training policy combination and each policy alone, plus the
        loss of predicting zero (the CMVN mean) on the training policy's cells as a yardstick."""
        out: dict[str, tuple[float, float]] = {}
        combos = ["+".join(self.masking.policies)] + [p for p in self.cfg.eval_policies
                                                      if [p] != list(self.masking.policies)]
        for combo in combos:
            policies = combo.split("+")
            corrupted, mask = self.corrupt(batch, policies=policies, stream=zlib.crc32(combo.encode()))
            corrupted, mask, frames, lengths = self._to_device(corrupted, mask, batch.frames, batch.lengths)
            pred = self.reconstruct(encoder, corrupted, lengths)
            per_cell = cell_losses(pred[mask], frames[mask], loss=self.cfg.loss, huber_delta=self.cfg.huber_delta)
            out[f"loss[{combo}]"] = (float(per_cell.sum()), float(per_cell.numel()))
            if combo == combos[0]:
                zero = cell_losses(torch.zeros_like(frames[mask]), frames[mask], loss=self.cfg.loss,
                                   huber_delta=self.cfg.huber_delta)
                out[f"zero_baseline[{combo}]"] = (float(zero.sum()), float(zero.numel()))
        return out
