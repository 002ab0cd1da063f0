"""Learning-rate schedules as pure functions of the step, shared by pre-training and fine-tuning.

The paper's schedule (Greer et al. 2023, "Training setup"; Vaswani-style warm-up)::

    lr(s) = min(lmax * s / (w T), lmax * (T - s) / (T (1 - w)))

with ``w = 0.07`` of the ``T`` total steps and ``lmax = 2e-4``. Taken literally the first
update (s = 0) would use lr 0 and be wasted, so update ``s`` (0-based) uses ``s + 1`` in the
warm-up term and ``s`` in the decay term: every one of the ``T`` updates has a positive rate,
the peak is reached at the end of warm-up and the last update uses ``lmax / (T (1 - w))``.

A schedule is stateless -- its whole state is the step -- so resuming needs nothing but the
step counter. New schedules are added with :func:`register_schedule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError
from m3bert.core.registry import Registry


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (multiplier of the peak rate ``optim.lr``)."""

    name: str = "linear_warmup_decay"  # registered schedule: linear_warmup_decay | cosine | constant
    warmup_fraction: float = bounded(0.07, ge=0, le=1)  # warm-up length as a fraction of the total steps (paper: 7 %)

    def __post_init__(self) -> None:
        if self.name not in _REGISTRY:
            raise ConfigError(f"schedule.name={self.name!r}; registered: {available_schedules()}")
        if not 0.0 <= float(self.warmup_fraction) < 1.0:
            raise ConfigError(f"schedule.warmup_fraction={self.warmup_fraction!r}; expected a fraction in [0, 1)")


ScheduleFn = Callable[[int, int, float], float]
_REGISTRY: Registry = Registry("schedule")


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Decorator: register ``fn(step, total_steps, warmup_fraction) -> multiplier in [0, 1]``."""
    return _REGISTRY.register(name)


def available_schedules() -> list[str]:
    return sorted(_REGISTRY)


def _warmup(step: int, total_steps: int, warmup_fraction: float) -> float:
    warm = warmup_fraction * total_steps
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


@register_schedule("linear_warmup_decay")
def linear_warmup_decay(step: int, total_steps: int, warmup_fraction: float) -> float:
    """The paper's schedule: linear warm-up to the peak, then linear decay to 0 at ``T``."""
    decay = (total_steps - step) / (total_steps * (1.0 - warmup_fraction))
    return max(0.0, min(_warmup(step, total_steps, warmup_fraction), decay))


@register_schedule("cosine")
def cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up, then half a cosine down to 0 at ``T``."""
    warm = warmup_fraction * total_steps
    if step + 1 < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1.0, total_steps - warm))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@register_schedule("constant")
def constant(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up, then the peak rate."""
    return _warmup(step, total_steps, warmup_fraction)


def lr_at(step: int, *, peak: float, total_steps: int, cfg: ScheduleConfig) -> float:
    """Learning rate of update ``step`` (0-based) out of ``total_steps``."""
    if total_steps <= 0:
        raise ConfigError(f"total_steps={total_steps}; expected a positive number of steps")
    if not 0 <= step < total_steps:
        raise ConfigError(f"step {step} is outside [0, {total_steps})")
    return float(peak) * _REGISTRY[cfg.name](int(step), int(total_steps), float(cfg.warmup_fraction))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (schedules are applied by hand, not by LRScheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
