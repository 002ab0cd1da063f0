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

Splits (:data:`SPLITS`): a protocol's own, or any of them asked of one benchmark run. ``kfold``
is grouped k-fold cross-validation by piece over *every* clip of the task (its predefined
split ignored), stratified by class where the labels allow, new folds per seed; the probe of
fold ``i`` is tested on fold ``i``, selects on fold ``i + 1`` and trains on the rest, so every
clip is tested exactly once per seed (:mod:`m3bert.evaluate.splits`).

Settings (:data:`SETTINGS`, :class:`Setting`): which hidden states the probe reads and how clips
are pooled, several per benchmark run so that they are compared on the same features, seeds and
splits. ``paper`` = the model's output layer, time-mean (Greer et al.'s downstream setup);
``marble`` = every layer + a learned weighted sum of layers 1..L, best on validation, time-mean
(MARBLE's constrained track, Yuan 2023 sec. 3.2); ``*-meanstd`` the same with per-layer mean and
std concatenated (the pooling of the raw-feature statistics, so encoders and baselines can be
compared like for like).

The grid itself (every probe of a protocol trained at once) is :mod:`m3bert.evaluate.probe_grid`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry
from m3bert.evaluate.probe_grid import LAYER_CHOICES, ProbeConfig, fit_grid, layer_label
from m3bert.tasks import metrics as M
from m3bert.tasks.registry import Task, TaskData

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]  # (y_valid, pred, mask) -> task score
# "predefined": the task's train/valid/test; "random": a new 80/20 split by group per seed;
# "predefined-else-random": the predefined one (train+valid vs test) when the task has one, else random
# "kfold": grouped (by piece) k-fold cross-validation over every clip, stratified where labels allow
SPLITS = ("predefined", "random", "predefined-else-random", "kfold")


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
    n_folds: int = 5  # "kfold" split: folds (test 1/k, validation 1/k, train the rest)


PROTOCOLS = Registry("protocol")


def check_split(split: str, n_folds: int, *, where: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"{where}: split={split!r}, expected one of {SPLITS}")
    if split == "kfold" and (isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 3):
        raise ConfigError(f"{where}: n_folds={n_folds!r}, expected an integer >= 3 (a test, a validation and a "
                          "training fold)")


def register_protocol(protocol: Protocol) -> Protocol:
    """Register ``protocol`` under its name (a second one of that name is a ``ConfigError``)."""
    check_split(protocol.split, protocol.n_folds, where=f"protocol {protocol.name}")
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


@dataclass(frozen=True)
class Setting:
    """One probing setting of a benchmark run: which hidden states and which clip pooling."""

    name: str  # label in reports and results.json ("paper", "marble", ...)
    layers: str | tuple[int, ...]  # ProbeConfig.layers: LAYER_CHOICES or hidden-state indices
    pooling: str | None = None  # clip pooling asked of every representation; None = the protocol's
    description: str = ""  # one line for reports

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
                "pooling": self.pooling, "description": self.description}


SETTINGS = Registry("probe setting")
for _s in (Setting("paper", "last", "mean", "output layer, time-mean (the paper's downstream setup)"),
           Setting("marble", "each+weighted", "mean", "each layer + weighted sum of layers 1..L, best on validation, "
                   "time-mean (MARBLE)"),
           Setting("paper-meanstd", "last", "meanstd", "output layer, per-layer mean + std over time"),
           Setting("marble-meanstd", "each+weighted", "meanstd", "each layer + weighted sum, best on validation, "
                   "per-layer mean + std over time")):
    SETTINGS.add(_s.name, _s)


def parse_setting(spec: str | Setting) -> Setting:
    """A :class:`Setting`, a registered name (``"marble"``) or ``"NAME=LAYERS[:POOLING]"``
    (``"out=last:meanstd"``, ``"l3=3:mean"``, ``"mix=weighted"``)."""
    if isinstance(spec, Setting):
        s = spec
    elif not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"setting {spec!r}: expected a name ({sorted(SETTINGS)}) or NAME=LAYERS[:POOLING]")
    elif "=" not in spec:
        s = SETTINGS.lookup(spec)
    else:
        name, _, rest = spec.partition("=")
        layers, _, pooling = rest.partition(":")
        if not name or not layers:
            raise ConfigError(f"setting {spec!r}: expected NAME=LAYERS[:POOLING], e.g. paper=last:mean")
        parsed: str | tuple[int, ...] = layers
        if layers not in LAYER_CHOICES:
            try:
                parsed = tuple(int(i) for i in layers.split(","))
            except ValueError:
                raise ConfigError(f"setting {spec!r}: layers={layers!r}, expected one of {LAYER_CHOICES} or "
                                  "comma-separated hidden-state indices") from None
        s = Setting(name, parsed, pooling or None)
    if isinstance(s.layers, str) and s.layers not in LAYER_CHOICES:
        raise ConfigError(f"setting {s.name}: layers={s.layers!r}, expected one of {LAYER_CHOICES} or indices")
    return s


