"""Kim et al. (2020)'s recommendation target: the ALS of Eq. 7 against dense closed forms, nDCG
against scikit-learn, cold start from content, and the Taste Profile loader on fixtures in the
published layout (``train_triplets.txt``, ``unique_tracks.txt``, previews named by MSD id)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import ndcg_score

from m3bert.core.errors import DataError
from m3bert.evaluate.recommendation import (
    WMFConfig,
    cold_start_ndcg,
    evaluate_recommendation,
    item_matrix,
    objective,
    ridge_map,
    wmf_als,
)
from m3bert.evaluate.representations import Representation
from m3bert.tasks.datasets.taste_profile import core_filter, ndcg_at_k, ndcg_metric
from m3bert.tasks.registry import get_task, load_task


def toy_interactions(n_users=30, n_items=60, r=3, seed=0):
    """Counts from a low-rank taste model whose item side is a known function of item features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_items, 6))
    A = rng.standard_normal((6, r))
    Uu = rng.standard_normal((n_users, r))
    affinity = Uu @ (X @ A).T
    R = np.where(affinity > np.quantile(affinity, 0.8, axis=1, keepdims=True),
                 rng.integers(1, 20, affinity.shape), 0).astype(np.float64)
    return R, X


def test_als_updates_are_the_dense_closed_forms():
    R, X = toy_interactions()
    cfg = WMFConfig(factors=4, iterations=1, lambda_u=0.5, lambda_v=0.3, lambda_w=0.2, alpha=0.7)
    U, V, W, _ = wmf_als(R, cfg, X=X, seed=3)
    # reproduce the sweep densely: same init, then each row's normal equations with diag(C)
    rng = np.random.default_rng(3)
    rng.standard_normal((30, 4))  # the initial U (the first sweep overwrites it) advances the stream
    V0 = 0.01 * rng.standard_normal((60, 4))
    P, C = (R > 0).astype(float), 1 + cfg.alpha * R
    U_ref = np.stack([np.linalg.solve(V0.T @ np.diag(C[u]) @ V0 + cfg.lambda_u * np.eye(4), V0.T @ (C[u] * P[u]))
                      for u in range(30)])
    prior = X @ np.zeros((6, 4))
    V_ref = np.stack([np.linalg.solve(U_ref.T @ np.diag(C[:, i]) @ U_ref + cfg.lambda_v * np.eye(4),
                                      U_ref.T @ (C[:, i] * P[:, i]) + cfg.lambda_v * prior[i]) for i in range(60)])
    W_ref = np.linalg.solve(cfg.lambda_v * X.T @ X + cfg.lambda_w * np.eye(6), cfg.lambda_v * X.T @ V_ref)
    assert np.allclose(U, U_ref, atol=1e-10) and np.allclose(V, V_ref, atol=1e-10) and np.allclose(W, W_ref, atol=1e-10)
    assert np.allclose(ridge_map(X, V, 0.4), np.linalg.lstsq(np.vstack([X, np.sqrt(0.4) * np.eye(6)]),
                                                             np.vstack([V, np.zeros((6, 4))]), rcond=None)[0])


def _gradients(R, U, V, W, X, cfg):
    """Dense gradients of Eq. 7 with respect to U, V and W."""
    P, C = (R > 0).astype(float), 1 + cfg.alpha * R
    E = C * (U @ V.T - P)
    return (2 * E @ V + 2 * cfg.lambda_u * U, 2 * E.T @ U + 2 * cfg.lambda_v * (V - X @ W),
            -2 * cfg.lambda_v * X.T @ (V - X @ W) + 2 * cfg.lambda_w * W)


def test_als_descends_towards_a_stationary_point_of_eq7():
    R, X = toy_interactions(seed=1)
    cfg = WMFConfig(factors=3, iterations=300, lambda_u=0.1, lambda_v=0.1, lambda_w=0.1, alpha=0.5)
    U, V, W, hist = wmf_als(R, cfg, X=X, seed=0, track=True)
    assert all(b <= a + 1e-9 * abs(a) for a, b in zip(hist, hist[1:]))  # ALS never increases Eq. 7
    assert hist[-1] == pytest.approx(objective(R, U, V, cfg, X, W))
    gU, gV, gW = _gradients(R, U, V, W, X, cfg)
    assert np.abs(gW).max() < 1e-9  # the block solved last is exactly stationary
    short = wmf_als(R, WMFConfig(**{**cfg.__dict__, "iterations": 30}), X=X, seed=0)
    g30 = _gradients(R, *short[:3], X, cfg)
    assert np.abs(gU).max() < 0.5 * np.abs(g30[0]).max() and np.abs(gV).max() < 0.5 * np.abs(g30[1]).max()


def test_ndcg_matches_scikit_learn():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 40))
    rel = rng.random((7, 40)) < 0.15
    rel[0] = False
    ours = ndcg_at_k(scores, rel, 10)
    ref = [ndcg_score(rel[u:u + 1].astype(float), scores[u:u + 1], k=10) for u in range(1, 7)]
    assert np.isnan(ours[0]) and np.allclose(ours[1:], ref)
    assert ndcg_at_k(np.array([[3.0, 2.0, 1.0]]), np.array([[False, True, False]]), 500)[0] == pytest.approx(1 / np.log2(3))
    # the registered bench metric: songs x users
    assert ndcg_metric(rel.T.astype(float), scores.T) == pytest.approx(float(np.nanmean(ndcg_at_k(scores, rel))))


