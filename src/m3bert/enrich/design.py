"""The multi-source experiment's design (Kim et al. 2020, sec. 4.3) and the test of its two findings (sec. 5.2).

Design (:func:`experiment_design`), the paper's three phases shrunk to a corpus:

1. SS-R for every source, once per seed;
2. every multi-source strategy with all ``m`` sources, once per seed;
3. every multi-source strategy with ``n = 2 .. m-1`` sources, once per seed, the subset chosen
   greedily so that each source is present about equally often (the balance step of the paper's
   Algorithm 2; with one run per cell aliasing between sources and ``n`` cannot be driven lower).

Analysis (:func:`findings`): scores are standardised within each target task (``y* = (y - mean) / sd``,
the paper's way to remove the task effect and its heteroskedasticity), and ``n* = 0`` for SS-R,
``n - 2`` otherwise. Then, fixed-effects versions of the paper's two hierarchical models (the
per-task random slopes need more tasks than a corpus has; the task effect is removed by the
standardisation):

* **Finding 1** (RQ1, "more learning sources -> better"): ``y* ~ strategy + beta_n * n*`` over the
  multi-source runs (model 1's common slope), ``beta_n > 0``; also multi-source vs SS-R.
* **Finding 2** (RQ2, "less sharing / later concatenation -> better"): ``y* ~ 1 + beta_r r* + beta_n n*
  + beta_rn r* n*`` over all runs, ``r*`` the paper's network-size code (SS-R 0, MS-SR@FC .2,
  MS-CR@6 .4, MS-CR@4 .6, MS-CR@2 .8, MSS-CR 1), ``beta_r > 0`` (model 2's ``beta_10``); also the same
  slope among multi-source strategies only (where SS-R's smaller output does not carry it).

95 % intervals are percentile bootstraps over *runs* (a run's scores on every task move together),
seeded. A finding **holds** when its interval lies above 0, **does not hold** when below 0, and is
**within noise** when it contains 0; a slope the design cannot estimate (one level of ``n``) is
**not estimable**.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from m3bert.core.errors import DataError
from m3bert.models.kim import STRATEGIES

MULTI = ("ms-sr@fc", "ms-cr@6", "ms-cr@4", "ms-cr@2", "mss-cr")  # the five multi-source strategies


@dataclass(frozen=True)
class Run:
    """One representation to learn: a strategy, its sources and a seed."""

    strategy: str  # key of m3bert.models.kim.STRATEGIES
    sources: tuple[str, ...]  # learning sources (task names)
    seed: int  # training seed
    phase: int  # 1 SS-R, 2 all sources, 3 fractional

    @property
    def n(self) -> int:
        return len(self.sources)

    def name(self, short: dict[str, str]) -> str:
        return f"{self.strategy.replace('@', '')}-{'+'.join(short[s] for s in self.sources)}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sources": list(self.sources), "n": self.n}


def experiment_design(sources: Sequence[str], *, seeds: Sequence[int], strategies: Sequence[str] = MULTI,
                      rng_seed: int = 0) -> list[Run]:
    """The three phases (module doc) over ``sources`` and ``seeds``."""
    sources = list(sources)
    if len(sources) < 2 or len(set(sources)) != len(sources):
        raise DataError(f"the experiment needs at least two distinct sources, got {sources}")
    runs = [Run("ss-r", (s,), int(seed), 1) for seed in seeds for s in sources]
    runs += [Run(st, tuple(sources), int(seed), 2) for seed in seeds for st in strategies]
    rng = np.random.default_rng(rng_seed)
    count = {s: 0 for s in sources}
    for n in range(2, len(sources)):
        combos = list(itertools.combinations(sources, n))
        for seed in seeds:
            for st in strategies:
                def imbalance(c: tuple[str, ...]) -> tuple[int, int]:
                    after = {s: count[s] + (s in c) for s in sources}
                    return max(after.values()) - min(after.values()), sum(count[s] for s in c)
                best = min(imbalance(c) for c in combos)
                pick = [c for c in combos if imbalance(c) == best]
                chosen = pick[int(rng.integers(len(pick)))]
                for s in chosen:
                    count[s] += 1
                runs.append(Run(st, chosen, int(seed), 3))
    return runs


# ---------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------


class Obs:
    """The observations as arrays (one entry per (run, task)), resampled by run in the bootstrap."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.runs = sorted({r["run"] for r in rows})
        tasks = sorted({r["task"] for r in rows})
        rix = {k: i for i, k in enumerate(self.runs)}
        self.run = np.asarray([rix[r["run"]] for r in rows])
        self.task = np.asarray([tasks.index(r["task"]) for r in rows])
        self.n_tasks = len(tasks)
        self.strategy = np.asarray([r["strategy"] for r in rows])
        self.single = self.strategy == "ss-r"
        self.n = np.asarray([r["n"] for r in rows], np.float64)
        self.n_star = np.where(self.single, 0.0, self.n - 2)
        self.r_star = np.asarray([STRATEGIES[s].size_code for s in self.strategy])
        self.score = np.asarray([r["score"] for r in rows], np.float64)
        self.by_run = [np.nonzero(self.run == i)[0] for i in range(len(self.runs))]

    def take(self, run_ids: np.ndarray) -> "Obs":
        """The observations of these runs (with repeats), as a new Obs."""
        by_run = self.by_run
        idx = np.concatenate([by_run[i] for i in run_ids])
        new = object.__new__(Obs)
        new.__dict__.update({k: (v[idx] if isinstance(v, np.ndarray) and v.shape == self.run.shape else v)
                             for k, v in self.__dict__.items()})
        new.run = np.repeat(np.arange(len(run_ids)), [len(by_run[i]) for i in run_ids])
        new.runs = [f"{self.runs[i]}#{j}" for j, i in enumerate(run_ids)]
        new.by_run = []  # a resample is not resampled again
        return new

    @property
    def y(self) -> np.ndarray:
        """Scores standardised within each task."""
        out = np.zeros_like(self.score)
        for t in range(self.n_tasks):
            m = self.task == t
            if m.any():
                sd = self.score[m].std(ddof=1) if m.sum() > 1 else 0.0
                out[m] = (self.score[m] - self.score[m].mean()) / (sd if sd > 0 else 1.0)
        return out


