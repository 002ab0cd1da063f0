"""M3BERT multi-task parts: task descriptions, task heads, per-task losses with partial labels.

The M3BERT model itself is an :class:`~m3bert.models.encoder.Encoder` whose config carries an
``enrichment`` section (time-distributed dense layers); its last hidden state is the M3BERT
representation. This module adds what only exists during multi-task enrichment:

* one head per task on the *time-averaged* enrichment output (paper figs. 3, 4), optionally on a
  column ``slice`` of it (a Kim et al. multi-source model: each source reads its own branch);
* the per-task losses — cross-entropy (multiclass), BCE (multilabel, honouring a
  ``target_mask`` of known labels), MSE on train-standardised targets (regression),
  KL(z || softmax) to a label-factor distribution ``z`` (``distribution``: Kim et al.'s learning
  sources, :mod:`m3bert.enrich.factors`) — each computed only over the samples of a batch that
  carry that task's label.  A head is only
  *called* on those rows, so samples without its label cannot send it gradient, and a head
  whose task is absent from a batch gets ``grad = None`` (the optimiser then skips it: no
  Adam momentum step, no weight decay);
* the loss weighting over the tasks (:func:`task_weighting`), built from the shared family in
  :mod:`m3bert.train.weighting` (``equal``, ``reweight``, ``uncertainty``).

Heads and weighting are saved beside the model in a checkpoint as ``heads.safetensors`` +
``heads.json`` (task names, classes, target standardisation); never pickled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.core.io import atomic_path, atomic_write_json, read_format_json
from m3bert.models.base import load_state_checked
from m3bert.train.weighting import LossWeighting, WeightingConfig, create_weighting

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

    hidden: int = bounded(0, ge=0)  # width of one hidden layer (GELU); 0 = a single dense layer (the paper's)
    dropout: float = bounded(0.0, ge=0, lt=1)  # dropout on the pooled representation before each head (training only)


@dataclass
class TaskInfo:
    """Everything a checkpoint must remember about one task (JSON-serialisable)."""

    name: str  # registered task name, e.g. "builtin-dance"
    label_type: str  # "multiclass" | "multilabel" | "regression" | "distribution" (label factors)
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


# ---------------------------------------------------------------------------------------------
# Pure functions: losses
# ---------------------------------------------------------------------------------------------


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


def distribution_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of KL(z || softmax(logits)) = sum_j z_j (log z_j - log_softmax_j), 0 log 0 = 0.

    ``logits, target (k, n_factors)``, each target row a distribution (Kim et al. sec. 2.3; for a
    one-hot ``z`` this is the cross-entropy)."""
    return (torch.xlogy(target, target) - target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
LOSS_FUNCTIONS: dict[str, LossFn] = {
    "multiclass": multiclass_loss,
    "multilabel": multilabel_loss,
    "regression": regression_loss,
    "distribution": distribution_loss,
}


def mean_kl(z: np.ndarray, p: np.ndarray) -> float:
    """Mean over rows of KL(z || p) in nats (``p`` probabilities, floored at 1e-12)."""
    z, p = np.asarray(z, np.float64), np.clip(np.asarray(p, np.float64), 1e-12, None)
    logz = np.log(np.where(z > 0, z, 1.0))
    return float(np.mean(np.sum(z * (logz - np.log(p)), axis=-1)))


def top1_agreement(z: np.ndarray, p: np.ndarray) -> float:
    """Share of rows whose most probable factor is the target's."""
    return float(np.mean(np.argmax(z, axis=-1) == np.argmax(p, axis=-1)))


# metrics of ``distribution`` tasks: name -> (fn(z, probabilities), higher_is_better)
DISTRIBUTION_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "kl": (mean_kl, False),
    "top1": (top1_agreement, True),
}


def task_loss(label_type: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if label_type not in LOSS_FUNCTIONS:
        raise ConfigError(f"no loss for label_type={label_type!r}; known: {sorted(LOSS_FUNCTIONS)}")
    return LOSS_FUNCTIONS[label_type](output, target, mask)


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
    """One :class:`TaskHead` per task, keyed by task name.

    ``slices`` (optional): ``{task: [start, stop]}``, the columns of the pooled representation a
    task's head reads (each ``stop - start == n_in``); without it every head reads all ``n_in``.
    """

    def __init__(self, n_in: int, tasks: list[TaskInfo], cfg: HeadConfig,
                 slices: dict[str, list[int]] | None = None) -> None:
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        if slices is not None:
            bad = {k: v for k, v in slices.items() if k not in names or len(v) != 2 or int(v[1]) - int(v[0]) != n_in}
            if bad or set(slices) != set(names):
                raise ConfigError(f"head slices {slices} must give every task {names} a [start, stop) of width {n_in}")
        self.n_in = n_in
        self.cfg = cfg
        self.slices = None if slices is None else {k: [int(v[0]), int(v[1])] for k, v in slices.items()}
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
        return {name: self.heads[name](self.input_of(name, pooled).index_select(0, idx))
                for name, idx in rows.items() if idx.numel() > 0}

    def input_of(self, name: str, pooled: torch.Tensor) -> torch.Tensor:
        """The columns of ``pooled (B, D)`` task ``name``'s head reads."""
        if self.slices is None:
            return pooled
        a, b = self.slices[name]
        return pooled[:, a:b]


def task_weighting(tasks: Sequence[TaskInfo], cfg: WeightingConfig) -> LossWeighting:
    """The loss weighting ``cfg.name`` over these tasks (their regression tasks use Kendall's Gaussian form)."""
    return create_weighting([t.name for t in tasks], cfg, regression=[t.name for t in tasks if t.is_regression])


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
        **({"slices": heads.slices} if heads.slices is not None else {}),
    }


def save_heads(directory: str | Path, heads: MultiTaskHeads, weighting: LossWeighting) -> None:
    """Write ``heads.safetensors`` (heads.* and weighting.* tensors) + ``heads.json`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in HeadsBundle(heads, weighting).state_dict().items()}
    with atomic_path(directory / HEADS_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": HEADS_FORMAT})
    atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


def load_heads(directory: str | Path) -> tuple[MultiTaskHeads, LossWeighting]:
    """Inverse of :func:`save_heads`; ``CheckpointError`` if files are missing or do not match."""
    directory = Path(directory)
    cfg_path, weights = directory / HEADS_CONFIG, directory / HEADS_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name}; a multi-task checkpoint holds {HEADS_CONFIG} + {HEADS_WEIGHTS}")

    meta = read_format_json(cfg_path, fmt=HEADS_FORMAT, max_version=HEADS_FORMAT_VERSION)
    try:
        tasks = [TaskInfo.from_dict(t) for t in meta["tasks"]]
        head_cfg = from_dict(HeadConfig, meta["head"], where="heads.head")
        w_cfg = from_dict(WeightingConfig, meta["weighting"], where="heads.weighting")
        n_in = int(meta["n_in"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid heads description ({exc})") from exc
    try:
        heads = MultiTaskHeads(n_in, tasks, head_cfg, slices=meta.get("slices"))
    except ConfigError as exc:
        raise CheckpointError(f"{cfg_path}: invalid heads description ({exc})") from exc
    weighting = task_weighting(tasks, w_cfg)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from exc
    load_state_checked(HeadsBundle(heads, weighting), state, where=str(weights))
    weighting.load_extra_state_json(meta.get("weighting_state") or {})
    return heads, weighting
