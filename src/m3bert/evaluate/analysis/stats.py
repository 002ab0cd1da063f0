"""Streaming statistics of the interpretability analysis: pure numpy, no files, no models.

* :class:`Sums` accumulates, per model, float64 sufficient statistics over frames, file by file:
  per train/test part and per *mask group* (``all`` frames, or only ``voiced`` frames for f0) the
  frame count ``n``, ``sum x`` and the Gram matrix ``sum x x^T`` of every layer (its diagonal is
  ``sum x^2``), ``sum x*y`` per descriptor, ``sum y`` / ``sum y^2``, and lag-1 products for the
  autocorrelation of units and descriptors. Memory is ``O(layers x units^2)``, independent of the
  number of frames: no frames x units matrix is ever kept.
* :func:`pearson` turns the sums into Pearson's r for every (layer, descriptor, unit).
* :func:`fisher_bound`: Fisher-z confidence interval of r with a Bonferroni correction over the
  ``m`` units tested, using an *effective* sample size (:func:`effective_n`, Bartlett's AR(1)
  correction ``n (1 - rho_x rho_y) / (1 + rho_x rho_y)``: neighbouring frames are not independent, so
  n = frames would overstate the confidence).
* :class:`Reservoir`: a seeded bottom-k sample of frames (every frame gets a key that is a pure
  function of the seed, the item and the frame index; the k smallest keys win). It is a uniform
  sample without replacement, independent of the order files are processed in and mergeable, so an
  interrupted run resumes to the same sample. Spearman's rho is Pearson's r of ranks on it
  (:func:`spearman`), and the scatter plots read it.
* :func:`ridge_probe`: ridge regression from all units of a layer to one descriptor, fitted from the
  train sums (penalty chosen by generalised cross-validation, also computable from the sums) and
  scored (R^2) on the test sums.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as sstats

SPLITS = ("train", "test")
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge penalty / mean eigenvalue of the standardised Gram
MIN_N_EFF = 4.0  # the Fisher-z standard error 1/sqrt(n - 3) needs n > 3


def frame_keys(seed: int, item_id: str, n_frames: int) -> np.ndarray:
    """Uniform keys in [0, 1) for the frames of one item: a pure function of (seed, item id, frame)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(item_id.encode("utf-8"))])
    return rng.random(int(n_frames))


# ---------------------------------------------------------------------------------------------
# sufficient statistics