def standardise(rows: list[dict[str, Any]]) -> np.ndarray:
    """``y*`` of each row: its score standardised within its task."""
    return Obs(rows).y


def _ols(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]


def verdict(lo: float, hi: float) -> str:
    return "holds" if lo > 0 else ("does not hold" if hi < 0 else "within noise")


def bootstrap(obs: Obs, stat: Callable[[Obs], float], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Point estimate and percentile 95 % interval of ``stat`` resampling runs (clusters of observations)."""
    est = float(stat(obs))
    if not np.isfinite(est):  # e.g. a slope over n with one number of sources in the design
        return {"estimate": None, "ci_low": None, "ci_high": None, "n_boot": 0, "verdict": "not estimable"}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        try:
            v = float(stat(obs.take(rng.integers(0, len(obs.runs), size=len(obs.runs)))))
        except (np.linalg.LinAlgError, ValueError):
            continue
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot // 2:
        raise DataError(f"bootstrap: only {len(vals)} of {n_boot} resamples gave a finite estimate")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return {"estimate": est, "ci_low": float(lo), "ci_high": float(hi), "n_boot": len(vals), "verdict": verdict(lo, hi)}


def slope_sources(o: Obs) -> float:
    """Model 1's common slope of ``y*`` on ``n*`` over multi-source runs, with one intercept per strategy."""
    m = ~o.single
    if len(np.unique(o.n[m])) < 2:
        return float("nan")
    strategies = sorted(set(o.strategy[m].tolist()))
    X = np.column_stack([(o.strategy[m] == s).astype(float) for s in strategies] + [o.n_star[m]])
    return float(_ols(X, o.y[m])[-1])


def multi_minus_single(o: Obs) -> float:
    y = o.y
    if o.single.all() or not o.single.any():
        return float("nan")
    return float(y[~o.single].mean() - y[o.single].mean())


def model2(o: Obs) -> np.ndarray:
    """``[beta_0, beta_r, beta_n, beta_rn]`` of ``y* ~ 1 + r* + n* + r* n*`` over all runs."""
    X = np.column_stack([np.ones_like(o.r_star), o.r_star, o.n_star, o.r_star * o.n_star])
    return _ols(X, o.y)


def slope_sharing_multi(o: Obs) -> float:
    """Slope of ``y*`` on ``r*`` among multi-source runs, controlling for ``n*``."""
    m = ~o.single
    X = np.column_stack([np.ones(int(m.sum())), o.r_star[m], o.n_star[m]])
    return float(_ols(X, o.y[m])[1])


def strategy_means(o: Obs, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean ``y*`` per strategy with a run-bootstrap interval."""
    out = {}
    for s in [k for k in STRATEGIES if (o.strategy == k).any()]:
        out[STRATEGIES[s].label] = bootstrap(
            o, lambda b, s=s: float(b.y[b.strategy == s].mean()) if (b.strategy == s).any() else float("nan"),
            n_boot=n_boot, seed=seed)
    return out


def findings(rows: list[dict[str, Any]], *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Both findings with bootstrap intervals and verdicts (module doc).

    ``rows``: one per (run, target task): ``run``, ``strategy``, ``n``, ``task``, ``score`` (higher is better).
    """
    if len(rows) < 4:
        raise DataError(f"findings: {len(rows)} observations; the analysis needs runs of several strategies and sizes")
    o = Obs(rows)
    f1 = bootstrap(o, slope_sources, n_boot=n_boot, seed=seed)
    f1_multi = bootstrap(o, multi_minus_single, n_boot=n_boot, seed=seed + 1)
    f2 = bootstrap(o, lambda b: float(model2(b)[1]), n_boot=n_boot, seed=seed + 2)
    f2_multi = bootstrap(o, slope_sharing_multi, n_boot=n_boot, seed=seed + 3)
    beta = model2(o)
    return {
        "finding1": {"claim": "more learning sources -> better (RQ1)", "test": "slope of y* on n* among multi-source "
                     "runs, one intercept per strategy (model 1)", **f1, "multi_minus_single": f1_multi},
        "finding2": {"claim": "less sharing / later concatenation -> better (RQ2)", "test": "beta_r of y* ~ 1 + r* + n* + "
                     "r* n* over all runs (model 2)", **f2, "model2": dict(zip(("beta_0", "beta_r", "beta_n", "beta_rn"),
                                                                             map(float, beta))),
                     "within_multi_source": f2_multi},
        "strategy_means": strategy_means(o, n_boot=n_boot, seed=seed + 4),
        "n_runs": len(o.runs), "n_observations": len(rows),
    }
