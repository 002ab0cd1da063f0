"""Probes: the vectorised grid equals plain torch training, learns, is seeded, handles every label type."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.numeric import standardisation
from m3bert.evaluate.probe_grid import STD_FLOOR, ProbeConfig, fit_grid, grid_configs, init_params
from m3bert.evaluate.probes import fit_chance, get_protocol, run_probe
from m3bert.tasks import metrics as M


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def blobs(rng, n=240, n_layers=3, dim=16, n_classes=3, informative=2):
    """Class-separable features in hidden state ``informative`` only."""
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, n_layers, dim)).astype(np.float32)
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32) * 2.0
    x[:, informative] += centers[y]
    return x, y


SMALL = ProbeConfig(hidden=(32,), lrs=(1e-3, 1e-2), max_epochs=25, early_stop_patience=5, lr_plateau_patience=2,
                    batch_size=32, bf16=False)


def test_grid_probe_equals_plain_torch_adam_training(rng):
    """Probe g trained inside the grid == an nn.Sequential + torch.optim.Adam trained alone."""
    x, y = blobs(rng, n=96, dim=8)
    cfg = dataclasses.replace(SMALL, dropout=0.0, max_epochs=4, early_stop_patience=None, lr_plateau_patience=None)
    fit = fit_grid(x, y, label_type="multiclass", n_outputs=3, config=cfg, seed=3)
    g = fit.configs.index((1, 1e-2))
    # replay: same init (from a 1-probe grid of that config), same batches, torch's own modules
    p0 = init_params([(1, 1e-2)], n_layers=3, n_in=8, n_out=3, hidden=(32,), seed=3)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        net[0].weight.copy_(p0["W"][0][0].T)
        net[0].bias.copy_(p0["b"][0][0, 0])
        net[2].weight.copy_(p0["W"][1][0].T)
        net[2].bias.copy_(p0["b"][1][0, 0])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    mu, sd = standardisation(x, rel_min_std=STD_FLOOR)
    xs = torch.from_numpy((x - mu) / sd)[:, 1]
    yt = torch.from_numpy(y)
    order = torch.Generator().manual_seed(3)
    for _ in range(4):
        perm = torch.randperm(len(x), generator=order)
        for s in range(0, len(x), 32):
            idx = perm[s:s + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[idx]), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        ref = torch.softmax(net(xs), -1).numpy()
    got = fit.predict(x)[g]
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_probe_alone_equals_probe_in_grid_with_dropout_and_early_stopping(rng):
    x, y = blobs(rng)
    kw = dict(label_type="multiclass", n_outputs=3, config=SMALL, seed=7, x_valid=x[:60], y_valid=y[:60])
    full = fit_grid(x[60:], y[60:], **kw)
    alone = fit_grid(x[60:], y[60:], configs=[(2, 1e-2)], **kw)
    g = full.configs.index((2, 1e-2))
    assert alone.best_epoch[0] == full.best_epoch[g]
    np.testing.assert_allclose(alone.predict(x)[0], full.predict(x)[g], atol=1e-5)


def test_same_seed_same_result_other_seed_differs(rng):
    x, y = blobs(rng)
    score = lambda t, p, m: M.accuracy(t, p)
    run = lambda seed: run_probe(x[:150], y[:150], x[200:], label_type="multiclass", n_outputs=3, config=SMALL,
                                 seed=seed, score_fn=score, x_valid=x[150:200], y_valid=y[150:200])
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.test_pred, b.test_pred)
    assert a.selected == b.selected
    assert not np.array_equal(a.test_pred, c.test_pred)


def test_marble_grid_learns_and_selects_the_informative_layer(rng):
    x, y = blobs(rng, n=300)
    out = run_probe(x[:180], y[:180], x[240:], label_type="multiclass", n_outputs=3, config=SMALL, seed=0,
                    score_fn=lambda t, p, m: M.accuracy(t, p), x_valid=x[180:240], y_valid=y[180:240])
    assert M.accuracy(y[240:], out.test_pred) > 0.9
    assert out.selected["layer"] in ("2", "weighted")
    assert len(out.grid) == len(grid_configs(3, SMALL)) == 8  # (3 layers + weighted) x 2 lrs
    weighted = [g for g in out.grid if g["layer"] == "weighted"]
    assert weighted and all(g["valid_score"] is not None for g in out.grid)


def test_multilabel_with_mask_and_regression(rng):
    n, dim = 240, 12
    x = rng.normal(size=(n, 2, dim)).astype(np.float32)
    logits = x[:, 1, :3] * 3
    tags = (logits > 0).astype(np.float32)
    mask = (rng.random(tags.shape) > 0.2).astype(np.float32)
    out = run_probe(x[:160], tags[:160], x[200:], label_type="multilabel", n_outputs=3, config=SMALL, seed=0,
                    score_fn=lambda t, p, m: M.roc_auc_macro(t, p, target_mask=m), x_valid=x[160:200],
                    y_valid=tags[160:200], mask_train=mask[:160], mask_valid=mask[160:200])
    assert out.test_pred.shape == (40, 3) and np.all((out.test_pred >= 0) & (out.test_pred <= 1))
    assert M.roc_auc_macro(tags[200:], out.test_pred) > 0.9
    # regression: targets on a large scale come back on that scale
    t = np.stack([x[:, 0, 0] * 50 + 120, -x[:, 0, 1] * 0.1], 1).astype(np.float32)
    out = run_probe(x[:160], t[:160], x[200:], label_type="regression", n_outputs=2, config=SMALL, seed=0,
                    score_fn=lambda a, p, m: M.r2(a, p), x_valid=x[160:200], y_valid=t[160:200])
    assert M.r2(t[200:], out.test_pred) > 0.8
    assert abs(out.test_pred[:, 0].mean() - 120) < 20


def test_kim_protocol_trains_without_validation(rng):
    kim = get_protocol("kim")
    assert kim.probe.hidden == (256, 256) and kim.probe.max_epochs == 200 and kim.pooling == "slices-meanstd"
    cfg = dataclasses.replace(kim.probe, max_epochs=15, bf16=False)
    x, y = blobs(rng, n=120, n_layers=2, informative=1)  # Kim reads the last hidden state
    out = run_probe(x[:90], y[:90], x[90:], label_type="multiclass", n_outputs=3, config=cfg, seed=0,
                    score_fn=None)
    assert out.selected["layer"] == "1" and out.selected["n_epochs"] == 15
    assert M.accuracy(y[90:], out.test_pred) > 0.8


def test_chance_and_bad_inputs(rng):
    y = np.array([0, 0, 0, 1, 2])
    p = fit_chance(y, 4, label_type="multiclass", n_outputs=3)
    assert p.shape == (4, 3) and np.argmax(p[0]) == 0 and p[0, 0] == pytest.approx(0.6)
    t = np.array([[1, 0], [0, 0], [1, 1]], np.float32)
    m = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
    np.testing.assert_allclose(fit_chance(t, 1, label_type="multilabel", n_outputs=2, mask_train=m)[0], [2 / 3, 0.5])
    x, yy = blobs(rng, n=20)
    with pytest.raises(DataError, match="targets"):
        fit_grid(x, yy[:10], label_type="multiclass", n_outputs=3, config=SMALL, seed=0)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fit_grid(bad, yy, label_type="multiclass", n_outputs=3, config=SMALL, seed=0)
    with pytest.raises(ConfigError, match="validation"):
        run_probe(x, yy, x, label_type="multiclass", n_outputs=3, config=SMALL, seed=0, score_fn=None)
    with pytest.raises(ConfigError, match="layers"):
        ProbeConfig(layers="middle")


def test_undefined_validation_metric_falls_back_to_validation_loss(rng):
    x = rng.normal(size=(80, 2, 6)).astype(np.float32)
    tags = (x[:, 1, :2] > 0).astype(np.float32)
    y_valid = np.zeros((20, 2), np.float32)  # no positives: ROC-AUC undefined on validation
    with pytest.warns(UserWarning, match="left out"):
        out = run_probe(x[:60], tags[:60], x[60:], label_type="multilabel", n_outputs=2,
                        config=dataclasses.replace(SMALL, max_epochs=5), seed=0,
                        score_fn=lambda t, p, m: M.roc_auc_macro(t, p), x_valid=x[60:], y_valid=y_valid)
    losses = [g["valid_loss"] for g in out.grid]
    assert out.selected["valid_score"] is None and out.selected["valid_loss"] == min(losses)


def test_weighted_sum_mixes_only_the_given_hidden_states(rng):
    """MARBLE mixes the transformer layers 1..L, not hidden state 0 (the input projection): with
    ``mix_layers`` the learned weights have one entry per mixed layer and hidden state 0 has no
    influence on a weighted-sum probe. Before, the weights had L + 1 entries, state 0 included."""
    x, y = blobs(rng, n=200, n_layers=4, dim=8, informative=2)
    cfg = dataclasses.replace(SMALL, layers="weighted", lrs=(1e-2,))
    assert grid_configs(4, cfg, mix_layers=[1, 2, 3]) == [(-1, 1e-2)]
    out = run_probe(x[:120], y[:120], x[160:], label_type="multiclass", n_outputs=3, config=cfg, seed=0,
                    score_fn=lambda t, p, m: M.accuracy(t, p), x_valid=x[120:160], y_valid=y[120:160],
                    mix_layers=[1, 2, 3])
    sel = out.selected
    assert sel["layer"] == "weighted" and sel["mixed_layers"] == [1, 2, 3]
    assert len(sel["layer_weights"]) == 3 and sum(sel["layer_weights"]) == pytest.approx(1.0)
    assert M.accuracy(y[160:], out.test_pred) > 0.9
    fit = fit_grid(x[:120], y[:120], label_type="multiclass", n_outputs=3, config=cfg, seed=0, mix_layers=[1, 2, 3])
    noisy = x.copy()
    noisy[:, 0] = rng.normal(size=noisy[:, 0].shape) * 100  # hidden state 0 replaced: the probe must not notice
    np.testing.assert_allclose(fit.predict(noisy), fit.predict(x), atol=1e-6)
    assert fit.params["mix"].shape == (1, 3)
    # default (no mix_layers): every hidden state, as before, for callers without layer names
    assert len(fit_grid(x[:120], y[:120], label_type="multiclass", n_outputs=3, config=dataclasses.replace(cfg, max_epochs=2),
                        seed=0).layer_weights(0)) == 4


def test_weighted_sum_with_fewer_than_two_layers_to_mix(rng):
    """One mixable layer: the weighted sum *is* that layer, so the grid does not train it twice; none
    (a model with a single hidden state): only the fixed-layer probes; 'weighted' alone reads that layer."""
    each = dataclasses.replace(SMALL, lrs=(1e-2,))
    assert grid_configs(2, each, mix_layers=[1]) == [(0, 1e-2), (1, 1e-2)]
    assert grid_configs(1, each, mix_layers=[]) == [(0, 1e-2)]
    weighted = dataclasses.replace(each, layers="weighted")
    assert grid_configs(2, weighted, mix_layers=[1]) == [(1, 1e-2)]
    assert grid_configs(1, weighted, mix_layers=[]) == [(0, 1e-2)]
    x, y = blobs(rng, n=120, n_layers=1, dim=6, informative=0)
    out = run_probe(x[:80], y[:80], x[100:], label_type="multiclass", n_outputs=3, config=dataclasses.replace(SMALL, max_epochs=5),
                    seed=0, score_fn=lambda t, p, m: M.accuracy(t, p), x_valid=x[80:100], y_valid=y[80:100], mix_layers=[])
    assert {g["layer"] for g in out.grid} == {"0"} and out.selected["layer_weights"] is None
    with pytest.raises(ConfigError, match="out of range"):
        grid_configs(3, each, mix_layers=[3])
