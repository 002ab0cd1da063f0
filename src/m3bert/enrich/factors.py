"""Label factors (Kim et al. 2020, sec. 2.3): every learning source becomes a distribution ``z_t``.

"In most cases, we apply probabilistic latent semantic analysis (pLSA), which extracts latent
factors as a multinomial distribution of latent topics. For situations in which learning labels
are a scalar, non-binary value (BPM and release year), we applied a Gaussian Mixture Model (GMM) to
transform each value into a categorical distribution of Gaussian components ... we used a fixed
single value k = 50 for the number of factors (pLSA) and the number of Gaussians (GMM)."
Training then minimises KL(z_t || softmax(f_t(X))) (:func:`m3bert.enrich.heads.distribution_loss`).

By the label type of the source's task (any registered task can be a source):

* ``multiclass`` -> the one-hot vector of the class: already a distribution (``k = n_classes``);
* ``multilabel`` (tags, bags of words; known entries only where a ``target_mask`` is given) ->
  pLSA topic mixture ``P(z|d)``, written against scikit-learn's ``NMF(beta_loss=
  "kullback-leibler", solver="mu")``: KL-NMF and pLSA share their fixed points, ``X ~ W H`` with
  ``P(w|z) = H`` row-normalised and ``P(z|d) ~ W diag(H 1)`` row-normalised (Gaussier & Goutte
  2005; ``tests/test_kim_factors.py`` checks it against a direct EM pLSA). A vocabulary of at most
  ``k`` words needs no topics: pLSA's optimum is then one topic per word, ``P(z|d)`` the
  normalised tag vector, which is what we use;
* ``regression`` with one or two targets (tempo, year, valence/arousal) -> posteriors of a
  ``k``-component ``GaussianMixture`` (``k`` at most the number of distinct training values);
  with more, non-negative targets (a listening profile: play counts over users, the paper's
  *taste* source, e.g. the ``taste-profile`` task) -> pLSA as for tags.

Every factor model is fitted on the *training* split only; validation and test rows are folded
in (NMF ``transform`` with ``H`` fixed, GMM ``predict_proba``). A sample whose row has no
positive entry (no tag known to be on) has no distribution and loses that source's label.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from m3bert.core.errors import DataError

DEFAULT_K = 50  # the paper's number of pLSA topics / GMM components
METHODS = ("onehot", "plsa", "normalised", "gmm")


def nmf_to_plsa(W: np.ndarray, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL-NMF factors ``X ~ W H`` -> pLSA's ``(P(z|d) (n_docs, k), P(w|z) (k, n_words))``.

    ``X ~ (W D)(D^-1 H)`` with ``D = diag(H 1)``: the rows of ``D^-1 H`` are ``P(w|z)`` and the rows
    of ``W D`` (whose sums are the documents' lengths at a KL-NMF fixed point), normalised, ``P(z|d)``.
    A document whose row is all zero gets the uniform distribution.
    """
    W, H = np.asarray(W, np.float64), np.asarray(H, np.float64)
    s = H.sum(axis=1)
    s_safe = np.where(s > 0, s, 1.0)
    p_w_z = H / s_safe[:, None]
    a = W * s[None, :]
    tot = a.sum(axis=1, keepdims=True)
    p_z_d = np.where(tot > 0, a / np.where(tot > 0, tot, 1.0), 1.0 / H.shape[0])
    return p_z_d, p_w_z


def make_nmf(k: int, *, seed: int, max_iter: int = 400, tol: float = 1e-5) -> Any:
    """scikit-learn's KL-NMF with multiplicative updates (pLSA's EM up to normalisation)."""
    from sklearn.decomposition import NMF  # heavy: scikit-learn's decomposition module, only for pLSA sources

    return NMF(n_components=int(k), beta_loss="kullback-leibler", solver="mu", init="nndsvda", max_iter=int(max_iter),
               tol=float(tol), random_state=int(seed))


