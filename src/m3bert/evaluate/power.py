"""How large a difference a test set can decide: group bootstrap standard errors and the minimum
detectable difference (MDD).

The benchmark's within-noise rule (a paired t-test over probe seeds) measures how much the
*probe* varies; it says nothing about the *test set*, which is the same for every seed. With 30
test clips an accuracy of .30 has a binomial standard error of .08, whatever the seeds say. This
module gives the test-set side, for the issue's requirement that a reader can tell which
differences the test sets are large enough to decide.

Formulas (two-sided test at level ``alpha``, power ``1 - beta``; ``z_q`` = the standard normal
quantile; defaults alpha = 0.05, power = 0.80, so ``z_{0.975} + z_{0.80} = 1.960 + 0.842 = 2.802``):

* ``mdd(se_diff) = (z_{1-alpha/2} + z_{power}) * se_diff``: the true difference that a test of
  "difference = 0" (normal approximation) rejects with the given power, when the estimated
  difference has standard error ``se_diff``.
* Two representations scored on the same test set, taken as independent (conservative: paired
  predictions are positively correlated, which shrinks the variance of the difference):
  ``se_diff = sqrt(2) * se`` with ``se`` the standard error of one score, so
  ``MDD = 2.802 * sqrt(2) * se``. For accuracy ``p`` on ``n`` independent clips
  ``se = sqrt(p (1 - p) / n)`` (:func:`mdd_two_proportions`: n = 100, p = .5 -> .198).
* Paired (the same clips, :func:`paired_bootstrap`): ``se_diff`` is the bootstrap standard error
  of the difference itself, so the correlation is used, not assumed away.

Standard errors come from a *group* bootstrap (:func:`group_bootstrap`): whole pieces (``Clip.group``)
are drawn with replacement, because renders of one piece are not independent; with one clip per
group it is the ordinary bootstrap. A draw whose metric is undefined (e.g. a tag with a single
class) is skipped and counted. The score of a draw is the mean over probe seeds of the task score
on the drawn clips, so seed noise is averaged in, as in the reported mean.

Deviation (on purpose): the MDD uses the normal approximation with the bootstrap SE rather than a
simulation of the test at each candidate difference (cheap, and exact enough at n >= 30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.probes import task_score_fn, task_targets
from m3bert.tasks import metrics as M
from m3bert.tasks.registry import Task, TaskData

ALPHA = 0.05  # two-sided test level of the MDD
POWER = 0.80  # power of the MDD
N_BOOT = 1000  # bootstrap draws of task scores that decompose per clip (accuracy, key_weighted): a draw is a mean
N_BOOT_SLOW = 200  # draws of scores that do not decompose (AUC, R², F1): each draw is a metric call per seed
BOOT_SEED = 0  # the bootstrap's own seed: the same draws for every representation of a task

# score_fn(idx) -> task score on the clips idx (an index array, repeats allowed)
IndexScore = Callable[[np.ndarray], float]


def z_sum(*, alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1-alpha/2} + z_{power}`` (2.802 at the defaults)."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ConfigError(f"power analysis: alpha={alpha}, power={power}; expected both in (0, 1)")
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def mdd(se_diff: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable difference of an estimate with standard error ``se_diff``."""
    return z_sum(alpha=alpha, power=power) * float(se_diff)


def mdd_two_proportions(n: int, p: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """MDD of two accuracies near ``p`` on ``n`` independent clips each: ``z * sqrt(2 p (1-p) / n)``."""
    if n < 1 or not 0 <= p <= 1:
        raise ConfigError(f"mdd_two_proportions: n={n}, p={p}; expected n >= 1 and p in [0, 1]")
    return mdd(math.sqrt(2 * p * (1 - p) / n), alpha=alpha, power=power)


def n_for_mdd(delta: float, p: float, *, alpha: float = ALPHA, power: float = POWER) -> int:
    """Independent test clips needed so that two accuracies near ``p`` differing by ``delta`` are
    detected: ``2 p (1-p) (z / delta)^2`` rounded up."""
    if delta <= 0:
        raise ConfigError(f"n_for_mdd: delta={delta}; expected > 0")
    return int(math.ceil(2 * p * (1 - p) * (z_sum(alpha=alpha, power=power) / delta) ** 2))


def group_draws(groups: Sequence[Any], *, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[np.ndarray]:
    """``n_boot`` bootstrap index arrays: groups drawn with replacement, each bringing all its clips."""
    g = np.asarray([str(x) for x in groups])
    if g.size == 0:
        raise DataError("bootstrap: no clips")
    names, inverse = np.unique(g, return_inverse=True)
    members = [np.nonzero(inverse == k)[0] for k in range(len(names))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))]) for _ in range(n_boot)]


