"""Loss weighting: combine several named losses (tasks, objectives) into one training objective.

Any trainer with more than one loss can use it: multi-task enrichment (one loss per task, see
:mod:`m3bert.enrich`) and, later, pre-training with several objectives (Wu et al. 2021's worker
losses). Losses are keyed by name; a weighting knows the names it balances and which of them are
regression-type (Gaussian) losses, nothing else about where they come from.

* ``equal``: the plain sum of the losses present in a batch.
* ``reweight`` (Wu et al. 2021): fixed weights, the reciprocal of each loss's mean validation value
  over the first epochs of an equal-weighted run (:func:`reciprocal_loss_weights`), set by the
  trainer with :meth:`ReweightWeighting.set_from_losses`.
* ``uncertainty`` (Kendall, Gal & Cipolla 2018): a learned log-variance per loss
  (:func:`uncertainty_weighted_loss`), with the regression and classification forms.

A loss absent from a batch is left out of the sum, so its learned weight (if any) gets no gradient.
New schemes register with :func:`register_weighting` and are built by name with :func:`create_weighting`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Sequence

import torch
from torch import nn

from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry


@dataclass
class WeightingConfig:
    """How the named losses are combined into one objective."""

    name: str = "equal"  # "equal" | "reweight" (Wu et al.) | "uncertainty" (Kendall et al.)
    reweight_epochs: int = bounded(2, ge=1)  # reweight: epochs of equal-weighted calibration (Wu et al.: 10)
    reweight_restart: bool = True  # reweight: retrain from the initial weights afterwards (Wu et al.)
    reweight_normalize: bool = True  # reweight: scale the reciprocals to mean 1 (keeps the lr meaningful)
    uncertainty_init: float = 0.0  # uncertainty: initial log-variance s = log sigma^2 of every loss


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def reciprocal_loss_weights(mean_losses: dict[str, float], *, normalize: bool = True) -> dict[str, float]:
    """Wu et al.'s re-weighting: ``w_t = 1 / mean validation loss_t``.

    With ``normalize`` the weights are rescaled to mean 1 (ratios unchanged), so the summed
    objective keeps the scale of the equal-weighted one and the learning rate keeps its meaning.
    """
    if not mean_losses:
        raise ConfigError("reweight: no task losses to take reciprocals of")
    bad = {k: v for k, v in mean_losses.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise DataError(f"reweight: mean validation losses must be finite and > 0, got {bad}")
    w = {k: 1.0 / float(v) for k, v in mean_losses.items()}
    if normalize:
        scale = len(w) / sum(w.values())
        w = {k: v * scale for k, v in w.items()}
    return w


def uncertainty_weighted_loss(
    losses: torch.Tensor, log_vars: torch.Tensor, regression: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kendall et al. (2018) homoscedastic-uncertainty weighting, with ``s = log sigma^2``.

    Regression (Gaussian likelihood): ``L/(2 sigma^2) + log sigma = 0.5 exp(-s) L + 0.5 s``.
    Classification (softmax / Bernoulli likelihood): ``L/sigma^2 + log sigma = exp(-s) L + 0.5 s``.
    ``losses, log_vars (K,)``, ``regression (K,)`` bool -> (total scalar, effective weights (K,)).
    At the optimum over ``s``, ``s = log L`` (regression) or ``log 2L`` (classification): a loss
    that stays larger gets a larger sigma and so a smaller weight.
    """
    factor = torch.where(regression, torch.full_like(losses, 0.5), torch.ones_like(losses))
    weights = factor * torch.exp(-log_vars)
    total = (weights * losses + 0.5 * log_vars).sum()
    return total, weights


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class LossWeighting(nn.Module):
    """Base: combine a dict of named losses into one scalar; report the weights used.

    ``names``: the losses balanced, in a fixed order (the order of any learned tensor);
    ``regression``: those of them that are regression (Gaussian) losses.
    """

    name = "base"

    def __init__(self, names: Sequence[str], cfg: WeightingConfig, *, regression: Collection[str] = ()) -> None:
        super().__init__()
        self.task_names = [str(n) for n in names]
        if len(set(self.task_names)) != len(self.task_names):
            raise ConfigError(f"loss names must be unique, got {self.task_names}")
        unknown = sorted(set(regression) - set(self.task_names))
        if unknown:
            raise ConfigError(f"regression loss(es) {unknown} are not among {self.task_names}")
        self.regression_names = [n for n in self.task_names if n in set(regression)]
        self.cfg = cfg

    def combine(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        """Weights a unit loss of each name would get now (for logging)."""
        raise NotImplementedError

    def extra_state_json(self) -> dict[str, Any]:
        return {}

    def load_extra_state_json(self, data: dict[str, Any]) -> None:
        pass


WEIGHTINGS: Registry = Registry("loss weighting")


def register_weighting(cls: type[LossWeighting]) -> type[LossWeighting]:
    """Class decorator: register a :class:`LossWeighting` under its ``name``."""
    return WEIGHTINGS.add(cls.name, cls)


def _check_present(losses: dict[str, torch.Tensor]) -> None:
    if not losses:
        raise DataError("no task has a label in this batch")


@register_weighting
class EqualWeighting(LossWeighting):
    """Plain sum of the losses present in the batch."""

    name = "equal"

    def combine(self, losses):
        _check_present(losses)
        total = torch.stack(list(losses.values())).sum()
        return total, {k: 1.0 for k in losses}

    def current_weights(self):
        return {k: 1.0 for k in self.task_names}


@register_weighting
class ReweightWeighting(LossWeighting):
    """Fixed weights (Wu et al.): 1 until :meth:`set_from_losses` is called with calibration losses."""

    name = "reweight"

    def __init__(self, names, cfg, *, regression=()):
        super().__init__(names, cfg, regression=regression)
        self.register_buffer("weights", torch.ones(len(self.task_names)))
        self.calibrated = False

    def set_from_losses(self, mean_losses: dict[str, float]) -> dict[str, float]:
        missing = [t for t in self.task_names if t not in mean_losses]
        if missing:
            raise DataError(f"reweight: no calibration loss for task(s) {missing}")
        w = reciprocal_loss_weights({t: mean_losses[t] for t in self.task_names}, normalize=self.cfg.reweight_normalize)
        with torch.no_grad():
            self.weights.copy_(torch.tensor([w[t] for t in self.task_names], dtype=self.weights.dtype))
        self.calibrated = True
        return w

    def combine(self, losses):
        _check_present(losses)
        idx = {t: i for i, t in enumerate(self.task_names)}
        parts = [self.weights[idx[k]] * v for k, v in losses.items()]
        return torch.stack(parts).sum(), {k: float(self.weights[idx[k]]) for k in losses}

    def current_weights(self):
        return {t: float(w) for t, w in zip(self.task_names, self.weights.tolist())}

    def extra_state_json(self):
        return {"calibrated": self.calibrated}

    def load_extra_state_json(self, data):
        self.calibrated = bool(data.get("calibrated", False))


@register_weighting
class UncertaintyWeighting(LossWeighting):
    """Learned per-loss log-variance ``s_t`` (Kendall et al. 2018); see :func:`uncertainty_weighted_loss`.

    Only the ``s_t`` of losses present in a batch are used, so an absent loss's ``s_t`` gets
    no gradient (and no optimiser step) from that batch.
    """

    name = "uncertainty"

    def __init__(self, names, cfg, *, regression=()):
        super().__init__(names, cfg, regression=regression)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(cfg.uncertainty_init)))
        is_reg = [n in self.regression_names for n in self.task_names]
        self.register_buffer("regression", torch.tensor(is_reg, dtype=torch.bool))
        self._index = {n: i for i, n in enumerate(self.task_names)}

    def combine(self, losses):
        _check_present(losses)
        names = list(losses)
        idx = torch.tensor([self._index[k] for k in names], dtype=torch.long, device=self.log_vars.device)
        total, w = uncertainty_weighted_loss(
            torch.stack([losses[k] for k in names]), self.log_vars.index_select(0, idx), self.regression.index_select(0, idx)
        )
        return total, {k: float(x) for k, x in zip(names, w.detach().tolist())}

    def current_weights(self):
        factor = torch.where(self.regression, 0.5, 1.0)
        w = (factor * torch.exp(-self.log_vars.detach())).tolist()
        return {t: float(x) for t, x in zip(self.task_names, w)}


def create_weighting(names: Sequence[str], cfg: WeightingConfig, *, regression: Collection[str] = ()) -> LossWeighting:
    """The registered weighting ``cfg.name`` over the losses ``names`` (``regression``: the Gaussian ones)."""
    cls = WEIGHTINGS.lookup(cfg.name)
    return cls(names, cfg, regression=regression)  # type: ignore[operator]