def resolve_settings(settings: Sequence[str | Setting] | None, protocol: Protocol) -> list[Setting]:
    """The settings of a run: parsed, pooling defaulted to the protocol's; None = one setting named
    after the protocol with its layers and pooling (what a run without settings always did)."""
    if settings is None:
        return [Setting(protocol.name, protocol.probe.layers, protocol.pooling, "the protocol's layers and pooling")]
    out = [parse_setting(s) for s in settings]
    out = [s if s.pooling is not None else dataclasses.replace(s, pooling=protocol.pooling) for s in out]
    if not out:
        raise ConfigError("settings: expected at least one setting (or None for the protocol's)")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"settings: names must be unique, got {names}")
    return out


# ---------------------------------------------------------------------------------------------
# what a probe is trained and scored on

def task_targets(td: TaskData, clips: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
    """Targets of ``clips`` (``TaskData.target_matrix``) and the known-label mask ``(n, C)`` of multilabel
    tasks that have one (else None)."""
    y = td.target_matrix(clips)
    if td.label_type != "multilabel" or not any(c.target_mask is not None for c in clips):
        return y, None
    mask = np.stack([np.ones(len(td.classes), np.float32) if c.target_mask is None
                     else np.asarray(c.target_mask, np.float32) for c in clips])
    return y, mask


def task_score_fn(task: Task, td: TaskData) -> ScoreFn:
    """The task score of predictions (the mean of its score metrics): what validation selects on."""
    names = task.score_metrics or [task.primary_metric]

    def fn(y: np.ndarray, pred: np.ndarray, mask: np.ndarray | None) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # left-out AUC columns on small validation sets
            vals = M.compute_metrics(names, y, pred, label_type=td.label_type, classes=td.classes, target_mask=mask)
        return M.task_score(vals, names)

    return fn


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


def layer_selection(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which layer won per (setting, representation, task): the layer chosen on validation most often
    over seeds (and folds), its count, every layer's count, and for weighted sums the mean softmax
    weight of each mixed layer (``top_layer`` = the heaviest). Ties go to the earliest in layer order."""
    out = []
    for r in results:
        picks: list[dict[str, Any]] = []
        for run in r["runs"]:
            folds = run.get("folds")
            picks += [f["selected"] for f in folds] if folds else [run["selected"]]
        picks = [p for p in picks if p.get("predictor") != "chance"]
        if not picks:
            continue
        names = r.get("layer_names") or []

        def label(p: dict[str, Any]) -> str:
            if p.get("layer") == "weighted":
                return "weighted"
            return p.get("layer_name") or (names[int(p["layer"])] if names and p.get("layer") is not None else str(p.get("layer")))

        counts = Counter(label(p) for p in picks)
        order = {n: i for i, n in enumerate(list(names) + ["weighted"])}
        won = min(counts, key=lambda n: (-counts[n], order.get(n, len(order))))
        row: dict[str, Any] = {"setting": r.get("setting"), "representation": r["representation"], "task": r["task"],
                               "layer": won, "count": counts[won], "n": len(picks),
                               "counts": {n: counts[n] for n in sorted(counts, key=lambda n: order.get(n, len(order)))},
                               "weights": None, "top_layer": None}
        weighted = [p for p in picks if p.get("layer") == "weighted" and p.get("layer_weights")]
        if weighted:
            mixed = weighted[0].get("mixed_layers") or list(range(len(weighted[0]["layer_weights"])))
            w = np.mean([p["layer_weights"] for p in weighted], axis=0)
            wn = [names[i] if names and i < len(names) else str(i) for i in mixed]
            row["weights"] = {n: round(float(v), 4) for n, v in zip(wn, w)}
            row["top_layer"] = wn[int(np.argmax(w))]
        out.append(row)
    return out
