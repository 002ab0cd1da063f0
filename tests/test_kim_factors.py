"""Label factors and the loss of Kim et al. (2020), each against a reference: pLSA written against
scikit-learn's KL-NMF vs a direct EM pLSA, GMM posteriors vs Bayes' rule, the KL loss vs
``torch.nn.functional.kl_div`` / ``scipy.stats.entropy``, and Algorithm 1's batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy, multivariate_normal

from m3bert.core.errors import DataError
from m3bert.enrich.factors import factor_names, fit_factorizer, make_nmf, nmf_to_plsa
from m3bert.enrich.heads import distribution_loss, mean_kl
from m3bert.enrich.multisource import steps_per_epoch
from m3bert.enrich.multisource import load_multisource_config
from m3bert.enrich.sampling import epoch_batches


def em_plsa(counts: np.ndarray, k: int, *, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hofmann's asymmetric pLSA by EM, written directly: returns (P(z|d), P(w|z))."""
    rng = np.random.default_rng(seed)
    n_d, n_w = counts.shape
    p_z_d = rng.dirichlet(np.ones(k), size=n_d)
    p_w_z = rng.dirichlet(np.ones(n_w), size=k)
    for _ in range(iters):
        joint = p_z_d[:, :, None] * p_w_z[None, :, :]  # (d, z, w)
        post = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)  # P(z|d,w)
        nz = counts[:, None, :] * post
        p_w_z = nz.sum(axis=0)
        p_w_z /= p_w_z.sum(axis=1, keepdims=True)
        p_z_d = nz.sum(axis=2)
        p_z_d /= p_z_d.sum(axis=1, keepdims=True)
    return p_z_d, p_w_z


def log_likelihood(counts, p_z_d, p_w_z) -> float:
    return float((counts * np.log(np.maximum(p_z_d @ p_w_z, 1e-300))).sum())