@dataclass
class Factorizer:
    """A fitted factor model of one source: ``transform(targets) -> (z (n, k), has (n,))``."""

    task: str  # source task name
    method: str  # one of METHODS
    k: int  # factors (output width)
    model: Any = None  # fitted NMF / GaussianMixture (not serialised)
    info: dict[str, Any] = field(default_factory=dict)  # JSON description (fit stats, top words, means)

    def transform(self, targets: np.ndarray, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(targets)
        if self.method == "onehot":
            z = np.zeros((y.shape[0], self.k), np.float32)
            z[np.arange(y.shape[0]), y.astype(np.int64)] = 1.0
            return z, np.ones(y.shape[0], bool)
        if self.method in ("plsa", "normalised"):
            counts = _counts(y, masks)
            has = counts.sum(axis=1) > 0
            if self.method == "normalised":
                z = counts / np.where(has, counts.sum(axis=1), 1.0)[:, None]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence warnings of the fold-in
                    W = self.model.transform(counts)
                z, _ = nmf_to_plsa(W, self.model.components_)
            return z.astype(np.float32), has
        z = self.model.predict_proba(_as_matrix(y))
        return z.astype(np.float32), np.all(np.isfinite(_as_matrix(y)), axis=1)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.method, "k": self.k, **self.info}


def _counts(y: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    c = np.asarray(y, np.float64)
    if masks is not None:
        c = c * np.asarray(masks, np.float64)
    if (c < 0).any():
        raise DataError("pLSA needs non-negative counts; got negative label values")
    return c


def _as_matrix(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y[:, None] if y.ndim == 1 else y


def fit_factorizer(task: str, label_type: str, classes: Sequence[str], train_targets: np.ndarray, *,
                   k: int = DEFAULT_K, seed: int = 0, train_masks: np.ndarray | None = None,
                   max_iter: int = 400) -> Factorizer:
    """Fit the factor model of one source on its training targets (module doc)."""
    n = len(train_targets)
    if n == 0:
        raise DataError(f"source {task}: no training labels to fit its label factors on")
    if label_type == "multiclass":
        return Factorizer(task, "onehot", len(classes), info={"classes": list(classes)})
    y = np.asarray(train_targets)
    counts_like = label_type == "regression" and y.ndim == 2 and y.shape[1] > 2 and bool((y >= 0).all())
    if label_type == "multilabel" or counts_like:
        counts = _counts(train_targets, train_masks)
        counts = counts[counts.sum(axis=1) > 0]
        if counts.shape[0] == 0:
            raise DataError(f"source {task}: no training row has a positive label; pLSA has nothing to fit")
        if counts_like:
            label_type = "multilabel"  # a count vector over users / words: transform() treats it as tags
        if len(classes) <= k:
            return Factorizer(task, "normalised", len(classes),
                              info={"classes": list(classes), "note": f"vocabulary of {len(classes)} <= k={k}: "
                                    "pLSA's optimum is one topic per word, z = the normalised tag vector"})
        nmf = make_nmf(k, seed=seed, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on small sets
            nmf.fit(counts)
        _, p_w_z = nmf_to_plsa(np.ones((1, k)), nmf.components_)
        top = [[classes[j] for j in np.argsort(-p_w_z[z])[:5]] for z in range(k)]
        return Factorizer(task, "plsa", int(k), nmf, info={"n_iter": int(nmf.n_iter_),
                          "kl_divergence": float(nmf.reconstruction_err_), "top_words": top})
    if label_type == "regression":
        from sklearn.mixture import GaussianMixture  # heavy: scikit-learn's mixture module, only for scalar sources

        x = _as_matrix(train_targets)
        x = x[np.all(np.isfinite(x), axis=1)]
        n_distinct = len(np.unique(x, axis=0))
        k_eff = int(max(1, min(k, n_distinct)))
        gmm = GaussianMixture(n_components=k_eff, covariance_type="full", random_state=int(seed), max_iter=max_iter,
                              reg_covar=1e-6 * max(1.0, float(np.var(x))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gmm.fit(x)
        order = np.argsort(gmm.means_[:, 0])
        return Factorizer(task, "gmm", k_eff, gmm, info={"n_distinct_train_values": int(n_distinct),
                          "converged": bool(gmm.converged_),
                          "means": [[round(float(v), 4) for v in gmm.means_[i]] for i in order]})
    raise DataError(f"source {task}: label_type {label_type!r} has no label-factor method; expected multiclass, "
                    "multilabel or regression")


def factor_names(f: Factorizer) -> list[str]:
    """Output names of a factor model (the head's classes)."""
    if f.method in ("onehot", "normalised"):
        return list(f.info["classes"])
    prefix = "topic" if f.method == "plsa" else "gmm"
    return [f"{prefix}{i:02d}" for i in range(f.k)]
