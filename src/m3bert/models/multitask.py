"""M3BERT multi-task parts: task heads, per-task losses with partial labels, loss weighting.

The M3BERT model itself is an :class:`~m3bert.models.encoder.Encoder` whose config carries an
``enrichment`` section (time-distributed dense layers); its last hidden state is the M3BERT
representation. This module adds what only exists during multi-task enrichment:

* one head per task on the *time-averaged* enrichment output (paper figs. 3, 4);
* the per-task losses — cross-entropy (multiclass), BCE (multilabel, honouring a
  ``target_mask`` of known labels), MSE on train-standardised targets (regression) — each
  computed only over the samples of a batch that carry that task's label.  A head is only
  *called* on those rows, so samples without its label cannot send it gradient, and a head
  whose task is absent from a batch gets ``grad = None`` (the optimiser then skips it: no
  Adam momentum step, no weight decay);
* loss weighting: ``equal``; ``reweight`` (Wu et al. 2021: reciprocal of each task's mean
  validation loss over the first epochs of an equal-weighted run); ``uncertainty`` (Kendall,
  Gal & Cipolla 2018: a learned log-variance per task, regression and classification forms).

Heads and weighting are saved beside the model in a checkpoint as ``heads.safetensors`` +
``heads.json`` (task names, classes, target standardisation); never pickled.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3bert.config import from_dict
from m3bert.errors import CheckpointError, ConfigError, DataError

HEADS_FORMAT = "m3bert-heads"
HEADS_FORMAT_VERSION = 1
HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"


# ---------------------------------------------------------------------------------------------
# Configs and task descriptions
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadConfig:
    """Per-task output heads on the time-averaged M3BERT representation."""

    hidden: int = 0  # width of one hidden layer (GELU); 0 = a single dense layer (the paper's)
    dropout: float = 0.0  # dropout on the pooled representation before each head (training only)


@dataclass
class WeightingConfig:
    """How the per-task losses are combined into one objective."""

    name: str = "equal"  # "equal" | "reweight" (Wu et al.) | "uncertainty" (Kendall et al.)
    reweight_epochs: int = 2  # reweight: epochs of equal-weighted calibration (Wu et al.: 10)
    reweight_restart: bool = True  # reweight: retrain from the initial weights afterwards (Wu et al.)
    reweight_normalize: bool = True  # reweight: scale the reciprocals to mean 1 (keeps the lr meaningful)
    uncertainty_init: float = 0.0  # uncertainty: initial log-variance s = log sigma^2 of every task


@dataclass
class TaskInfo:
    """Everything a checkpoint must remember about one task (JSON-serialisable)."""

    name: str  # registered task name, e.g. "builtin-dance"
    label_type: str  # "multiclass" | "multilabel" | "regression"
    classes: list[str]  # class / tag names, or target names for regression
    metrics: list[str] = field(default_factory=list)  # metric names, primary first
    target_mean: list[float] | None = None  # regression: per-target train mean (standardisation)
    target_std: list[float] | None = None  # regression: per-target train std (standardisation)

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    @property
    def is_regression(self) -> bool:
        return self.label_type == "regression"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskInfo":
        return from_dict(cls, data, where="heads.tasks[]")


def target_standardisation(targets: np.ndarray, *, min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of train targets ``(n, n_targets)``.

    A constant column gets std 1 so standardisation is the identity shift instead of a division
    by zero (its loss is then the plain squared error around the constant).
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise DataError(f"regression targets must be a non-empty (n, n_targets) array, got shape {targets.shape}")
    mean = targets.mean(axis=0)
    std = targets.std(axis=0)
    std = np.where(std < min_std, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pure functions: pooling and losses
# ---------------------------------------------------------------------------------------------


def pool_windows(
    states: torch.Tensor, frame_weights: torch.Tensor, owner: torch.Tensor, n_samples: int
) -> torch.Tensor:
    """Time-average per sample over the frames each window contributes.

    ``states (W, T, D)`` hidden states of ``W`` windows (padded to ``T``), ``frame_weights (W, T)``
    1 where a frame counts (a real frame, and, for overlapping windows, the window in which the
    frame is most central, as :mod:`m3bert.embed` stitches them), ``owner (W,)`` the sample each
    window belongs to -> ``(n_samples, D)``. A sample split into several windows gets the mean over
    *all* its frames (exactly the clip-level time average), not the mean of window means.
    """
    d = states.shape[-1]
    fw = frame_weights.to(states.dtype)
    sums = (states * fw[..., None]).sum(dim=1)  # (W, D)
    pooled = states.new_zeros(n_samples, d).index_add(0, owner, sums)  # (B, D)
    counts = states.new_zeros(n_samples).index_add(0, owner, fw.sum(dim=1))  # (B,)
    if bool((counts <= 0).any()):
        raise DataError("pool_windows: a sample has no frames to average")
    return pooled / counts[:, None]


def multiclass_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy. ``logits (k, n_classes)``, ``target (k,)`` int64 -> scalar."""
    return F.cross_entropy(logits, target)


