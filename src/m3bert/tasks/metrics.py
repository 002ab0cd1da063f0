"""Evaluation metrics by name, the MARBLE task score, and mean / std / 95 % CI over repeats.

Every reported number comes from scikit-learn, mir_eval or scipy; this module only validates inputs,
routes them, and documents the handling of degenerate cases. Two additions serve resampling
(the benchmark's bootstraps, :mod:`m3bert.evaluate.power`): ``Metric.per_item`` (per-example
scores whose mean is the metric: accuracy, key_weighted) and ``Metric.fast`` (plain numpy/scipy
twins of ROC-AUC, average precision and R², tested equal to scikit-learn's, without its per-call
overhead). ``compute_fold_metrics`` scores k-fold runs fold by fold (its docstring says why).

* ``y_true`` — multiclass: int ``(n,)`` class indices; multilabel: 0/1 ``(n, n_classes)``;
  regression: float ``(n, n_targets)`` (or ``(n,)`` for one target).
* ``y_pred`` — multiclass: scores or probabilities ``(n, n_classes)`` (argmax is the
  prediction) or int labels ``(n,)``; multilabel: scores ``(n, n_classes)`` (higher = more
  likely); regression: values with the shape of ``y_true``.
* ``target_mask`` — multilabel only, ``(n, n_classes)``, 1 where the label is known (OpenMIC):
  ranking metrics use only the known entries of each column.

Degenerate cases (documented handling, never a silent wrong number):

* shape mismatch, NaN/inf, labels out of range, empty input -> :class:`~m3bert.core.errors.DataError`.
* ROC-AUC / PR-AUC macro: a column whose known ``y_true`` entries hold a single class has no
  defined AUC; it is left out of the macro average (a ``UserWarning`` names it) and the number of
  columns left out is reported by :func:`ranking_columns`. If no column is usable -> ``DataError``.
* R²: ``sklearn.metrics.r2_score`` with its default ``force_finite=True``, so a constant target
  column scores 1.0 for a perfect prediction and 0.0 otherwise.
* macro-F1: over every class of the task (``labels=range(n_classes)``) with ``zero_division=0``,
  so a class that is never predicted counts as 0, as in MARBLE / torchmetrics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import mir_eval
import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, r2_score, roc_auc_score

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    """A registered metric."""

    name: str  # as used in Task.metrics and reports
    label_types: tuple[str, ...]  # label types it applies to
    fn: MetricFn  # fn(y_true, y_pred, *, classes, target_mask) -> float
    description: str = ""  # one line for reports
    higher_is_better: bool = True  # every metric here is a score (1 = perfect)
    # per_item(y_true, y_pred, *, classes) -> (n,): per-example scores whose mean is the metric (accuracy,
    # key_weighted); None when the metric does not decompose (AUC, F1, R²). Bootstraps use it to resample cheaply.
    per_item: Callable[..., np.ndarray] | None = None
    # fast(y_true, y_pred, *, target_mask) -> float: a plain-numpy/scipy twin of fn, equal on valid inputs (tested
    # against scikit-learn), without fn's validation and overhead; what a bootstrap calls thousands of times
    fast: Callable[..., float] | None = None


METRICS = Registry("metric")
# prefix -> factory(suffix) -> Metric, for families such as "r2_<target name>"
METRIC_FAMILIES = Registry("metric family")


def register_metric(metric: Metric) -> Metric:
    """Register ``metric`` under its name (a second one of that name is a ``ConfigError``)."""
    return METRICS.add(metric.name, metric)


def register_metric_family(prefix: str, factory: Callable[[str], Metric]) -> Callable[[str], Metric]:
    """Register ``"<prefix><suffix>"`` names, e.g. ``r2_`` + target name."""
    return METRIC_FAMILIES.add(prefix, factory)


def get_metric(name: str) -> Metric:
    """A registered metric, or one of a registered family (``r2_valence``); else a ``ConfigError``."""
    if name not in METRICS:
        for prefix, factory in METRIC_FAMILIES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return factory(name[len(prefix):])
    return METRICS.lookup(name)


def available_metrics() -> list[str]:
    return sorted(METRICS) + [f"{p}<target>" for p in sorted(METRIC_FAMILIES)]


# ---------------------------------------------------------------------------------------------
# input validation


def _finite(name: str, what: str, a: np.ndarray) -> None:
    if a.size and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise DataError(f"metric {name}: {what} contains {bad} non-finite value(s) (NaN/inf); expected finite numbers")


def _multiclass_inputs(name: str, y_true: Any, y_pred: Any, classes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (true labels (n,), predicted labels (n,), n_classes)."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1:
        raise DataError(f"metric {name}: y_true shape {t.shape}, expected (n,) class indices")
    if t.shape[0] == 0:
        raise DataError(f"metric {name}: empty input (0 examples)")
    if p.shape[0] != t.shape[0]:
        raise DataError(f"metric {name}: y_true has {t.shape[0]} rows but y_pred has {p.shape[0]}")
    if not np.issubdtype(t.dtype, np.integer):
        if not np.all(np.isfinite(t)) or not np.all(t == np.round(t)):
            raise DataError(f"metric {name}: y_true must hold integer class indices, got dtype {t.dtype}")
        t = t.astype(np.int64)
    _finite(name, "y_pred", p.astype(np.float64) if p.dtype.kind in "fc" else p)
    if p.ndim == 2:
        n_classes = p.shape[1]
        if classes is not None and len(classes) != n_classes:
            raise DataError(f"metric {name}: y_pred has {n_classes} columns but the task has {len(classes)} classes")
        labels = np.argmax(p, axis=1)
    elif p.ndim == 1:
        if not np.issubdtype(p.dtype, np.integer):
            raise DataError(f"metric {name}: 1-D y_pred must be int class indices, got dtype {p.dtype}")
        labels = p.astype(np.int64)
        n_classes = len(classes) if classes is not None else int(max(t.max(), labels.max())) + 1
    else:
        raise DataError(f"metric {name}: y_pred shape {p.shape}, expected (n, n_classes) scores or (n,) labels")
    for what, a in (("y_true", t), ("y_pred", labels)):
        if a.min() < 0 or a.max() >= n_classes:
            raise DataError(f"metric {name}: {what} has class index {int(a.min() if a.min() < 0 else a.max())}, expected [0, {n_classes})")
    return t, labels, n_classes


def _matrix_inputs(name: str, y_true: Any, y_pred: Any, target_mask: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """-> (y_true (n, k), y_pred (n, k), mask (n, k) bool or None), 1-D inputs become (n, 1)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if t.ndim != 2 or t.shape != p.shape:
        raise DataError(f"metric {name}: y_true shape {np.shape(y_true)} and y_pred shape {np.shape(y_pred)} differ; expected equal (n, k)")
    if t.shape[0] == 0:
        raise DataError(f"metric {name}: empty input (0 examples)")
    _finite(name, "y_true", t)
    _finite(name, "y_pred", p)
    mask = None
    if target_mask is not None:
        mask = np.asarray(target_mask)
        if mask.shape != t.shape:
            raise DataError(f"metric {name}: target_mask shape {mask.shape}, expected {t.shape}")
        mask = mask.astype(bool)
    return t, p, mask


