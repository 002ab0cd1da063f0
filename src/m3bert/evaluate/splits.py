"""Train / validation / test index sets of a benchmark run: random splits by group and grouped k-fold.

* :func:`random_group_split`: a random train/test split by group (song), stratified by class for
  multiclass tasks (Kim et al.'s protocol on tasks without a predefined split).
* :func:`carve_validation`: a seeded share of the training groups held out for validation.
* :func:`group_kfold` / :func:`kfold_indices`: grouped k-fold cross-validation by piece, the
  ``kfold`` split of :mod:`m3bert.evaluate.probes`. No group is in two folds; folds are stratified
  (``sklearn.model_selection.StratifiedGroupKFold``) by the class (multiclass), by the tag
  combination (multilabel) or by the quantile bin of the target (regression: ``N_REGRESSION_BINS``
  bins of the first target), so each fold resembles the whole task. Fold ``i`` is the test set of
  probe ``i``, fold ``i + 1 (mod k)`` its validation set (when the probe grid selects on
  validation) and the other folds its training set: every clip is tested exactly once per seed,
  which multiplies the test set by about ``1 / test_fraction`` against a fixed split.

Why k-fold: the built-in corpus's predefined test splits hold 27-54 clips for most tasks, where
an accuracy difference of 10 points is within noise; the whole task tested once is the largest
test set the data allows (power analysis: :mod:`m3bert.evaluate.power`).

Caution, stated in the report: k-fold tests every clip, including the clips of the task's
predefined *train* split. A representation trained with those labels (M3BERT enriched on the
task) has seen them, so its k-fold numbers on its own enrichment tasks are not held-out numbers;
run those tasks with the ``predefined`` split (``run_benchmark(split={task: "predefined"})``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from m3bert.core.errors import DataError

N_REGRESSION_BINS = 5  # quantile bins of a regression target used to stratify its folds


def random_group_split(clips: Sequence, y: np.ndarray, *, label_type: str, test_fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices of a random split by group (song), stratified by class when multiclass."""
    groups = np.array([c.group for c in clips])
    idx = np.arange(len(clips))
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise DataError(f"random split: {n_groups} group(s); need at least 2 songs to split by song")
    if label_type == "multiclass":
        n_splits = max(2, int(round(1 / test_fraction)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # rare classes: sklearn warns it cannot stratify fully
            train, test = next(StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True,
                                                    random_state=seed).split(idx, y, groups))
    else:
        train, test = next(GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(idx, groups=groups))
    return np.sort(train), np.sort(test)


def carve_validation(clips: Sequence, train: np.ndarray, *, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A task without a validation split: hold out ``fraction`` of the training groups (seeded)."""
    groups = np.array([clips[i].group for i in train])
    if len(set(groups.tolist())) < 2:
        raise DataError("task has no validation split and too few training songs to hold some out")
    a, b = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(train, groups=groups))
    return train[np.sort(a)], train[np.sort(b)]


def strata(y: np.ndarray, *, label_type: str) -> np.ndarray:
    """``(n,)`` int stratum of each clip: its class, its tag combination or its target's quantile bin."""
    y = np.asarray(y)
    if label_type == "multiclass":
        return y.astype(np.int64)
    if label_type == "multilabel":
        bits = (y > 0.5).astype(np.int64)
        codes = bits @ (1 << np.arange(bits.shape[1], dtype=np.int64)) if bits.shape[1] < 62 else np.zeros(len(y), np.int64)
        return np.unique(codes, return_inverse=True)[1]
    t = y.reshape(len(y), -1)[:, 0].astype(np.float64)
    edges = np.unique(np.quantile(t, np.linspace(0, 1, N_REGRESSION_BINS + 1)[1:-1]))
    return np.searchsorted(edges, t, side="right").astype(np.int64)


def group_kfold(groups: Sequence, y: np.ndarray, *, label_type: str, n_folds: int, seed: int) -> np.ndarray:
    """``(n,)`` fold index in ``[0, n_folds)`` of every clip; a pure function of (groups, labels, seed)."""
    g = np.asarray([str(x) for x in groups])
    n_groups = len(set(g.tolist()))
    if n_groups < n_folds:
        raise DataError(f"k-fold split: {n_groups} group(s) (pieces) for {n_folds} folds; need at least one piece "
                        "per fold (use fewer folds or the predefined split)")
    s = strata(y, label_type=label_type)
    fold = np.full(len(g), -1, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a stratum with fewer groups than folds cannot be spread
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=int(seed))
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(g)), s, g)):
            fold[test] = k
    if (fold < 0).any():  # pragma: no cover - sklearn assigns every sample
        raise DataError("k-fold split: a clip was assigned to no fold")
    return fold


def kfold_indices(fold: np.ndarray, k: int, *, with_validation: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices of probe ``k``: test = fold k, validation = fold k + 1 (mod n_folds)
    when ``with_validation`` (else empty, and that fold trains), train = the rest."""
    n_folds = int(fold.max()) + 1
    test = np.nonzero(fold == k)[0]
    if with_validation:
        valid = np.nonzero(fold == (k + 1) % n_folds)[0]
        train = np.nonzero((fold != k) & (fold != (k + 1) % n_folds))[0]
    else:
        valid = np.zeros(0, np.int64)
        train = np.nonzero(fold != k)[0]
    return train, valid, test