def test_cold_start_ranks_unseen_items_from_content():
    R, X = toy_interactions(n_users=40, n_items=120, seed=2)
    test = np.zeros(120, bool)
    test[::5] = True
    cfg = WMFConfig(factors=10, iterations=8)
    good = cold_start_ndcg(X, R, test, cfg)
    noise = cold_start_ndcg(np.random.default_rng(9).standard_normal(X.shape), R, test, cfg)
    ridge = cold_start_ndcg(X, R, test, WMFConfig(factors=10, iterations=8, mapping="ridge"))
    assert good["n_test_items"] == 24 and good["ndcg"] > noise["ndcg"] + 0.1 and ridge["ndcg"] > noise["ndcg"] + 0.1
    with pytest.raises(DataError, match="non-finite"):
        cold_start_ndcg(np.full(X.shape, np.nan), R, test, cfg)


# --------------------------------------------------------------------------- the Taste Profile layout

TRACKS = ["TRAAAAW128F429D538", "TRAAABD128F429CF47", "TRAAADZ128F9348C2E", "TRAAAEF128F4273421",
          "TRAAAFD128F92F423A", "TRAAAMO128F1481E7F", "TRAAAMQ128F1460CD3", "TRAAAPK128E0786D96"]


def song_of(i: int) -> str:
    return f"SOAAA{i:02d}X12AB0183{i:03d}"[:18]


@pytest.fixture(scope="module")
def taste_root(tmp_path_factory):
    """8 songs (7 with previews: 6 named by track id in the MSD A/B/C tree, 1 by song id), 12 users."""
    root = tmp_path_factory.mktemp("taste")
    with open(root / "unique_tracks.txt", "w") as fh:
        for i, t in enumerate(TRACKS):
            fh.write(f"{t}<SEP>{song_of(i)}<SEP>Artist {i}<SEP>Title {i}\n")
    sr = 22050
    for i, t in enumerate(TRACKS[:6]):
        d = root / "audio" / t[2] / t[3] / t[4]
        d.mkdir(parents=True, exist_ok=True)
        x = 0.3 * np.sin(2 * np.pi * 110 * (1 + i) * np.arange(sr) / sr)
        sf.write(d / f"{t}.wav", x.astype(np.float32), sr)
    sf.write(root / "audio" / f"{song_of(6)}.wav", np.zeros(sr, np.float32) + 0.01, sr)  # named by song id
    rng = np.random.default_rng(0)
    lines = []
    for u in range(12):
        for i in range(8):
            if u == 11 and i > 1:  # a user with 2 songs: removed by the 5-song filter
                continue
            if rng.random() < 0.85 or i == 7:
                lines.append(f"u{u:03d}\t{song_of(i)}\t{int(rng.integers(1, 9))}")
    (root / "train_triplets.txt").write_text("\n".join(lines) + "\n")
    return root


def test_loader_reads_the_published_layout_and_filters(taste_root):
    data = load_task(f"taste-profile:{taste_root}")
    assert get_task("taste-profile").metrics == ["ndcg"] and data.split_source == "random"
    ids = {c.clip_id for c in data.clips}
    assert song_of(7) not in ids and song_of(6) in ids  # no preview -> out; a song-id file is found
    assert len(ids) == 7 and "u011" not in data.classes  # the user with 2 songs is gone
    R = item_matrix(data)
    assert R.shape == (len(data.classes), 7) and (R > 0).sum(0).min() >= 5 and (R > 0).sum(1).min() >= 5
    assert {c.split for c in data.clips} <= {"train", "valid", "test"}
    tr = next(c for c in data.clips if c.clip_id == song_of(0))
    assert tr.path.name == f"{TRACKS[0]}.wav" and tr.path.parent.name == "A"
    assert core_filter({("a", "x"): 1.0}, min_users=1, min_items=2) == {}


def test_loader_refuses_bad_files(tmp_path, taste_root):
    (tmp_path / "audio").mkdir()
    with pytest.raises(DataError, match="train_triplets.txt not found"):
        load_task(f"taste-profile:{tmp_path}")
    (tmp_path / "train_triplets.txt").write_text("u1\tSOAAA\n")
    with pytest.raises(DataError, match=r"train_triplets.txt:1: expected 'user<TAB>song<TAB>count'"):
        load_task(f"taste-profile:{tmp_path}")
    (tmp_path / "train_triplets.txt").write_text("u1\tSOAAA\t-2\n")
    with pytest.raises(DataError, match="play count '-2'"):
        load_task(f"taste-profile:{tmp_path}")


class ContentRep(Representation):
    """Features = the pitch the fixture encoded in each preview (read back from the file)."""

    name = "content"
    kind = "fake"

    @property
    def cache_key(self) -> str:
        return "content"

    @property
    def layer_names(self) -> list[str]:
        return ["input", "layer1"]

    def embed_clip(self, clip, *, pooling="mean"):
        x, sr = sf.read(clip.path)
        spec = np.abs(np.fft.rfft(x))
        v = np.array([np.argmax(spec) / len(spec), float(np.std(x))], np.float32)
        return np.stack([v, v])


def test_recommendation_runs_on_the_fixture(taste_root):
    data = load_task(f"taste-profile:{taste_root}")
    res = evaluate_recommendation(ContentRep(), data, seeds=[0, 1, 2], cfg=WMFConfig(factors=4, iterations=5))
    assert res["metric"] == "ndcg@500" and len(res["runs"]) == 3
    assert all(0 < r["ndcg"] <= 1 and r["n_test_items"] >= 1 for r in res["runs"])
    assert res["summary"]["n"] == 3 and res["summary"]["ci_low"] is not None