# ---------------------------------------------------------------------------------------------
# multiclass


def accuracy(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    t, p, _ = _multiclass_inputs("accuracy", y_true, y_pred, classes)
    return float(accuracy_score(t, p))


def macro_f1(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    t, p, n_classes = _multiclass_inputs("macro_f1", y_true, y_pred, classes)
    return float(f1_score(t, p, labels=np.arange(n_classes), average="macro", zero_division=0))


def key_weighted(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    """Mean of ``mir_eval.key.weighted_score`` (1 same key, 0.5 fifth, 0.3 relative, 0.2 parallel)."""
    if classes is None:
        raise DataError("metric key_weighted: needs the task's class names (e.g. 'C major', 'A minor')")
    t, p, _ = _multiclass_inputs("key_weighted", y_true, y_pred, classes)
    for c in classes:
        try:
            mir_eval.key.validate_key(c)
        except ValueError as exc:
            raise DataError(f"metric key_weighted: class name {c!r} is not a key ('<tonic> major|minor'): {exc}") from None
    return float(np.mean([mir_eval.key.weighted_score(classes[a], classes[b]) for a, b in zip(t, p)]))


# ---------------------------------------------------------------------------------------------
# multilabel ranking


def ranking_columns(y_true: Any, target_mask: Any = None) -> tuple[list[int], list[int]]:
    """Columns with both classes among their known entries (usable for AUC), and the others."""
    t = np.asarray(y_true)
    if t.ndim == 1:
        t = t[:, None]
    m = np.ones_like(t, dtype=bool) if target_mask is None else np.asarray(target_mask).astype(bool)
    good, bad = [], []
    for j in range(t.shape[1]):
        col = t[m[:, j], j]
        (good if col.size and 0 < col.sum() < col.size else bad).append(j)
    return good, bad


def _ranking_macro(name: str, score_fn: Callable[[np.ndarray, np.ndarray], float], y_true: Any, y_pred: Any,
                   classes: Sequence[str] | None, target_mask: Any) -> float:
    t, p, mask = _matrix_inputs(name, y_true, y_pred, target_mask)
    if not np.all((t == 0) | (t == 1)):
        raise DataError(f"metric {name}: y_true must be 0/1, got values {np.unique(t)[:6].tolist()}")
    good, bad = ranking_columns(t, mask)
    if bad:
        names = [classes[j] if classes is not None and j < len(classes) else str(j) for j in bad]
        warnings.warn(f"metric {name}: {len(bad)} column(s) with a single class in y_true left out of the macro average: {names[:10]}",
                      UserWarning, stacklevel=3)
    if not good:
        raise DataError(f"metric {name}: no column has both positive and negative examples; the macro average is undefined")
    vals = []
    for j in good:
        keep = mask[:, j] if mask is not None else slice(None)
        vals.append(score_fn(t[keep, j], p[keep, j]))
    return float(np.mean(vals))


def roc_auc_macro(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    return _ranking_macro("roc_auc_macro", roc_auc_score, y_true, y_pred, classes, target_mask)


def pr_auc_macro(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    """Macro average precision (the 'PR-AUC' / AP of MARBLE and MTG-Jamendo)."""
    return _ranking_macro("pr_auc_macro", average_precision_score, y_true, y_pred, classes, target_mask)


def _fast_ranking(kind: str, y_true: Any, y_pred: Any, *, target_mask: Any = None) -> float:
    """ROC-AUC (Mann-Whitney U with average ranks for ties) or average precision (scikit-learn's
    step-wise sum over distinct thresholds), macro over the columns with both classes."""
    t = np.asarray(y_true, np.float64)
    p = np.asarray(y_pred, np.float64)
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    m = None if target_mask is None else np.asarray(target_mask).astype(bool)
    vals = []
    for j in range(t.shape[1]):
        tj, pj = (t[:, j], p[:, j]) if m is None else (t[m[:, j], j], p[m[:, j], j])
        n_pos = float(tj.sum())
        if n_pos == 0 or n_pos == tj.size:
            continue
        if kind == "roc":
            ranks = stats.rankdata(pj)
            vals.append((ranks[tj == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (tj.size - n_pos)))
            continue
        order = np.argsort(pj, kind="mergesort")[::-1]
        ys, ps = tj[order], pj[order]
        last = np.r_[np.nonzero(np.diff(ps))[0], ys.size - 1]  # last index of each distinct score
        tps = np.cumsum(ys)[last]
        precision = tps / (last + 1)
        vals.append(float(np.sum(np.diff(np.r_[0.0, tps / n_pos]) * precision)))
    if not vals:
        raise DataError(f"metric {kind}: no column has both positive and negative examples")
    return float(np.mean(vals))


def fast_roc_auc_macro(y_true: Any, y_pred: Any, *, target_mask: Any = None) -> float:
    return _fast_ranking("roc", y_true, y_pred, target_mask=target_mask)


def fast_pr_auc_macro(y_true: Any, y_pred: Any, *, target_mask: Any = None) -> float:
    return _fast_ranking("ap", y_true, y_pred, target_mask=target_mask)


def fast_r2(y_true: Any, y_pred: Any, *, target_mask: Any = None) -> float:
    """R² per column (constant column: 1 if predicted exactly else 0, as r2_score's force_finite), averaged."""
    t = np.asarray(y_true, np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_pred, np.float64).reshape(len(y_pred), -1)
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    return float(per.mean())


# ---------------------------------------------------------------------------------------------
# regression


def r2(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    """R² averaged uniformly over targets (``sklearn.metrics.r2_score``)."""
    t, p, _ = _matrix_inputs("r2", y_true, y_pred)
    return float(r2_score(t, p, multioutput="uniform_average"))


def _r2_target(target: str) -> Metric:
    name = f"r2_{target}"

    def fn(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
        t, p, _ = _matrix_inputs(name, y_true, y_pred)
        if classes is None or target not in classes:
            raise DataError(f"metric {name}: target {target!r} not among the task's targets {list(classes or [])}")
        if len(classes) != t.shape[1]:
            raise DataError(f"metric {name}: y_true has {t.shape[1]} columns but the task names {len(classes)} targets")
        j = list(classes).index(target)
        return float(r2_score(t[:, j], p[:, j]))

    return Metric(name, ("regression",), fn, f"R² of target {target!r}")


def accuracy_items(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None) -> np.ndarray:
    """``(n,)`` 1.0 where the argmax is the true class; the mean is :func:`accuracy`."""
    t, p, _ = _multiclass_inputs("accuracy", y_true, y_pred, classes)
    return (t == p).astype(np.float64)


def key_weighted_items(y_true: Any, y_pred: Any, *, classes: Sequence[str] | None = None) -> np.ndarray:
    """``(n,)`` mir_eval weighted key score per clip; the mean is :func:`key_weighted`."""
    if classes is None:
        raise DataError("metric key_weighted: needs the task's class names (e.g. 'C major', 'A minor')")
    t, p, _ = _multiclass_inputs("key_weighted", y_true, y_pred, classes)
    try:
        table = np.array([[mir_eval.key.weighted_score(a, b) for b in classes] for a in classes], np.float64)
    except ValueError as exc:
        raise DataError(f"metric key_weighted: a class name of {list(classes)[:6]} is not a key ('<tonic> major|minor'): "
                        f"{exc}") from None
    return table[t, p]


register_metric(Metric("accuracy", ("multiclass",), accuracy, "fraction of examples whose argmax is the true class",
                       per_item=accuracy_items))
register_metric(Metric("macro_f1", ("multiclass",), macro_f1, "F1 averaged over all classes"))
register_metric(Metric("key_weighted", ("multiclass",), key_weighted, "MIREX weighted key score (mir_eval.key)",
                       per_item=key_weighted_items))
register_metric(Metric("roc_auc_macro", ("multilabel",), roc_auc_macro, "ROC-AUC averaged over tags",
                       fast=fast_roc_auc_macro))
register_metric(Metric("pr_auc_macro", ("multilabel",), pr_auc_macro, "average precision (PR-AUC) averaged over tags",
                       fast=fast_pr_auc_macro))
register_metric(Metric("r2", ("regression",), r2, "coefficient of determination averaged over targets", fast=fast_r2))
register_metric_family("r2_", _r2_target)


def compute_metric(name: str, y_true: Any, y_pred: Any, *, label_type: str | None = None,
                   classes: Sequence[str] | None = None, target_mask: Any = None) -> float:
    """One metric by name; ``label_type`` (if given) must be one the metric applies to."""
    metric = get_metric(name)
    if label_type is not None and label_type not in metric.label_types:
        raise ConfigError(f"metric {name!r} applies to {metric.label_types}, not to a {label_type} task")
    return metric.fn(y_true, y_pred, classes=classes, target_mask=target_mask)


def compute_metrics(names: Sequence[str], y_true: Any, y_pred: Any, *, label_type: str | None = None,
                    classes: Sequence[str] | None = None, target_mask: Any = None) -> dict[str, float]:
    with warnings.catch_warnings():
        # a left-out AUC column warns once per metric, not once per call site
        warnings.simplefilter("once", UserWarning)
        return {n: compute_metric(n, y_true, y_pred, label_type=label_type, classes=classes, target_mask=target_mask)
                for n in names}


def compute_fold_metrics(names: Sequence[str], y_true: Any, y_pred: Any, fold: np.ndarray, *, label_type: str | None = None,
                         classes: Sequence[str] | None = None, target_mask: Any = None) -> dict[str, float]:
    """Cross-validation: each metric computed on each fold's examples (``fold (n,)`` ids), then averaged
    weighted by fold size, as scikit-learn's ``cross_val_score`` does (unweighted there).

    Why not the metric of the pooled out-of-fold predictions: the probes of different folds are
    different models, and ranking metrics pooled across them are biased (a chance predictor that
    outputs each fold's train prevalence scores a pooled ROC-AUC below 0.5, because a fold whose
    training part holds more positives tests fewer). For a mean over examples (accuracy) both are
    equal. A fold on which a metric is undefined (``DataError``: e.g. no tag with both classes) is
    left out of that metric's average; if it is undefined on every fold the error is raised.
    """
    fold = np.asarray(fold)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    m = None if target_mask is None else np.asarray(target_mask)
    out: dict[str, float] = {}
    for name in names:
        vals, weights, first_error = [], [], None
        for k in np.unique(fold):
            sel = fold == k
            try:
                vals.append(compute_metric(name, t[sel], p[sel], label_type=label_type, classes=classes,
                                           target_mask=None if m is None else m[sel]))
                weights.append(int(sel.sum()))
            except DataError as exc:
                first_error = first_error or exc
        if not vals:
            raise first_error  # type: ignore[misc]
        out[name] = float(np.average(vals, weights=weights))
    return out


def task_score_items(score_metrics: Sequence[str], y_true: Any, y_pred: Any, *,
                     classes: Sequence[str] | None = None) -> np.ndarray | None:
    """``(n,)`` per-example task score (mean over ``score_metrics`` of their per-item scores), or None
    when a metric does not decompose into per-example scores."""
    metrics = [get_metric(m) for m in score_metrics]
    if any(m.per_item is None for m in metrics):
        return None
    return np.mean([m.per_item(y_true, y_pred, classes=classes) for m in metrics], axis=0)


def task_score(values: dict[str, float], score_metrics: Sequence[str]) -> float:
    """MARBLE: a task with two metrics (ROC + AP, R²ᵥ + R²ₐ) scores the mean of them."""
    missing = [m for m in score_metrics if m not in values]
    if missing:
        raise DataError(f"task score: metric(s) {missing} not computed; have {sorted(values)}")
    return float(np.mean([values[m] for m in score_metrics]))


# ---------------------------------------------------------------------------------------------
# repeats


def summarize(values: Sequence[float], *, confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the two-sided t-distribution CI of the mean over repeats.

    With a single value the std and CI are ``None`` (unknown, not zero).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise DataError(f"summarize: expected a non-empty list of numbers, got shape {v.shape}")
    _finite("summarize", "values", v)
    n = int(v.size)
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "half_width": None, "n": n,
                "confidence": confidence, "values": v.tolist()}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n,
            "confidence": confidence, "values": v.tolist()}


def paired_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of ``a`` vs ``b`` (matched seeds / splits).

    ``None`` when undefined: fewer than two pairs. Identical runs (zero variance of the
    differences) give p = 1 when every difference is 0, else p = 0.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise DataError(f"paired_test: shapes {x.shape} and {y.shape} differ; expected equal 1-D")
    if x.size < 2:
        return None
    d = x - y
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return 1.0 if abs(d[0]) <= 1e-12 else 0.0
    return float(stats.ttest_rel(x, y).pvalue)
