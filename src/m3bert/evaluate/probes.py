"""Evaluation protocols on frozen features, and one probe run: grid -> select on validation -> test.

Protocols (registered by name in :data:`PROTOCOLS`, ``get_protocol("marble")``):

* ``marble``: 1 hidden layer of 512, ReLU, dropout 0.2, batch 64, Adam, lr in
  {5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2}, input = each hidden state or a learned softmax-weighted
  sum of the transformer layers 1..L (hidden state 0, the input projection, is not mixed, as in
  MARBLE; the runner passes ``mix_layers``); up to 100 epochs, lr x0.1 after 6 epochs without validation improvement,
  early stop after 20 (the MARBLE-Benchmark configs); best epoch per probe, best probe by the
  validation task score, report its test numbers. Clip features: time-mean of frames.
* ``kim``: Kim et al. (2020) sec. 4.4: MLP 2 x 256 ReLU, Adam (lr 1e-3, L2 1e-4 and batch
  min(200, n) as scikit-learn's MLP they used), 200 iterations (epochs), no validation;
  clip features: mean and std over non-overlapping 2.5 s slices. Split as the paper: the task's
  predefined split where it has one (train + valid vs test; ``TaskData.split_source ==
  "predefined"``), else each seed draws a new random 80/20 train/test split by group.
* ``linear``: the MARBLE grid with no hidden layer and no dropout (a linear probe).

The grid itself (every probe of a protocol trained at once) is :mod:`m3bert.evaluate.probe_grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry
from m3bert.evaluate.probe_grid import ProbeConfig, fit_grid, layer_label

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]  # (y_valid, pred, mask) -> task score
# "predefined": the task's train/valid/test; "random": a new 80/20 split by group per seed;
# "predefined-else-random": the predefined one (train+valid vs test) when the task has one, else random
SPLITS = ("predefined", "random", "predefined-else-random")


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: the probe plus how clips are pooled and split."""

    name: str  # "marble" | "kim" | "linear" | ...
    probe: ProbeConfig  # the probe grid
    pooling: str  # clip pooling asked of representations: "mean" | "slices-meanstd"
    split: str  # one of SPLITS
    default_seeds: int  # repeats when the user gives none
    description: str = ""  # one line for reports
    test_fraction: float = 0.2  # "random" split: share of groups in test


PROTOCOLS = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Register ``protocol`` under its name (a second one of that name is a ``ConfigError``)."""
    if protocol.split not in SPLITS:
        raise ConfigError(f"protocol {protocol.name}: split={protocol.split!r}, expected one of {SPLITS}")
    return PROTOCOLS.add(protocol.name, protocol)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.lookup(name)


def available_protocols() -> list[str]:
    return sorted(PROTOCOLS)


register_protocol(Protocol(
    "marble", ProbeConfig(), pooling="mean", split="predefined", default_seeds=3,
    description="MARBLE constrained: MLP 512, dropout 0.2, batch 64, 6 lrs x (each layer + weighted sum), select on valid"))
register_protocol(Protocol(
    "kim", ProbeConfig(hidden=(256, 256), dropout=0.0, batch_size=0, lrs=(1e-3,), layers="last", max_epochs=200,
                       early_stop_patience=None, lr_plateau_patience=None, l2=1e-4),
    pooling="slices-meanstd", split="predefined-else-random", default_seeds=5,
    description="Kim et al. 2020: mean+std of 2.5 s slices, MLP 2x256 ReLU, Adam, 200 iterations, the predefined "
                "split (train+valid vs test) or, without one, random 80/20 splits"))
register_protocol(Protocol(
    "linear", ProbeConfig(hidden=(), dropout=0.0), pooling="mean", split="predefined", default_seeds=3,
    description="linear probe: MARBLE grid (6 lrs x layers) without a hidden layer"))


# ---------------------------------------------------------------------------------------------
# a full probe run: grid -> select on validation -> test predictions


@dataclass
class ProbeOutcome:
    """What one probe run (one representation, task and seed) produced."""

    test_pred: np.ndarray  # (n_test, C) probabilities or values of the selected probe
    selected: dict[str, Any]  # layer, lr, best_epoch, n_epochs, valid_score, layer_weights (+ mixed_layers)
    grid: list[dict[str, Any]] = field(default_factory=list)  # every probe: layer, lr, valid_loss, valid_score, epochs


def fit_chance(y_train: np.ndarray, n_test: int, *, label_type: str, n_outputs: int,
               mask_train: np.ndarray | None = None) -> np.ndarray:
    """The chance row: train class frequencies (majority class), tag prevalence or train mean, ``(n_test, C)``."""
    if label_type == "multiclass":
        p = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_outputs).astype(np.float64)
        p /= p.sum()
    elif label_type == "multilabel":
        y = np.asarray(y_train, dtype=np.float64)
        mk = np.ones_like(y) if mask_train is None else np.asarray(mask_train, dtype=np.float64)
        p = (y * mk).sum(0) / np.maximum(mk.sum(0), 1)
    else:
        p = np.asarray(y_train, dtype=np.float64).mean(0)
    return np.tile(p.astype(np.float32), (n_test, 1))


def run_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, label_type: str, n_outputs: int,
              config: ProbeConfig, seed: int, score_fn: ScoreFn, x_valid: np.ndarray | None = None,
              y_valid: np.ndarray | None = None, mask_train: np.ndarray | None = None,
              mask_valid: np.ndarray | None = None, progress: bool = False,
              mix_layers: Sequence[int] | None = None) -> ProbeOutcome:
    """Fit the grid, score every probe on validation with ``score_fn(y_valid, pred, mask)``,
    keep the best (ties: earliest in grid order) and predict the test set with it.
    ``mix_layers``: the hidden states the weighted-sum probes mix (default all)."""
    fit = fit_grid(x_train, y_train, label_type=label_type, n_outputs=n_outputs, config=config, seed=seed,
                   x_valid=x_valid, y_valid=y_valid, mask_train=mask_train, mask_valid=mask_valid, progress=progress,
                   mix_layers=mix_layers)
    if x_valid is not None and len(x_valid) > 0:
        vpred = fit.predict(x_valid)
        try:
            scores = [float(score_fn(y_valid, vpred[g], mask_valid)) for g in range(len(fit.configs))]
            sel = int(np.argmax(scores))
        except DataError:
            # the metric is undefined on this validation set (e.g. no tag has both classes):
            # fall back to the lowest validation loss rather than failing the run
            scores = [None] * len(fit.configs)
            losses = [v if v is not None else math.inf for v in fit.valid_loss]
            sel = int(np.argmin(losses))
    else:
        scores = [None] * len(fit.configs)
        sel = 0
        if len(fit.configs) > 1:
            raise ConfigError(f"probe grid of {len(fit.configs)} probes needs a validation set to choose one")
    grid = [{"layer": layer_label(layer), "lr": lr, "valid_loss": fit.valid_loss[g], "valid_score": scores[g],
             "best_epoch": fit.best_epoch[g], "n_epochs": fit.n_epochs[g], "final_lr": fit.final_lr[g]}
            for g, (layer, lr) in enumerate(fit.configs)]
    tpred = fit.predict(x_test)[sel]
    selected = {**grid[sel], "layer_weights": fit.layer_weights(sel)}
    if selected["layer_weights"] is not None:
        selected["mixed_layers"] = list(fit.mix_layers)  # the hidden state of each weight
    return ProbeOutcome(test_pred=tpred, selected=selected, grid=grid)