class Sums:
    """Float64 sums of one model over frames (module docstring). ``groups``: mask-group name per
    descriptor channel (``"all"`` or ``"voiced"``)."""

    def __init__(self, layer_dims: Sequence[int], groups: Sequence[str]) -> None:
        self.layer_dims = [int(d) for d in layer_dims]
        self.groups = list(groups)
        self.group_names = sorted(set(self.groups), key=lambda g: (g != "all", g))
        n_s, n_g, k = len(SPLITS), len(self.group_names), len(self.groups)
        self.n = np.zeros((n_s, n_g))
        self.sx = [np.zeros((n_s, n_g, d)) for d in self.layer_dims]
        self.gram = [np.zeros((n_s, n_g, d, d)) for d in self.layer_dims]
        self.sxy = [np.zeros((n_s, k, d)) for d in self.layer_dims]
        self.sy = np.zeros((n_s, k))
        self.syy = np.zeros((n_s, k))
        self.ny = np.zeros((n_s, k))
        # lag-1 (frames t, t+1 of one item): units over all pairs, descriptors over valid pairs
        self.n1 = np.zeros(1)
        self.sxx1 = [np.zeros(d) for d in self.layer_dims]
        self.ny1 = np.zeros(k)
        self.syy1 = np.zeros(k)
        self.sy1a = np.zeros(k)
        self.sy1b = np.zeros(k)

    def group_index(self, k: int) -> int:
        return self.group_names.index(self.groups[k])

    def add(self, states: Sequence[np.ndarray], y: np.ndarray, valid: np.ndarray, *, split: int) -> None:
        """Add one item: ``states`` per layer ``(T, U_l)``, descriptors ``y`` ``(T, K)`` and their
        validity ``valid`` ``(T, K)`` bool (the rows of a mask group share one validity)."""
        y = np.asarray(y, dtype=np.float64)
        valid = np.asarray(valid, dtype=bool)
        yv = np.where(valid, y, 0.0)
        vf = valid.astype(np.float64)
        gmask = {g: valid[:, self.groups.index(g)] for g in self.group_names}
        for gi, g in enumerate(self.group_names):
            self.n[split, gi] += float(gmask[g].sum())
        self.sy[split] += yv.sum(axis=0)
        self.syy[split] += (yv * yv).sum(axis=0)
        self.ny[split] += vf.sum(axis=0)
        pair = valid[:-1] & valid[1:]
        self.ny1 += pair.sum(axis=0)
        self.syy1 += (np.where(pair, y[:-1] * y[1:], 0.0)).sum(axis=0)
        self.sy1a += np.where(pair, y[:-1], 0.0).sum(axis=0)
        self.sy1b += np.where(pair, y[1:], 0.0).sum(axis=0)
        self.n1 += max(0, y.shape[0] - 1)
        for li, h in enumerate(states):
            x = np.asarray(h, dtype=np.float64)
            for gi, g in enumerate(self.group_names):
                xg = x[gmask[g]]
                self.sx[li][split, gi] += xg.sum(axis=0)
                self.gram[li][split, gi] += xg.T @ xg
            self.sxy[li][split] += yv.T @ x
            self.sxx1[li] += (x[:-1] * x[1:]).sum(axis=0)

    # -- (de)serialisation as flat arrays (for the resumable state file) ----------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}n": self.n, f"{prefix}sy": self.sy, f"{prefix}syy": self.syy, f"{prefix}ny": self.ny,
               f"{prefix}n1": self.n1, f"{prefix}ny1": self.ny1, f"{prefix}syy1": self.syy1,
               f"{prefix}sy1a": self.sy1a, f"{prefix}sy1b": self.sy1b}
        for li in range(len(self.layer_dims)):
            out[f"{prefix}sx{li}"] = self.sx[li]
            out[f"{prefix}gram{li}"] = self.gram[li]
            out[f"{prefix}sxy{li}"] = self.sxy[li]
            out[f"{prefix}sxx1{li}"] = self.sxx1[li]
        return out

    def load(self, arrays: Any, prefix: str) -> None:
        for name in ("n", "sy", "syy", "ny", "n1", "ny1", "syy1", "sy1a", "sy1b"):
            setattr(self, name, np.array(arrays[f"{prefix}{name}"], dtype=np.float64))
        for li in range(len(self.layer_dims)):
            self.sx[li] = np.array(arrays[f"{prefix}sx{li}"], dtype=np.float64)
            self.gram[li] = np.array(arrays[f"{prefix}gram{li}"], dtype=np.float64)
            self.sxy[li] = np.array(arrays[f"{prefix}sxy{li}"], dtype=np.float64)
            self.sxx1[li] = np.array(arrays[f"{prefix}sxx1{li}"], dtype=np.float64)

    # -- per-unit moments over both parts ----------------------------------------------------------
    def unit_moments(self, li: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(n (K,), sum x (K, U), sum x^2 (K, U))`` over train + test, each descriptor with its mask group."""
        gi = np.array([self.group_index(k) for k in range(len(self.groups))])
        n = self.n.sum(axis=0)[gi]
        sx = self.sx[li].sum(axis=0)[gi]
        sxx = np.stack([np.diagonal(self.gram[li].sum(axis=0)[g]) for g in gi])
        return n, sx, sxx


def pearson(sums: Sums, li: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's r ``(K, U)`` of layer ``li`` and the frame count per descriptor ``(K,)``.

    From the raw sums: ``cov = Sxy - Sx Sy / n``, ``var = Sxx - Sx^2 / n``; a constant unit or
    descriptor (variance 0) gets r = 0."""
    n, sx, sxx = sums.unit_moments(li)
    sy, syy = sums.sy.sum(axis=0), sums.syy.sum(axis=0)
    sxy = sums.sxy[li].sum(axis=0)
    nn = np.maximum(n, 1.0)[:, None]
    cov = sxy - sx * sy[:, None] / nn
    vx = np.maximum(sxx - sx * sx / nn, 0.0)
    vy = np.maximum(syy - sy * sy / nn[:, 0], 0.0)[:, None]
    den = np.sqrt(vx * vy)
    r = np.zeros_like(cov)
    np.divide(cov, den, out=r, where=den > 1e-300)
    return np.clip(r, -1.0, 1.0), n


def lag1_autocorrelation(sums: Sums, li: int) -> tuple[np.ndarray, np.ndarray]:
    """Lag-1 autocorrelation of every unit of layer ``li`` ``(U,)`` (over all frames) and of every
    descriptor ``(K,)`` (over consecutive valid frames); within items only."""
    gi_all = sums.group_names.index("all") if "all" in sums.group_names else 0
    n = max(float(sums.n.sum(axis=0)[gi_all]), 1.0)
    mx = sums.sx[li].sum(axis=0)[gi_all] / n
    vx = np.diagonal(sums.gram[li].sum(axis=0)[gi_all]) / n - mx * mx
    n1 = max(float(sums.n1[0]), 1.0)
    rho_x = np.zeros_like(vx)
    np.divide(sums.sxx1[li] / n1 - mx * mx, vx, out=rho_x, where=vx > 1e-300)
    ny1 = np.maximum(sums.ny1, 1.0)
    ma, mb = sums.sy1a / ny1, sums.sy1b / ny1
    ny = np.maximum(sums.ny.sum(axis=0), 1.0)
    my = sums.sy.sum(axis=0) / ny
    vy = sums.syy.sum(axis=0) / ny - my * my
    rho_y = np.zeros_like(vy)
    np.divide(sums.syy1 / ny1 - ma * mb, vy, out=rho_y, where=vy > 1e-300)
    return np.clip(rho_x, -0.999, 0.999), np.clip(rho_y, -0.999, 0.999)


def effective_n(n: np.ndarray, rho_x: np.ndarray, rho_y: np.ndarray) -> np.ndarray:
    """Bartlett's effective sample size for the correlation of two AR(1) series, ``(K, U)``:
    ``n (1 - rho_x rho_y) / (1 + rho_x rho_y)``, within ``[MIN_N_EFF, n]``."""
    prod = rho_y[:, None] * rho_x[None, :]
    n_eff = n[:, None] * (1.0 - prod) / (1.0 + prod)
    return np.clip(n_eff, MIN_N_EFF, np.maximum(n[:, None], MIN_N_EFF))


def fisher_bound(r: np.ndarray, n_eff: np.ndarray, *, m: int, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided ``1 - alpha`` Fisher-z interval of r, Bonferroni-corrected over ``m`` tests.

    Returns ``(low, high, abs_lower)``: ``abs_lower`` is the lower bound on ``|r|`` (0 when the
    interval contains 0), so ``abs_lower > 0.5`` means "|r| > 0.5 with 95 % confidence, corrected"."""
    crit = float(sstats.norm.ppf(1.0 - alpha / (2.0 * max(int(m), 1))))
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    se = 1.0 / np.sqrt(np.maximum(n_eff, MIN_N_EFF) - 3.0)
    lo, hi = np.tanh(z - crit * se), np.tanh(z + crit * se)
    abs_lower = np.where(lo > 0, lo, np.where(hi < 0, -hi, 0.0))
    return lo, hi, abs_lower


# ---------------------------------------------------------------------------------------------
# the reservoir sample and Spearman


class Reservoir:
    """Bottom-``k`` sample of frames by key (module docstring): keys, descriptors, validity, and
    per model the states of every layer (float32)."""

    def __init__(self, k: int, n_channels: int, model_dims: dict[str, Sequence[int]]) -> None:
        self.k = int(k)
        self.keys = np.zeros(0)
        self.y = np.zeros((0, n_channels))
        self.valid = np.zeros((0, n_channels), dtype=bool)
        self.states = {m: [np.zeros((0, int(d)), dtype=np.float32) for d in dims] for m, dims in model_dims.items()}

    @property
    def threshold(self) -> float:
        """Frames with a key at or above this can never enter the sample."""
        return float(np.max(self.keys)) if self.keys.size >= self.k else np.inf

    def add(self, keys: np.ndarray, y: np.ndarray, valid: np.ndarray, states: dict[str, Sequence[np.ndarray]]) -> None:
        take = np.flatnonzero(keys < self.threshold)
        if take.size == 0:
            return
        keys = np.concatenate([self.keys, keys[take]])
        order = np.argsort(keys, kind="stable")[: self.k]
        self.keys = keys[order]
        self.y = np.concatenate([self.y, np.asarray(y, dtype=np.float64)[take]])[order]
        self.valid = np.concatenate([self.valid, np.asarray(valid, dtype=bool)[take]])[order]
        for m, layers in states.items():
            self.states[m] = [np.concatenate([old, np.asarray(h, dtype=np.float32)[take]])[order]
                              for old, h in zip(self.states[m], layers)]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"res_keys": self.keys, "res_y": self.y, "res_valid": self.valid}
        for m, layers in self.states.items():
            for li, h in enumerate(layers):
                out[f"res_{m}_{li}"] = h
        return out

    def load(self, arrays: Any) -> None:
        self.keys = np.array(arrays["res_keys"], dtype=np.float64)
        self.y = np.array(arrays["res_y"], dtype=np.float64)
        self.valid = np.array(arrays["res_valid"], dtype=bool)
        for m, layers in self.states.items():
            self.states[m] = [np.array(arrays[f"res_{m}_{li}"], dtype=np.float32) for li in range(len(layers))]


def spearman(h: np.ndarray, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Spearman's rho ``(K, U)`` of units ``h`` ``(m, U)`` with descriptors ``y`` ``(m, K)``, each
    descriptor over its valid rows: Pearson's r of average ranks (ties share their mean rank)."""
    k, u = y.shape[1], h.shape[1]
    out = np.zeros((k, u))
    cache: dict[bytes, np.ndarray] = {}
    for j in range(k):
        rows = valid[:, j]
        if rows.sum() < 3:
            continue
        key = np.packbits(rows).tobytes()
        if key not in cache:
            cache[key] = _zscore(sstats.rankdata(h[rows], axis=0))
        rh = cache[key]
        ry = _zscore(sstats.rankdata(y[rows, j])[:, None])
        out[j] = (rh * ry).mean(axis=0)
    return np.clip(out, -1.0, 1.0)


def _zscore(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    sd = a.std(axis=0)
    return np.where(sd > 0, (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# linear probe from sums


@dataclass
class ProbeResult:
    r2_test: float | None  # R^2 on the test part (None: no test frames, or no variance)
    r2_train: float | None  # in-sample R^2 of the chosen penalty
    alpha: float | None  # chosen penalty / mean eigenvalue
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return {"r2_test": self.r2_test, "r2_train": self.r2_train, "alpha": self.alpha,
                "n_train": self.n_train, "n_test": self.n_test}


def ridge_probe(sums: Sums, li: int, *, alphas: Sequence[float] = RIDGE_ALPHAS,
                eig_cache: dict[Any, Any] | None = None) -> list[ProbeResult]:
    """Ridge regression from every unit of layer ``li`` to each descriptor (one result per channel).

    Train sums -> centred Gram ``C``, units standardised, eigen-decomposition ``C = V E V^T``;
    for each penalty ``lam = alpha * mean(E)`` the weights are ``V (E + lam)^-1 V^T c`` and the GCV
    score ``n RSS / (n - df)^2`` (``df = sum E / (E + lam)``) picks ``alpha``. The test R^2 is
    ``1 - SSE / SST`` with ``SSE`` expanded in the test sums (the train mean and weights applied)."""
    out = []
    cache = eig_cache if eig_cache is not None else {}
    for k in range(len(sums.groups)):
        gi = sums.group_index(k)
        n_tr, n_te = float(sums.n[0, gi]), float(sums.n[1, gi])
        if n_tr < 3 or n_te < 2:
            out.append(ProbeResult(None, None, None, int(n_tr), int(n_te)))
            continue
        if (li, gi) not in cache:
            sx, g = sums.sx[li][0, gi], sums.gram[li][0, gi]
            mu = sx / n_tr
            c = g - np.outer(sx, mu)
            d = np.sqrt(np.maximum(np.diagonal(c), 0.0) / n_tr)
            d = np.where(d > 1e-12, d, np.inf)  # constant units get weight 0
            cs = c / np.outer(d, d)
            e, v = np.linalg.eigh((cs + cs.T) / 2)
            cache[(li, gi)] = (mu, d, cs, np.maximum(e, 0.0), v)
        mu, d, cs, e, v = cache[(li, gi)]
        sy, syy = sums.sy[0, k], sums.syy[0, k]
        ybar = sy / n_tr
        cxy = (sums.sxy[li][0, k] - mu * sy) / d
        yy = syy - sy * ybar
        if yy <= 1e-300:
            out.append(ProbeResult(None, None, None, int(n_tr), int(n_te)))
            continue
        proj = v.T @ cxy
        mean_e = max(float(e.mean()), 1e-300)
        best = None
        for a in alphas:
            lam = a * mean_e
            coef = proj / (e + lam)
            beta = v @ coef
            rss = yy - 2 * beta @ cxy + beta @ (cs @ beta)
            df = float((e / (e + lam)).sum())
            if n_tr - df <= 0:
                continue
            gcv = n_tr * rss / (n_tr - df) ** 2
            if best is None or gcv < best[0]:
                best = (gcv, a, beta, rss)
        if best is None:
            out.append(ProbeResult(None, None, None, int(n_tr), int(n_te)))
            continue
        _, a, beta, rss = best
        w = beta / d
        out.append(ProbeResult(_test_r2(sums, li, k, gi, w, mu, ybar), float(1 - rss / yy), float(a), int(n_tr),
                               int(n_te)))
    return out


def _test_r2(sums: Sums, li: int, k: int, gi: int, w: np.ndarray, mu: np.ndarray, ybar: float) -> float | None:
    n = float(sums.n[1, gi])
    sx, g = sums.sx[li][1, gi], sums.gram[li][1, gi]
    sy, syy, sxy = sums.sy[1, k], sums.syy[1, k], sums.sxy[li][1, k]
    sst = syy - sy * sy / n
    if sst <= 1e-300:
        return None
    yy = syy - 2 * ybar * sy + n * ybar * ybar
    yx = sxy - mu * sy - ybar * sx + n * ybar * mu
    gw = g @ w
    xx = w @ gw - 2 * (mu @ w) * (sx @ w) + n * (mu @ w) ** 2
    sse = yy - 2 * (yx @ w) + xx
    return float(1.0 - sse / sst)
