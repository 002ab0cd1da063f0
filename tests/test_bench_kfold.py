"""Grouped k-fold cross-validation by piece (evaluate.splits, the runner's ``kfold`` split)."""

from __future__ import annotations

import numpy as np
import pytest

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.baselines import ChanceBaseline
from m3bert.evaluate.probes import get_protocol, register_protocol
from m3bert.evaluate.runner import run_benchmark
from m3bert.evaluate.splits import group_kfold, kfold_indices, strata
from m3bert.tasks.registry import Clip, Task, TaskData
from tests.test_bench_runner import FAST, FakeRep, synthetic_task


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def pieces(n_groups=40, per_group=(1, 2, 3), n_classes=4, seed=0):
    """Groups of 1-3 clips (renders of one piece), one class per piece."""
    r = np.random.default_rng(seed)
    groups, y = [], []
    for g in range(n_groups):
        k = int(r.choice(per_group))
        groups += [f"piece{g}"] * k
        y += [g % n_classes] * k
    return np.array(groups), np.array(y)


@pytest.mark.parametrize("n_folds", [3, 5])
def test_folds_are_disjoint_by_piece_and_cover_every_clip_once(n_folds):
    groups, y = pieces()
    fold = group_kfold(groups, y, label_type="multiclass", n_folds=n_folds, seed=3)
    assert fold.shape == (len(y),) and set(fold.tolist()) == set(range(n_folds))
    for g in set(groups.tolist()):  # a piece lies in one fold
        assert len(set(fold[groups == g].tolist())) == 1
    tested = np.zeros(len(y), int)
    for k in range(n_folds):
        tr, va, te = kfold_indices(fold, k, with_validation=True)
        assert len(np.intersect1d(tr, te)) == len(np.intersect1d(tr, va)) == len(np.intersect1d(va, te)) == 0
        assert len(tr) + len(va) + len(te) == len(y)
        assert set(groups[te].tolist()).isdisjoint(groups[tr].tolist())
        assert set(groups[va].tolist()).isdisjoint(groups[tr].tolist())
        np.testing.assert_array_equal(va, np.nonzero(fold == (k + 1) % n_folds)[0])
        tested[te] += 1
        tr2, va2, te2 = kfold_indices(fold, k, with_validation=False)
        assert len(va2) == 0 and len(tr2) + len(te2) == len(y)
    assert np.all(tested == 1)  # every clip tested exactly once


