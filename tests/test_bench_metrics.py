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


# ---------------------------------------------------------------------------------------------
# test-set power (evaluate.power)


def test_mdd_formula_against_a_hand_computation():
    from m3bert.evaluate import power as P

    z = 1.959964 + 0.841621  # z_{0.975} + z_{0.80}
    assert P.z_sum() == pytest.approx(z, abs=1e-5)
    # two accuracies near .5 on 100 clips each: 2.8016 * sqrt(2 * .25 / 100) = 0.19810
    assert P.mdd_two_proportions(100, 0.5) == pytest.approx(z * np.sqrt(0.005), abs=1e-6)
    assert P.mdd_two_proportions(100, 0.5) == pytest.approx(0.19810, abs=1e-4)
    assert P.mdd_two_proportions(400, 0.9) == pytest.approx(z * np.sqrt(2 * 0.09 / 400), abs=1e-6)  # 0.0594
    assert P.mdd(0.01) == pytest.approx(z * 0.01)
    assert P.mdd(0.01, alpha=0.01, power=0.9) == pytest.approx((2.575829 + 1.281552) * 0.01, abs=1e-6)
    # clips needed for 5 points at p = .5: 2 * .25 * (2.8016 / .05)^2 = 1569.8 -> 1570
    assert P.n_for_mdd(0.05, 0.5) == 1570
    with pytest.raises(ConfigError):
        P.mdd_two_proportions(0, 0.5)


def test_group_bootstrap_se_matches_the_binomial_and_counts_pieces():
    from m3bert.evaluate import power as P

    r = np.random.default_rng(0)
    n = 400
    correct = (r.random(n) < 0.7).astype(float)
    boot = P.group_bootstrap(lambda idx: float(correct[idx].mean()), [f"g{i}" for i in range(n)], n_boot=2000)
    p = correct.mean()
    assert boot.estimate == pytest.approx(p)
    assert boot.se == pytest.approx(np.sqrt(p * (1 - p) / n), rel=0.1)
    row = P.power_row(boot, n_test=n, n_groups=n)
    assert row["mdd"] == pytest.approx(P.mdd(np.sqrt(2) * boot.se)) and row["ci_low"] < p < row["ci_high"]
    # the same clips duplicated in pairs of one piece: twice the clips, the same information
    dup = np.repeat(correct, 2)
    boot2 = P.group_bootstrap(lambda idx: float(dup[idx].mean()), [f"g{i // 2}" for i in range(2 * n)], n_boot=2000)
    assert boot2.se == pytest.approx(boot.se, rel=0.15)
    # same seed, same draws
    again = P.group_bootstrap(lambda idx: float(correct[idx].mean()), [f"g{i}" for i in range(n)], n_boot=2000)
    np.testing.assert_array_equal(again.draws, boot.draws)


def test_paired_bootstrap_decides_a_real_difference_and_not_a_null_one():
    from m3bert.evaluate import power as P

    r = np.random.default_rng(1)
    n = 300
    a = (r.random(n) < 0.8).astype(float)
    b = a.copy()
    flip = r.choice(n, 30, replace=False)
    b[flip] = 0.0  # b is a minus up to 30 clips: a paired test sees it, an unpaired one barely
    groups = [f"g{i}" for i in range(n)]
    d = P.paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), groups)
    row = P.pair_row(d)
    assert row["difference"] == pytest.approx(a.mean() - b.mean()) and row["decided"] and row["p_value"] < 0.01
    assert row["mdd"] < P.mdd_two_proportions(n, 0.75)  # pairing gives a smaller MDD
    same = P.pair_row(P.paired_bootstrap(lambda i: a[i].mean(), lambda i: a[i].mean(), groups))
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and not same["decided"]


def test_per_item_scores_average_to_the_metric(rng):
    y = rng.integers(0, 4, 50)
    pred = rng.random((50, 4))
    assert M.accuracy_items(y, pred).mean() == pytest.approx(M.accuracy(y, pred))
    assert M.key_weighted_items(y, pred, classes=KEYS).mean() == pytest.approx(M.key_weighted(y, pred, classes=KEYS))
    items = M.task_score_items(["key_weighted", "accuracy"], y, pred, classes=KEYS)
    assert items.mean() == pytest.approx((M.key_weighted(y, pred, classes=KEYS) + M.accuracy(y, pred)) / 2)
    assert M.task_score_items(["accuracy", "macro_f1"], y, pred, classes=KEYS) is None  # F1 does not decompose


def test_fold_metrics_average_per_fold_weighted_by_size(rng):
    y = rng.integers(0, 3, 60)
    pred = rng.random((60, 3))
    fold = np.repeat([0, 1, 2], [10, 20, 30])
    got = M.compute_fold_metrics(["accuracy", "macro_f1"], y, pred, fold, label_type="multiclass")
    assert got["accuracy"] == pytest.approx(M.accuracy(y, pred))  # a mean over clips: the pooled score
    f1 = [M.macro_f1(y[fold == k], pred[fold == k], classes=["a", "b", "c"]) for k in range(3)]
    assert got["macro_f1"] == pytest.approx(np.average(f1, weights=[10, 20, 30]))
    tags = np.zeros((60, 1), np.float32)
    tags[:5] = 1  # only fold 0 has positives: AUC is defined there alone
    scores = rng.random((60, 1))
    with pytest.warns(UserWarning, match="single class"):  # folds 1 and 2 have no positive
        got = M.compute_fold_metrics(["roc_auc_macro"], tags, scores, fold)
    assert got["roc_auc_macro"] == pytest.approx(M.roc_auc_macro(tags[:10], scores[:10]))  # the folds without it are left out
    with pytest.raises(DataError, match="no column"), pytest.warns(UserWarning, match="single class"):
        M.compute_fold_metrics(["roc_auc_macro"], np.zeros((60, 1)), rng.random((60, 1)), fold)


def test_fast_metric_twins_equal_scikit_learn(rng):
    """The bootstrap's numpy twins give scikit-learn's numbers, ties and masks included."""
    for _ in range(5):
        tags = (rng.random((120, 6)) < 0.3).astype(np.float32)
        tags[:, 5] = 0  # a column with one class: left out by both
        scores = np.round(rng.random((120, 6)), 1)  # many ties
        mask = (rng.random((120, 6)) > 0.2).astype(np.float32)
        for name in ("roc_auc_macro", "pr_auc_macro"):
            metric = M.get_metric(name)
            with pytest.warns(UserWarning):
                ref = metric.fn(tags, scores, target_mask=mask)
            assert metric.fast(tags, scores, target_mask=mask) == pytest.approx(ref, abs=1e-12)
            with pytest.warns(UserWarning):
                ref = metric.fn(tags, scores)
            assert metric.fast(tags, scores) == pytest.approx(ref, abs=1e-12)
        t = rng.normal(size=(80, 2))
        p = t + rng.normal(size=(80, 2))
        t[:, 1] = 3.0  # constant target column
        assert M.get_metric("r2").fast(t, p) == pytest.approx(M.r2(t, p), abs=1e-12)
    with pytest.raises(DataError):
        M.fast_roc_auc_macro(np.zeros((5, 2)), np.ones((5, 2)))