def multilabel_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the *known* labels.

    ``logits, target (k, n_classes)``; ``mask (k, n_classes)`` 1 where the label is known
    (OpenMIC-style partial tag annotation) or None (all known). Unknown cells contribute neither
    loss nor gradient.
    """
    cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if mask is None:
        return cell.mean()
    n_known = mask.sum()
    if float(n_known) <= 0:
        return (cell * 0.0).sum()
    return (cell * mask).sum() / n_known


def regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error on standardised targets. ``pred, target (k, n_targets)`` -> scalar."""
    return F.mse_loss(pred, target)


LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
LOSS_FUNCTIONS: dict[str, LossFn] = {
    "multiclass": multiclass_loss,
    "multilabel": multilabel_loss,
    "regression": regression_loss,
}


def task_loss(label_type: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if label_type not in LOSS_FUNCTIONS:
        raise ConfigError(f"no loss for label_type={label_type!r}; known: {sorted(LOSS_FUNCTIONS)}")
    return LOSS_FUNCTIONS[label_type](output, target, mask)


# ---------------------------------------------------------------------------------------------
# Pure functions: weighting maths
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
    At the optimum over ``s``, ``s = log L`` (regression) or ``log 2L`` (classification): a task
    with a larger loss gets a larger sigma and so a smaller weight.
    """
    factor = torch.where(regression, torch.full_like(losses, 0.5), torch.ones_like(losses))
    weights = factor * torch.exp(-log_vars)
    total = (weights * losses + 0.5 * log_vars).sum()
    return total, weights


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class TaskHead(nn.Module):
    """Maps the pooled representation ``(k, D)`` to task outputs ``(k, n_outputs)``."""

    def __init__(self, n_in: int, n_out: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.hidden > 0:
            self.net = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, n_out))
        else:
            self.net = nn.Sequential(nn.Linear(n_in, n_out))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(self.drop(pooled))


class MultiTaskHeads(nn.Module):
    """One :class:`TaskHead` per task, keyed by task name."""

    def __init__(self, n_in: int, tasks: list[TaskInfo], cfg: HeadConfig) -> None:
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        self.n_in = n_in
        self.cfg = cfg
        self.tasks = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict({t.name: TaskHead(n_in, t.n_outputs, cfg) for t in tasks})

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def forward(self, pooled: torch.Tensor, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run each task's head on its labelled rows only.

        ``pooled (B, D)``; ``rows[task] (k_task,)`` indices into the batch -> ``{task: (k_task, n_outputs)}``.
        Tasks with no rows are left out, so their heads are not in the graph at all.
        """
        return {name: self.heads[name](pooled.index_select(0, idx)) for name, idx in rows.items() if idx.numel() > 0}


class LossWeighting(nn.Module):
    """Base: combine a dict of per-task losses into one scalar; report the weights used."""

    name = "base"

    def __init__(self, tasks: list[TaskInfo], cfg: WeightingConfig) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.cfg = cfg

    def combine(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        """Weights a unit loss of each task would get now (for logging)."""
        raise NotImplementedError

    def extra_state_json(self) -> dict[str, Any]:
        return {}

    def load_extra_state_json(self, data: dict[str, Any]) -> None:
        pass


class EqualWeighting(LossWeighting):
    """Plain sum of the task losses present in the batch."""

    name = "equal"

    def combine(self, losses):
        if not losses:
            raise DataError("no task has a label in this batch")
        total = torch.stack(list(losses.values())).sum()
        return total, {k: 1.0 for k in losses}

    def current_weights(self):
        return {k: 1.0 for k in self.task_names}


class ReweightWeighting(LossWeighting):
    """Fixed weights (Wu et al.): 1 until :meth:`set_from_losses` is called with calibration losses."""

    name = "reweight"

    def __init__(self, tasks, cfg):
        super().__init__(tasks, cfg)
        self.register_buffer("weights", torch.ones(len(tasks)))
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
        if not losses:
            raise DataError("no task has a label in this batch")
        idx = {t: i for i, t in enumerate(self.task_names)}
        parts = [self.weights[idx[k]] * v for k, v in losses.items()]
        return torch.stack(parts).sum(), {k: float(self.weights[idx[k]]) for k in losses}

    def current_weights(self):
        return {t: float(w) for t, w in zip(self.task_names, self.weights.tolist())}

    def extra_state_json(self):
        return {"calibrated": self.calibrated}

    def load_extra_state_json(self, data):
        self.calibrated = bool(data.get("calibrated", False))


class UncertaintyWeighting(LossWeighting):
    """Learned per-task log-variance ``s_t`` (Kendall et al. 2018); see :func:`uncertainty_weighted_loss`.

    Only the ``s_t`` of tasks present in a batch are used, so an absent task's ``s_t`` gets
    no gradient (and no optimiser step) from that batch.
    """

    name = "uncertainty"

    def __init__(self, tasks, cfg):
        super().__init__(tasks, cfg)
        self.log_vars = nn.Parameter(torch.full((len(tasks),), float(cfg.uncertainty_init)))
        self.register_buffer("regression", torch.tensor([t.is_regression for t in tasks], dtype=torch.bool))
        self._index = {t.name: i for i, t in enumerate(tasks)}

    def combine(self, losses):
        if not losses:
            raise DataError("no task has a label in this batch")
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


WEIGHTINGS: dict[str, type[LossWeighting]] = {}


def register_weighting(cls: type[LossWeighting]) -> type[LossWeighting]:
    if cls.name in WEIGHTINGS:
        raise ConfigError(f"loss weighting {cls.name!r} is already registered")
    WEIGHTINGS[cls.name] = cls
    return cls


for _cls in (EqualWeighting, ReweightWeighting, UncertaintyWeighting):
    register_weighting(_cls)


def create_weighting(tasks: list[TaskInfo], cfg: WeightingConfig) -> LossWeighting:
    if cfg.name not in WEIGHTINGS:
        raise ConfigError(f"weighting={cfg.name!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[cfg.name](tasks, cfg)


# ---------------------------------------------------------------------------------------------
# Save / load beside a model directory
# ---------------------------------------------------------------------------------------------


class HeadsBundle(nn.Module):
    """Heads + loss weighting under one module, so their tensors are ``heads.*`` and ``weighting.*``."""

    def __init__(self, heads: MultiTaskHeads, weighting: LossWeighting) -> None:
        super().__init__()
        self.heads = heads
        self.weighting = weighting


def heads_description(heads: MultiTaskHeads, weighting: LossWeighting) -> dict[str, Any]:
    """The ``heads.json`` content: tasks (classes, metrics, target standardisation) and configs."""
    return {
        "format": HEADS_FORMAT,
        "format_version": HEADS_FORMAT_VERSION,
        "n_in": heads.n_in,
        "head": dataclasses.asdict(heads.cfg),
        "weighting": dataclasses.asdict(weighting.cfg),
        "weighting_state": weighting.extra_state_json(),
        "tasks": [t.to_dict() for t in heads.tasks.values()],
    }


def save_heads(directory: str | Path, heads: MultiTaskHeads, weighting: LossWeighting) -> None:
    """Write ``heads.safetensors`` (heads.* and weighting.* tensors) + ``heads.json`` atomically."""
    from safetensors.torch import save_file

    from m3bert.io import atomic_path, atomic_write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in HeadsBundle(heads, weighting).state_dict().items()}
    with atomic_path(directory / HEADS_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": HEADS_FORMAT})
    atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


def load_heads(directory: str | Path) -> tuple[MultiTaskHeads, LossWeighting]:
    """Inverse of :func:`save_heads`; ``CheckpointError`` if files are missing or do not match."""
    from safetensors.torch import load_file

    from m3bert.models.encoder import load_state_checked

    directory = Path(directory)
    cfg_path, weights = directory / HEADS_CONFIG, directory / HEADS_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name}; a multi-task checkpoint holds {HEADS_CONFIG} + {HEADS_WEIGHTS}")
    from m3bert.io import read_format_json

    meta = read_format_json(cfg_path, fmt=HEADS_FORMAT, max_version=HEADS_FORMAT_VERSION)
    try:
        tasks = [TaskInfo.from_dict(t) for t in meta["tasks"]]
        head_cfg = from_dict(HeadConfig, meta["head"], where="heads.head")
        w_cfg = from_dict(WeightingConfig, meta["weighting"], where="heads.weighting")
        n_in = int(meta["n_in"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid heads description ({exc})") from exc
    heads = MultiTaskHeads(n_in, tasks, head_cfg)
    weighting = create_weighting(tasks, w_cfg)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from exc
    load_state_checked(HeadsBundle(heads, weighting), state, where=str(weights))
    weighting.load_extra_state_json(meta.get("weighting_state") or {})
    return heads, weighting