def test_folds_are_stratified_and_seeded():
    groups, y = pieces(n_groups=60, per_group=(1,))
    a = group_kfold(groups, y, label_type="multiclass", n_folds=5, seed=0)
    b = group_kfold(groups, y, label_type="multiclass", n_folds=5, seed=0)
    c = group_kfold(groups, y, label_type="multiclass", n_folds=5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for k in range(5):  # 15 pieces per class over 5 folds: 3 of each class per fold
        assert np.bincount(y[a == k], minlength=4).tolist() == [3, 3, 3, 3]


def test_strata_of_each_label_type():
    tags = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
    s = strata(tags, label_type="multilabel")
    assert s[0] == s[1] and len(set(s.tolist())) == 4
    t = np.arange(100, dtype=np.float32)[:, None]
    s = strata(t, label_type="regression")
    assert np.bincount(s).tolist() == [20] * 5 and np.all(np.diff(s) >= 0)


def test_too_few_pieces_or_folds_are_clear_errors():
    groups, y = pieces(n_groups=4)
    with pytest.raises(DataError, match="4 group"):
        group_kfold(groups, y, label_type="multiclass", n_folds=5, seed=0)
    task, data = synthetic_task(n=30)
    with pytest.raises(ConfigError, match="n_folds"):
        run_benchmark([ChanceBaseline()], [(task, data)], seeds=1, progress=False, split="kfold", n_folds=2)
    with pytest.raises(ConfigError, match="split"):
        run_benchmark([ChanceBaseline()], [(task, data)], seeds=1, progress=False, split="bootstrap")


def grouped_task(n_pieces=30, renders=2, n_classes=3, name="synth-grouped"):
    """A task whose pieces have ``renders`` clips each (predefined split by piece)."""
    clips = []
    for g in range(n_pieces):
        split = ["train", "train", "train", "valid", "test"][g % 5]
        for r in range(renders):
            i = g * renders + r
            clips.append(Clip(f"clip-{i}", f"/nowhere/g{i}.wav", g % n_classes, split, group=f"piece{g}"))
    data = TaskData(name, "multiclass", [f"c{k}" for k in range(n_classes)], clips)
    return Task(name, "multiclass", "high-level", ["accuracy"], loader=lambda root, **kw: data), data.validate()


def test_kfold_run_tests_every_clip_once_per_seed_with_the_same_folds_for_every_representation(tmp_path):
    task, data = grouped_task()
    reps = [FakeRep("strong", 1.0), FakeRep("weak", 0.0), ChanceBaseline()]
    res = run_benchmark(reps, [(task, data)], seeds=2, progress=False, probe_overrides=FAST, split="kfold", n_folds=5,
                        out_dir=tmp_path / "r")
    assert res["protocol"]["n_folds"] == 5 and res["tasks"][0]["split_used"] == "kfold"
    by = {r["representation"]: r for r in res["results"]}
    for row in by.values():
        assert row["split"] == "kfold"
        for run in row["runs"]:
            assert run["n_test"] == 60 and run["split"] == "kfold"
            assert [f["fold"] for f in run["folds"]] == list(range(5))
            assert sum(f["n_test"] for f in run["folds"]) == 60
            for f in run["folds"]:
                assert f["n_train"] + f["n_valid"] + f["n_test"] == 60
    # the same folds for every representation: the per-fold test sizes match
    for seed in range(2):
        sizes = {name: [f["n_test"] for f in r["runs"][seed]["folds"]] for name, r in by.items()}
        assert sizes["strong"] == sizes["weak"] == sizes["chance"]
    assert [f["n_valid"] for f in by["chance"]["runs"][0]["folds"]] == [0] * 5  # chance needs no validation
    assert by["strong"]["summary"]["score"]["mean"] > by["weak"]["summary"]["score"]["mean"] + 0.2
    # power: the whole task is the test set
    power = res["power"][0]
    assert power["n_test"] == 60 and power["n_groups"] == 30 and power["reference"] == "strong"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "5-fold cross-validation by piece" in md and "minimum detectable difference" in md


def test_split_per_task_and_failed_clips_in_kfold(tmp_path):
    task_a, data_a = grouped_task(name="synth-a")
    task_b, data_b = synthetic_task(n=60, name="synth-b")
    rep = FakeRep("m", 1.0, fail_ids={"clip-3"})
    res = run_benchmark([rep], [(task_a, data_a), (task_b, data_b)], seeds=1, progress=False, probe_overrides=FAST,
                        split={"synth-a": "kfold"}, skip_missing=True)
    rows = {r["task"]: r for r in res["results"]}
    assert rows["synth-a"]["split"] == "kfold" and rows["synth-b"]["split"] == "predefined"
    assert rows["synth-a"]["runs"][0]["n_test"] == 59  # the failed clip is dropped, every other clip tested
    assert rows["synth-b"]["runs"][0]["n_test"] == 12


def test_a_registered_kfold_protocol():
    marble = get_protocol("marble")
    with pytest.raises(ConfigError, match="n_folds"):
        register_protocol(type(marble)("bad-kfold", marble.probe, "mean", "kfold", 1, n_folds=1))


def test_kfold_metrics_are_per_fold_so_chance_auc_is_one_half():
    """Pooled out-of-fold ranking metrics are biased: a chance predictor outputs each fold's train
    prevalence, and a fold whose training part holds more positives tests fewer, so its pooled
    ROC-AUC falls below 0.5. Per fold (averaged by fold size) it is exactly 0.5."""
    task, data = synthetic_task(n=100, name="synth-tags", label_type="multilabel", taxonomy="acoustic")
    res = run_benchmark([ChanceBaseline()], [(task, data)], seeds=2, progress=False, split="kfold", power=False)
    for run in res["results"][0]["runs"]:
        assert run["metrics"]["roc_auc_macro"] == pytest.approx(0.5)
        assert run["n_test"] == 100
