"""Cold-start recommendation from content, Kim et al. (2020) sec. 4.4.2 (after Liang et al. 2015, Hu et al. 2008).

The model (their Eq. 7, with ``P = [R > 0]`` and confidence ``C = 1 + alpha R``)::

    min_{U,V,W}  sum_ui c_ui (p_ui - u_u . v_i)^2 + lambda_V ||V - X W||^2 + lambda_U ||U||^2 + lambda_W ||W||^2

``U`` user factors, ``V`` item factors, ``X`` the items' representations (standardised on the
training items, plus a bias column), ``W`` the linear map from representation to item factors.
We solve it by alternating least squares (:func:`wmf_als`: per-user and per-item closed forms with
Hu et al.'s ``V^T V + V^T (C_u - I) V`` trick, then the ridge closed form of ``W``), with the
paper's settings: r = 50 factors, alpha = 0.1, lambda_V = lambda_U = 1e-5, lambda_W = 0.1, 15
iterations. ``implicit`` (which installs here) only solves plain WMF, not the content term, so the
ALS is our own; ``tests/test_kim_recommendation.py`` checks every update against a dense
closed-form reference and the objective's descent.

Cold start (the paper's "outer matrix" setting): songs of the test split are held out while
``U, V, W`` are learnt on the training songs; their factors are ``X_test W`` and each user's
held-out songs are ranked by ``U X_test W``; a held-out song the user played is relevant; the
score is nDCG@500 averaged over users with at least one relevant held-out song.
``mapping="ridge"`` is the two-stage variant (plain WMF, then ridge ``X -> V``).

:func:`evaluate_recommendation` runs it for a representation on a ``taste-profile`` task (items =
clips, targets = play counts over users) over seeds (a new random 80/20 item split per seed when
the task's split is random, as the Kim protocol does), with mean, std and 95 % CI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.representations import Representation
from m3bert.tasks.datasets.taste_profile import NDCG_K, ndcg_at_k
from m3bert.tasks.metrics import summarize
from m3bert.tasks.registry import TaskData


@dataclass
class WMFConfig:
    """Kim et al. 2020 sec. 4.4.2: alpha 0.1, lambda_V = lambda_U = 1e-5, lambda_W 0.1, r = 50, 15 ALS iterations."""

    factors: int = 50  # r
    alpha: float = 0.1  # confidence C = 1 + alpha R
    lambda_u: float = 1e-5  # user factor L2
    lambda_v: float = 1e-5  # pull of V towards X W
    lambda_w: float = 0.1  # L2 of the content map W
    iterations: int = 15  # ALS sweeps
    mapping: str = "joint"  # "joint" (Eq. 7) | "ridge" (WMF, then ridge X -> V)
    k: int = NDCG_K  # nDCG cut-off
    test_fraction: float = 0.2  # items held out per seed when the task's split is random

    def __post_init__(self) -> None:
        if self.mapping not in ("joint", "ridge"):
            raise ConfigError(f"recommendation mapping={self.mapping!r}; expected 'joint' or 'ridge'")
        if self.factors < 1 or self.iterations < 1 or self.k < 1 or not 0 < self.test_fraction < 1:
            raise ConfigError(f"recommendation config {asdict(self)}: factors, iterations, k >= 1 and 0 < test_fraction < 1")
        if min(self.alpha, self.lambda_u, self.lambda_v, self.lambda_w) < 0:
            raise ConfigError(f"recommendation config {asdict(self)}: alpha and the lambdas must be >= 0")


def _solve_rows(Y: np.ndarray, R: np.ndarray, *, alpha: float, lam: float, prior: np.ndarray | None,
                chunk: int = 2048) -> np.ndarray:
    """Per row ``a`` of ``R``: ``(Y^T C_a Y + lam I) x = Y^T C_a p_a + lam prior_a`` (Hu et al.'s trick:
    ``Y^T C_a Y = Y^T Y + Y_a^T (C_a - I) Y_a`` over the row's non-zeros), solved in batches."""
    r = Y.shape[1]
    gram = Y.T @ Y + lam * np.eye(r)
    out = np.zeros((R.shape[0], r))
    for c0 in range(0, R.shape[0], chunk):
        rows = range(c0, min(R.shape[0], c0 + chunk))
        A = np.repeat(gram[None], len(rows), axis=0)
        b = np.zeros((len(rows), r))
        for j, a in enumerate(rows):
            idx = np.nonzero(R[a])[0]
            Yi = Y[idx]
            c = 1.0 + alpha * R[a, idx]
            A[j] += (Yi.T * (c - 1.0)) @ Yi
            b[j] = Yi.T @ c
        if prior is not None:
            b += lam * prior[c0:c0 + len(rows)]
        out[c0:c0 + len(rows)] = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    return out


def ridge_map(X: np.ndarray, V: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_W ||V - X W||^2 + lam ||W||^2`` = ``(X^T X + lam I)^-1 X^T V``."""
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ V)


def objective(R: np.ndarray, U: np.ndarray, V: np.ndarray, cfg: WMFConfig, X: np.ndarray | None = None,
              W: np.ndarray | None = None) -> float:
    """Eq. 7's value (dense; for tests and the fit history)."""
    P = (R > 0).astype(np.float64)
    C = 1.0 + cfg.alpha * R
    v_prior = X @ W if X is not None else 0.0
    val = float((C * (P - U @ V.T) ** 2).sum() + cfg.lambda_v * ((V - v_prior) ** 2).sum() + cfg.lambda_u * (U ** 2).sum())
    if W is not None:
        val += cfg.lambda_w * float((W ** 2).sum())
    return val


def wmf_als(R: np.ndarray, cfg: WMFConfig, *, X: np.ndarray | None = None, seed: int = 0,
            track: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[float]]:
    """ALS for Eq. 7 (``X`` given) or plain WMF (``X=None``): ``(U, V, W, objective per sweep if track)``.

    ``R (n_users, n_items)`` play counts (dense; the evaluation sets are small, the per-row solves
    touch only each row's non-zeros)."""
    R = np.asarray(R, np.float64)
    if R.ndim != 2 or not np.all(np.isfinite(R)) or (R < 0).any():
        raise DataError(f"recommendation: interaction matrix must be finite, non-negative (users, items), got {R.shape}")
    rng = np.random.default_rng(int(seed))
    n_u, n_i = R.shape
    r = cfg.factors
    U = 0.01 * rng.standard_normal((n_u, r))
    V = 0.01 * rng.standard_normal((n_i, r))
    W = np.zeros((X.shape[1], r)) if X is not None else None
    history = []
    Rt = R.T.copy()
    with threadpool_limits(1):  # many small solves: BLAS threads only contend (10x slower on a busy machine)
        return _sweeps(R, Rt, U, V, W, X, cfg, history, track)


def _sweeps(R: np.ndarray, Rt: np.ndarray, U: np.ndarray, V: np.ndarray, W: np.ndarray | None, X: np.ndarray | None,
            cfg: WMFConfig, history: list[float], track: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[float]]:
    for _ in range(cfg.iterations):
        U = _solve_rows(V, R, alpha=cfg.alpha, lam=cfg.lambda_u, prior=None)
        V = _solve_rows(U, Rt, alpha=cfg.alpha, lam=cfg.lambda_v, prior=X @ W if X is not None else None)
        if X is not None:
            W = ridge_map(X, V, cfg.lambda_w / max(cfg.lambda_v, 1e-300))
        if track:
            history.append(objective(R, U, V, cfg, X, W))
    return U, V, W, history


def _design(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise on the training items and add a bias column."""
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    f = lambda x: np.hstack([(x - mean) / std, np.ones((x.shape[0], 1))])  # noqa: E731
    return f(x_train), f(x_test)


def cold_start_ndcg(features: np.ndarray, R: np.ndarray, test_items: np.ndarray, cfg: WMFConfig, *,
                    seed: int = 0) -> dict[str, Any]:
    """nDCG@k of ranking the held-out items per user from their content (module doc)."""
    features = np.asarray(features, np.float64)
    test = np.asarray(test_items, bool)
    if features.shape[0] != R.shape[1] or test.shape != (R.shape[1],):
        raise DataError(f"recommendation: {features.shape[0]} feature rows and {test.shape} test flags for "
                        f"{R.shape[1]} items")
    if not np.all(np.isfinite(features)):
        raise DataError("recommendation: non-finite item features")
    if test.all() or not test.any():
        raise DataError("recommendation: need both training and held-out items")
    X_tr, X_te = _design(features[~test], features[test])
    R_tr, R_te = R[:, ~test], R[:, test]
    if cfg.mapping == "joint":
        U, _, W, _ = wmf_als(R_tr, cfg, X=X_tr, seed=seed)
    else:
        U, V, _, _ = wmf_als(R_tr, cfg, seed=seed)
        W = ridge_map(X_tr, V, cfg.lambda_w)
    scores = U @ (X_te @ W).T
    per_user = ndcg_at_k(scores, R_te > 0, cfg.k)
    ok = np.isfinite(per_user)
    if not ok.any():
        raise DataError("recommendation: no user played any held-out item; nothing to rank")
    return {"ndcg": float(per_user[ok].mean()), "n_users": int(ok.sum()), "n_train_items": int((~test).sum()),
            "n_test_items": int(test.sum())}


def item_matrix(data: TaskData) -> np.ndarray:
    """``(n_users, n_items)`` play counts of a taste-profile task (clip targets are per-user counts)."""
    return data.target_matrix(data.clips).T.astype(np.float64)


def held_out_masks(data: TaskData, seeds: Sequence[int], fraction: float) -> list[np.ndarray]:
    """Per seed the held-out items: the predefined test split, or (random split) a new seeded draw by group."""
    if data.split_source != "random":
        mask = np.array([c.split == "test" for c in data.clips])
        return [mask for _ in seeds]
    groups = sorted({c.group for c in data.clips})
    out = []
    for s in seeds:
        rng = np.random.default_rng([int(s), 29])
        held = set(rng.permutation(groups)[: max(1, int(round(fraction * len(groups))))].tolist())
        out.append(np.array([c.group in held for c in data.clips]))
    return out


def evaluate_recommendation(rep: Representation, data: TaskData, *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                            cfg: WMFConfig | None = None, pooling: str = "slices-meanstd",
                            cache: FeatureCache | None = None, layer: int = -1) -> dict[str, Any]:
    """Cold-start nDCG of ``rep``'s features on a taste-profile task over seeds, summarised with a 95 % CI."""
    cfg = cfg or WMFConfig()
    cache = cache or FeatureCache(None)
    feats = cache.get(rep, data.task, data.clips, pooling=pooling)
    if not feats.ok.all():
        raise DataError(f"recommendation: {int((~feats.ok).sum())} item(s) could not be embedded: {feats.failures[:2]}")
    X = feats.features[:, layer, :]
    R = item_matrix(data)
    runs = []
    for s, mask in zip(seeds, held_out_masks(data, seeds, cfg.test_fraction)):
        runs.append({"seed": int(s), **cold_start_ndcg(X, R, mask, cfg, seed=int(s))})
    return {"task": data.task, "representation": rep.name, "metric": f"ndcg@{cfg.k}", "config": asdict(cfg),
            "runs": runs, "summary": summarize([r["ndcg"] for r in runs])}