@dataclass
class Bootstrap:
    """Bootstrap distribution of a score (or of a difference of scores)."""

    estimate: float  # on the full test set
    draws: np.ndarray  # (n_ok,) the statistic on each usable draw
    n_skipped: int  # draws where the metric was undefined

    @property
    def se(self) -> float | None:
        return float(self.draws.std(ddof=1)) if len(self.draws) > 1 else None

    def ci(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """Percentile interval."""
        if len(self.draws) < 2:
            return None
        lo, hi = np.quantile(self.draws, [(1 - confidence) / 2, (1 + confidence) / 2])
        return float(lo), float(hi)

    def p_value(self) -> float | None:
        """Two-sided bootstrap p-value of "the statistic is 0" (for a difference): twice the smaller tail."""
        if len(self.draws) < 2:
            return None
        below = float(np.mean(self.draws <= 0))
        above = float(np.mean(self.draws >= 0))
        return min(1.0, 2 * min(below, above))


def group_bootstrap(score: IndexScore, groups: Sequence[Any], *, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    draws: list[np.ndarray] | None = None) -> Bootstrap:
    """Bootstrap of ``score(idx)`` over pieces. ``draws``: precomputed :func:`group_draws` (shared draws
    make two representations' bootstraps paired)."""
    draws = draws if draws is not None else group_draws(groups, n_boot=n_boot, seed=seed)
    full = float(score(np.arange(len(groups))))
    vals, skipped = [], 0
    for idx in draws:
        try:
            vals.append(float(score(idx)))
        except DataError:
            skipped += 1
    return Bootstrap(full, np.asarray(vals, np.float64), skipped)


def paired_bootstrap(score_a: IndexScore, score_b: IndexScore, groups: Sequence[Any], *, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> Bootstrap:
    """Bootstrap of ``score_a - score_b`` on the same drawn pieces (a paired comparison)."""
    return group_bootstrap(lambda idx: score_a(idx) - score_b(idx), groups, n_boot=n_boot, seed=seed)


def seed_mean_score(score_fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float], y: np.ndarray,
                    preds: Sequence[np.ndarray], mask: np.ndarray | None = None,
                    per_item: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                    folds: Sequence[np.ndarray | None] | None = None) -> IndexScore:
    """``idx -> mean over seeds of score_fn(y[idx], pred_s[idx], mask[idx])``.

    ``per_item(y, pred) -> (n,)``: per-clip scores whose mean is the task score (accuracy,
    key_weighted); computed once per seed, so a draw is a mean of an index, not a metric call.
    ``folds``: per seed, the k-fold id of each clip (or None): the score is then computed per fold
    and averaged weighted by the fold's share of the draw, as the benchmark scores k-fold runs.
    """
    if per_item is not None:
        item = np.mean([np.asarray(per_item(y, p), np.float64) for p in preds], axis=0)  # (n,)
        return lambda idx: float(item[idx].mean())
    folds = list(folds) if folds is not None else [None] * len(preds)

    def one(idx: np.ndarray, p: np.ndarray, fold: np.ndarray | None) -> float:
        m = mask[idx] if mask is not None else None
        if fold is None:
            return float(score_fn(y[idx], p[idx], m))
        vals, weights, error = [], [], None
        fi = fold[idx]
        for k in np.unique(fi):
            sel = idx[fi == k]
            try:
                vals.append(float(score_fn(y[sel], p[sel], mask[sel] if mask is not None else None)))
                weights.append(len(sel))
            except DataError as exc:
                error = error or exc
        if not vals:
            raise error or DataError("bootstrap: empty draw")
        return float(np.average(vals, weights=weights))

    def score(idx: np.ndarray) -> float:
        return float(np.mean([one(idx, p, f) for p, f in zip(preds, folds)]))

    return score


def power_row(boot: Bootstrap, *, n_test: int, n_groups: int, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """What results.json records about one score's bootstrap: SE, CI and the MDD of two independent scores."""
    se = boot.se
    ci = boot.ci()
    return {"n_test": int(n_test), "n_groups": int(n_groups), "score": boot.estimate, "se": se,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
            "mdd": mdd(math.sqrt(2) * se, alpha=alpha, power=power) if se is not None else None,
            "n_boot": int(len(boot.draws) + boot.n_skipped), "n_skipped": int(boot.n_skipped),
            "alpha": alpha, "power": power}


def pair_row(boot: Bootstrap, *, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """What results.json records about a paired difference: estimate, SE, 95 % CI, p, MDD."""
    se = boot.se
    ci = boot.ci()
    p = boot.p_value()
    return {"difference": boot.estimate, "se": se, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
            "p_value": p, "mdd": mdd(se, alpha=alpha, power=power) if se is not None else None,
            "decided": None if p is None else bool(p < alpha),
            "n_boot": int(len(boot.draws) + boot.n_skipped), "n_skipped": int(boot.n_skipped)}


MDD_RULE = ("MDD = (z_{1-alpha/2} + z_{power}) * sqrt(2) * SE = 2.802 * sqrt(2) * SE at alpha 0.05 and 80 % power: "
            "the difference between two representations' task scores on this test set that a two-sided test detects "
            "with 80 % power, taking the two scores as independent (conservative; paired differences are listed "
            "separately). SE = standard error of the best representation's task score (mean over seeds) by a group "
            f"bootstrap ({N_BOOT} draws of whole pieces with replacement). For accuracy p on n independent clips "
            "SE = sqrt(p (1 - p) / n).")


# ---------------------------------------------------------------------------------------------
# the benchmark's use: one task's test predictions per representation
# ``kept[name] = {"test": [clip indices per seed], "preds": [(n_test, C) per seed]}`` (the runner's)


def _decomposes(task: Task, td: TaskData) -> bool:
    names = task.score_metrics or [task.primary_metric]
    return td.label_type == "multiclass" and all(M.get_metric(m).per_item is not None for m in names)


def _index_score(k: Mapping[str, Any], task: Task, td: TaskData,
                 common: np.ndarray | None = None) -> tuple[IndexScore | None, np.ndarray]:
    """``idx -> mean over seeds of the task score on the clips idx`` of one representation's test
    predictions (restricted to the clip indices ``common``); None when the seeds tested different clips."""
    tests = k["test"]
    if any(not np.array_equal(t, tests[0]) for t in tests[1:]):
        return None, np.zeros(0, np.int64)
    idx = tests[0] if common is None else common
    pos = np.searchsorted(tests[0], idx)
    y, mask = task_targets(td, [td.clips[i] for i in idx])
    preds = [p[pos] for p in k["preds"]]
    folds = [None if f is None else f[pos] for f in k.get("folds") or [None] * len(preds)]
    names = task.score_metrics or [task.primary_metric]
    per_item = None
    if _decomposes(task, td):
        def per_item(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
            return M.task_score_items(names, yy, pp, classes=td.classes)
    fast = [M.get_metric(m).fast for m in names]
    if all(f is not None for f in fast):  # the metrics' numpy twins: the same numbers, a fraction of the time
        def score_fn(yy: np.ndarray, pp: np.ndarray, mm: np.ndarray | None) -> float:
            return float(np.mean([f(yy, pp, target_mask=mm) for f in fast]))
    else:
        score_fn = task_score_fn(task, td)
    return seed_mean_score(score_fn, y, preds, mask, per_item=per_item, folds=folds), idx


def task_power(rows: Sequence[Mapping[str, Any]], kept: Mapping[str, Mapping[str, Any]], task: Task, td: TaskData, *,
               n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """Test-set power of one (setting, task): group-bootstrap SE and MDD of the best representation's
    score (None for random splits, whose test sets differ between seeds)."""
    rows = [r for r in rows if r["runs"] and r["split"] != "random" and r["representation"] in kept]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["summary"]["score"]["mean"])
    score, idx = _index_score(kept[best["representation"]], task, td)
    if score is None or len(idx) == 0:
        return None
    groups = [td.clips[i].group for i in idx]
    boot = group_bootstrap(score, groups, n_boot=n_boot if _decomposes(task, td) else min(n_boot, N_BOOT_SLOW))
    out = {"setting": best.get("setting"), "task": task.name, "split": best["split"], "reference": best["representation"],
           **power_row(boot, n_test=len(idx), n_groups=len(set(groups)))}
    if (task.score_metrics or [task.primary_metric]) == ["accuracy"]:
        out["mdd_binomial"] = mdd_two_proportions(len(idx), min(max(boot.estimate, 0.0), 1.0))
    return out


def pair_comparison(setting: str | None, task: Task, td: TaskData, a: str, b: str,
                    kept: Mapping[str, Mapping[str, Any]], *, n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """Representation ``a`` minus ``b`` on the test clips both were scored on: a paired group bootstrap."""
    if a not in kept or b not in kept:
        return None
    common = np.intersect1d(kept[a]["test"][0], kept[b]["test"][0])
    sa, _ = _index_score(kept[a], task, td, common)
    sb, _ = _index_score(kept[b], task, td, common)
    if sa is None or sb is None or len(common) == 0:
        return None
    boot = paired_bootstrap(sa, sb, [td.clips[i].group for i in common],
                            n_boot=n_boot if _decomposes(task, td) else min(n_boot, N_BOOT_SLOW))
    return {"setting": setting, "task": task.name, "a": a, "b": b, "n_test": int(len(common)), **pair_row(boot)}
