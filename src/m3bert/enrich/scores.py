"""Evaluation of an enrich model: per-task losses and metrics on a split, and the aggregate score.

Split out of :mod:`m3bert.enrich.loop` (which re-exports it): :func:`evaluate` runs the model and
heads over a split, :func:`task_scores` turns outputs into the task's metrics (registered metrics of
:mod:`m3bert.tasks.metrics`; KL and top-1 agreement for label-factor ``distribution`` sources),
:func:`aggregate_score` is the model-selection score.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from m3bert.core.errors import DataError
from m3bert.enrich.heads import DISTRIBUTION_METRICS, MultiTaskHeads, TaskInfo, task_loss
from m3bert.enrich.model import represent
from m3bert.enrich.samples import PreparedData, collate
from m3bert.models.base import ModelBase
from m3bert.tasks.metrics import compute_metric, get_metric


@torch.no_grad()
def evaluate(
    model: ModelBase, heads: MultiTaskHeads, data: PreparedData, indices: Sequence[int], *, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per task: loss over all its labelled samples in ``indices`` and its metrics (by name)."""
    was = (model.training, heads.training)
    model.eval()
    heads.eval()
    outs: dict[str, list[torch.Tensor]] = {t: [] for t in heads.task_names}
    tgts: dict[str, list[torch.Tensor]] = {t: [] for t in heads.task_names}
    msks: dict[str, list[torch.Tensor | None]] = {t: [] for t in heads.task_names}
    for b0 in range(0, len(indices), batch_size):
        batch = collate(data, indices[b0:b0 + batch_size], list(heads.tasks.values()))
        pooled = represent(model, batch, input_kind=data.input_kind)
        for t, out in heads(pooled, batch.rows).items():
            outs[t].append(out)
            tgts[t].append(batch.targets[t])
            m = batch.masks[t]
            msks[t].append(m if m is not None else (torch.ones_like(out) if heads.tasks[t].label_type == "multilabel" else None))
    model.train(was[0])
    heads.train(was[1])
    results: dict[str, dict[str, Any]] = {}
    for t, info in heads.tasks.items():
        if not outs[t]:
            continue
        out, tgt = torch.cat(outs[t]), torch.cat(tgts[t])
        mask = torch.cat(msks[t]) if info.label_type == "multilabel" else None
        res: dict[str, Any] = {"n": int(out.shape[0]), "loss": float(task_loss(info.label_type, out, tgt, mask))}
        res.update(task_scores(info, out, tgt, mask))
        results[t] = res
    return results


def task_scores(info: TaskInfo, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """Metrics by name (:mod:`m3bert.tasks.metrics`) on probabilities / de-standardised values.

    A metric undefined on this split (e.g. ROC-AUC with one class in every column) is NaN,
    recorded as such, and left out of the aggregate.
    """
    if info.label_type == "distribution":  # label factors: KL and top-1 agreement (heads.DISTRIBUTION_METRICS)
        probs = torch.softmax(output, dim=-1).numpy()
        return {name: DISTRIBUTION_METRICS[name][0](target.numpy(), probs) for name in info.metrics}
    if info.label_type == "multiclass":
        y_true, y_pred = target.numpy(), torch.softmax(output, dim=-1).numpy()
    elif info.label_type == "multilabel":
        y_true, y_pred = target.numpy(), torch.sigmoid(output).numpy()
    else:
        mean, std = np.asarray(info.target_mean, np.float32), np.asarray(info.target_std, np.float32)
        y_true, y_pred = target.numpy() * std + mean, output.numpy() * std + mean
    m = None if mask is None else mask.numpy()
    scores = {}
    with warnings.catch_warnings():
        # tiny validation splits often leave a tag column single-class; the metric drops it and
        # would warn every epoch
        warnings.simplefilter("ignore", UserWarning)
        for name in info.metrics:
            try:
                scores[name] = float(compute_metric(name, y_true, y_pred, label_type=info.label_type,
                                                    classes=info.classes, target_mask=m))
            except DataError:
                scores[name] = float("nan")
    return scores


def aggregate_score(results: dict[str, dict[str, Any]], tasks: Sequence[TaskInfo]) -> float:
    """Mean over tasks of the primary metric (``Task.metrics[0]``), oriented so higher is better."""
    vals = []
    for t in tasks:
        v = results.get(t.name, {}).get(t.metrics[0], float("nan"))
        if math.isfinite(v):
            vals.append(v if metric_higher_is_better(t.metrics[0]) else -v)
    return float(np.mean(vals)) if vals else float("nan")


def metric_higher_is_better(name: str) -> bool:
    if name in DISTRIBUTION_METRICS:
        return DISTRIBUTION_METRICS[name][1]
    return get_metric(name).higher_is_better


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