def separable_counts(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected counts of 3 topics over 9 words with disjoint supports (a unique optimum up to order)."""
    rng = np.random.default_rng(seed)
    p_w_z = np.zeros((3, 9))
    for z in range(3):
        p_w_z[z, 3 * z:3 * z + 3] = [0.5, 0.3, 0.2]
    p_w_z /= p_w_z.sum(1, keepdims=True)
    p_z_d = rng.dirichlet(np.full(3, 0.5), size=40)
    counts = 1000.0 * (p_z_d @ p_w_z)  # exact low-rank expected counts
    return counts, p_z_d, p_w_z


def match_topics(a: np.ndarray, b: np.ndarray) -> tuple[int, ...]:
    """The permutation of b's topics closest to a's (rows)."""
    return min(itertools.permutations(range(a.shape[0])), key=lambda p: np.abs(a - b[list(p)]).sum())


def test_plsa_from_kl_nmf_equals_em_plsa_up_to_normalisation():
    counts, true_zd, true_wz = separable_counts()
    nmf = make_nmf(3, seed=0, max_iter=3000, tol=1e-10)
    W = nmf.fit_transform(counts)
    H = nmf.components_
    p_z_d, p_w_z = nmf_to_plsa(W, H)
    em_zd, em_wz = em_plsa(counts, 3, iters=3000, seed=1)
    # the normalisation is exact: P(z|d) P(w|z) is W H with its rows normalised
    WH = W @ H
    assert np.allclose(p_z_d @ p_w_z, WH / WH.sum(1, keepdims=True), atol=1e-10)
    # at a KL-NMF fixed point the row sums (document lengths) are preserved
    assert np.allclose(WH.sum(1), counts.sum(1), rtol=1e-3)
    # both reach the same likelihood, that of the generating model
    ll_true = log_likelihood(counts, true_zd, true_wz)
    assert log_likelihood(counts, p_z_d, p_w_z) == pytest.approx(ll_true, rel=1e-5)
    assert log_likelihood(counts, em_zd, em_wz) == pytest.approx(ll_true, rel=1e-5)
    # and the same factors, up to the order of the topics
    perm = match_topics(em_wz, p_w_z)
    assert np.abs(p_w_z[list(perm)] - em_wz).max() < 0.02
    assert np.abs(p_z_d[:, list(perm)] - em_zd).max() < 0.05
    assert np.abs(p_w_z[list(match_topics(true_wz, p_w_z))] - true_wz).max() < 0.02


def test_plsa_factorizer_folds_new_documents_in_with_h_fixed():
    counts, _, _ = separable_counts(seed=3)
    classes = [f"w{i}" for i in range(9)]
    f = fit_factorizer("tags", "multilabel", classes, counts[:30], k=3, seed=0, max_iter=2000)
    assert f.method == "plsa" and f.k == 3 and factor_names(f) == ["topic00", "topic01", "topic02"]
    z, has = f.transform(counts[30:])
    assert has.all() and np.allclose(z.sum(1), 1, atol=1e-5)
    # the folded-in P(z|d) reproduces the held-out documents' word distributions
    p_w_z = nmf_to_plsa(np.ones((1, 3)), f.model.components_)[1]
    recon = z @ p_w_z
    assert np.abs(recon - counts[30:] / counts[30:].sum(1, keepdims=True)).max() < 0.02
    zero = f.transform(np.zeros((1, 9)))[1]
    assert not zero[0]  # a document with no words has no distribution (the label is dropped)


def test_small_vocabularies_and_classes_need_no_topics():
    f = fit_factorizer("parts", "multilabel", ["a", "b", "c"], np.array([[1, 0, 1], [0, 1, 0]], np.float32), k=50)
    z, has = f.transform(np.array([[1, 1, 0], [0, 0, 0]], np.float32), masks=np.array([[1, 0, 1], [1, 1, 1]], np.float32))
    assert f.method == "normalised" and f.k == 3 and z[0].tolist() == [1.0, 0.0, 0.0] and has.tolist() == [True, False]
    g = fit_factorizer("genre", "multiclass", ["x", "y", "z"], np.array([0, 2]), k=50)
    z, has = g.transform(np.array([2, 1]))
    assert g.method == "onehot" and z.tolist() == [[0, 0, 1], [0, 1, 0]] and has.all()
    with pytest.raises(DataError, match="no training row has a positive label"):
        fit_factorizer("t", "multilabel", [f"w{i}" for i in range(60)], np.zeros((4, 60)), k=50)


def test_gmm_posteriors_are_bayes_rule_and_k_is_capped():
    rng = np.random.default_rng(0)
    bpm = np.concatenate([rng.normal(90, 3, 200), rng.normal(120, 4, 200), rng.normal(170, 5, 100)])[:, None]
    f = fit_factorizer("bpm", "regression", ["bpm"], bpm, k=3, seed=0)
    g = f.model
    x = np.array([[85.0], [121.0], [140.0], [175.0]])
    z, has = f.transform(x)
    dens = np.stack([g.weights_[j] * multivariate_normal(g.means_[j], g.covariances_[j]).pdf(x[:, 0])
                     for j in range(3)], axis=1)
    assert has.all() and np.allclose(z, dens / dens.sum(1, keepdims=True), atol=1e-5)
    assert sorted(round(m) for m in np.ravel(g.means_)) == pytest.approx([90, 120, 170], abs=2)
    few = fit_factorizer("year", "regression", ["year"], np.array([[1990.0], [2000.0], [2000.0], [2010.0]]), k=50)
    assert few.k == 3 and len(factor_names(few)) == 3  # at most the number of distinct training values


def test_kl_loss_matches_references_and_is_cross_entropy_for_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    z = torch.softmax(torch.randn(6, 5) * 2, dim=-1)
    z[0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])  # zeros: 0 log 0 = 0
    loss = distribution_loss(logits, z)
    ref = F.kl_div(F.log_softmax(logits, dim=-1), z, reduction="batchmean")
    assert torch.allclose(loss, ref, atol=1e-6)
    p = torch.softmax(logits, dim=-1).detach().numpy()
    assert float(loss.detach()) == pytest.approx(np.mean([entropy(z[i].numpy(), p[i]) for i in range(6)]), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(mean_kl(z.numpy(), p), abs=1e-5)
    loss.backward()
    assert torch.allclose(logits.grad, (torch.softmax(logits, -1) - z).detach() / 6, atol=1e-6)
    onehot = F.one_hot(torch.tensor([1, 3]), 5).float()
    assert torch.allclose(distribution_loss(logits[:2], onehot), F.cross_entropy(logits[:2], torch.tensor([1, 3])))


def test_algorithm1_batches_one_source_each_and_replays():
    pools = {"bpm": np.arange(0, 10), "tag": np.arange(10, 13), "year": np.arange(20, 40)}
    draws, tasks = epoch_batches(pools, 60, 4, seed=3, epoch=2)
    again, tasks2 = epoch_batches(pools, 60, 4, seed=3, epoch=2)
    assert np.array_equal(draws, again) and tasks == tasks2  # a pure function of (seed, epoch): exact resume
    assert not np.array_equal(draws, epoch_batches(pools, 60, 4, seed=3, epoch=3)[0])
    for b, t in enumerate(tasks):
        assert set(draws[4 * b:4 * b + 4]) <= set(pools[t].tolist())
    counts = {t: tasks.count(t) for t in pools}
    assert all(10 <= c <= 30 for c in counts.values())  # uniform over sources, not over samples
    year = np.concatenate([draws[4 * b:4 * b + 4] for b, t in enumerate(tasks) if t == "year"])
    assert len(set(year[:20].tolist())) == min(20, len(year))  # a source's samples are cycled before repeats
    cfg = load_multisource_config(None, {"batch_size": 4})
    assert cfg.sampling == "algorithm1" and cfg.optim.lr == 2.5e-4 and cfg.schedule.name == "constant"
    assert steps_per_epoch(cfg, 33, 3) == 9 * 3  # L = l x m


def test_listening_profiles_are_count_vectors_for_plsa():
    """The paper's *taste* source: play counts over users (a regression task of many targets) -> pLSA."""
    counts, _, _ = separable_counts(seed=5)
    wide = np.tile(counts, (1, 7))  # 63 "users" > k
    f = fit_factorizer("taste-profile", "regression", [f"u{i}" for i in range(63)], wide[:30], k=3, seed=0)
    assert f.method == "plsa" and f.k == 3
    z, has = f.transform(wide[30:])
    assert has.all() and np.allclose(z.sum(1), 1, atol=1e-5)
    assert fit_factorizer("va", "regression", ["v", "a"], np.random.default_rng(0).random((40, 2)), k=4).method == "gmm"
