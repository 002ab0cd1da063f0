"""The optimiser every trainer uses: Adam with the paper's settings and optional decoupled decay."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError, TrainingError


@dataclass
class OptimConfig:
    """Adam as in the M3BERT paper (Adam(0.9, 0.999, 1e-6), peak lr 2e-4); one class for every trainer."""

    lr: float = bounded(2e-4, gt=0)  # peak learning rate (the schedule scales it)
    betas: list[float] = bounded(default_factory=lambda: [0.9, 0.999], ge=0, lt=1, items=True)  # Adam betas (paper)
    eps: float = bounded(1e-6, gt=0)  # Adam epsilon (paper)
    weight_decay: float = bounded(0.0, ge=0)  # decoupled (AdamW-style) weight decay (paper: none)
    max_grad_norm: float = bounded(1.0, ge=0)  # clip the global gradient norm to this; 0 = no clipping
    fused: bool = True  # fused Adam kernel (CPU and CUDA): one pass over the weights, ~3x faster step

    def __post_init__(self) -> None:
        self.betas = [float(b) for b in self.betas] if isinstance(self.betas, (list, tuple)) else self.betas
        if not isinstance(self.betas, list) or len(self.betas) != 2:
            raise ConfigError(f"optim.betas={self.betas!r}; expected two numbers")


def make_adam(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Adam:
    """Adam over ``params`` (tensors or param-group dicts); the fused kernel when asked and supported.

    Weight decay is decoupled (AdamW); with the default ``weight_decay=0`` this is plain Adam.
    """
    params = list(params)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                  decoupled_weight_decay=True)
    if cfg.fused:
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # device/dtype without a fused kernel
            pass
    return torch.optim.Adam(params, **kwargs)


def check_finite_step(*, step: int, loss: float, grad_norm: float, lr: float) -> None:
    """Stop a run whose loss or gradient norm is NaN/inf before its optimizer step is taken.

    Called by every trainer after ``backward`` and before ``optimizer.step`` (``grad_norm`` is the
    global norm of the gradients, the same on every data-parallel rank), so a diverged step is
    never applied, checkpointed or exported.
    """
    if math.isfinite(float(loss)) and math.isfinite(float(grad_norm)):
        return
    raise TrainingError(
        f"training diverged at step {step}: loss={float(loss)!r}, gradient norm={float(grad_norm)!r} (lr={lr!r}); "
        "the step was not applied and nothing of it was saved. Lower optim.lr or check the inputs for "
        "non-finite values; checkpoints/last holds the last good state"
    )
