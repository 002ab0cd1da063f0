"""Metrics: perfect -> 1, chance -> its expected value, malformed inputs -> clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from m3bert.core.errors import ConfigError, DataError
from m3bert.tasks import metrics as M

KEYS = ["C major", "G major", "A minor", "C minor"]


def onehot(y, k):
    out = np.zeros((len(y), k), np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def test_perfect_predictions_score_one(rng):
    y = rng.integers(0, 4, 200)
    assert M.accuracy(y, onehot(y, 4)) == 1.0
    assert M.macro_f1(y, onehot(y, 4)) == 1.0
    assert M.key_weighted(y, onehot(y, 4), classes=KEYS) == 1.0
    tags = (rng.random((100, 5)) < 0.3).astype(np.float32)
    tags[0] = 1
    tags[1] = 0
    assert M.roc_auc_macro(tags, tags + 0.01 * rng.random(tags.shape)) == 1.0
    assert M.pr_auc_macro(tags, tags) == 1.0
    va = rng.normal(size=(50, 2))
    assert M.r2(va, va) == 1.0
    assert M.compute_metric("r2_arousal", va, va, classes=["valence", "arousal"]) == 1.0


def test_chance_level_expected_values(rng):
    k, n = 5, 5000
    y = np.repeat(np.arange(k), n // k)
    majority = np.zeros((n, k))
    majority[:, 0] = 1
    assert M.accuracy(y, majority) == pytest.approx(1 / k)
    # majority class: F1 = 2/(k+1) for that class, 0 for the others
    assert M.macro_f1(y, majority) == pytest.approx(2 / (k * (k + 1)))
    tags = (rng.random((n, 3)) < 0.2).astype(np.float32)
    noise = rng.random((n, 3))
    assert M.roc_auc_macro(tags, noise) == pytest.approx(0.5, abs=0.03)
    assert M.roc_auc_macro(tags, np.zeros((n, 3))) == 0.5  # constant scores tie everywhere
    assert M.pr_auc_macro(tags, noise) == pytest.approx(tags.mean(), abs=0.03)  # AP of random = prevalence
    t = rng.normal(size=(n, 2))
    assert M.r2(t, np.tile(t.mean(0), (n, 1))) == pytest.approx(0.0, abs=1e-12)


def test_key_weighted_uses_mir_eval_weights():
    y = np.array([0, 0, 0, 0])  # all "C major"
    pred = np.array([0, 1, 2, 3])  # same, fifth, relative minor, parallel minor
    assert M.key_weighted(y, pred, classes=KEYS) == pytest.approx((1 + 0.5 + 0.3 + 0.2) / 4)
    with pytest.raises(DataError, match="not a key"):
        M.key_weighted(y, pred, classes=["C major", "G major", "A minor", "blues"])


def test_per_target_r2_picks_the_named_column(rng):
    t = rng.normal(size=(100, 2))
    p = t.copy()
    p[:, 0] = 0.0  # valence predicted badly, arousal perfectly
    names = ["valence", "arousal"]
    assert M.compute_metric("r2_arousal", t, p, classes=names) == 1.0
    assert M.compute_metric("r2_valence", t, p, classes=names) < 0.1
    with pytest.raises(DataError, match="tempo"):
        M.compute_metric("r2_tempo", t, p, classes=names)


def test_malformed_inputs_raise_clear_errors(rng):
    y = rng.integers(0, 3, 10)
    with pytest.raises(DataError, match="10 rows but y_pred has 9"):
        M.accuracy(y, onehot(y, 3)[:9])
    bad = onehot(y, 3)
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        M.accuracy(y, bad)
    with pytest.raises(DataError, match="class index 7"):
        M.accuracy(np.r_[y[:-1], 7], onehot(y, 3))
    with pytest.raises(DataError, match="empty"):
        M.accuracy(np.zeros(0, int), np.zeros((0, 3)))
    with pytest.raises(DataError, match="differ"):
        M.r2(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(DataError, match="0/1"):
        M.roc_auc_macro(np.full((4, 2), 0.5), np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="unknown metric"):
        M.get_metric("top5")
    with pytest.raises(ConfigError, match="applies to"):
        M.compute_metric("accuracy", np.zeros((3, 2)), np.zeros((3, 2)), label_type="regression")


def test_single_class_auc_column_is_left_out_with_a_warning(rng):
    tags = (rng.random((60, 3)) < 0.5).astype(np.float32)
    tags[:, 2] = 0  # no positives: AUC undefined
    scores = rng.random((60, 3))
    with pytest.warns(UserWarning, match="left out"):
        value = M.roc_auc_macro(tags, scores, classes=["a", "b", "c"])
    assert value == pytest.approx(np.mean([M.roc_auc_macro(tags[:, [j]], scores[:, [j]]) for j in (0, 1)]))
    with pytest.raises(DataError, match="undefined"), pytest.warns(UserWarning, match="left out"):
        M.roc_auc_macro(np.zeros((5, 2)), rng.random((5, 2)))


def test_target_mask_restricts_each_column_to_known_labels(rng):
    tags = (rng.random((80, 2)) < 0.5).astype(np.float32)
    scores = tags.copy()
    mask = np.ones_like(tags)
    scores[:20] = 1 - tags[:20]  # wrong ... but unknown
    mask[:20] = 0
    assert M.roc_auc_macro(tags, scores, target_mask=mask) == 1.0
    assert M.roc_auc_macro(tags, scores) < 1.0


def test_task_score_is_the_marble_mean():
    vals = {"roc_auc_macro": 0.9, "pr_auc_macro": 0.4, "accuracy": 0.1}
    assert M.task_score(vals, ["roc_auc_macro", "pr_auc_macro"]) == pytest.approx(0.65)
    with pytest.raises(DataError, match="r2_valence"):
        M.task_score(vals, ["r2_valence"])


def test_summarize_uses_the_t_distribution():
    s = M.summarize([0.5, 0.6, 0.7])
    # t_{0.975, 2} = 4.302653; std = 0.1; half = 4.302653 * 0.1 / sqrt(3)
    assert s["mean"] == pytest.approx(0.6)
    assert s["half_width"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-6)
    one = M.summarize([0.5])
    assert one["std"] is None and one["half_width"] is None
    assert M.paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0
    assert M.paired_test([0.9, 0.91, 0.92], [0.5, 0.6, 0.55]) < 0.05
    assert M.paired_test([0.5], [0.4]) is None
