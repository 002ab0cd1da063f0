"""Every dataset task is registered with a consistent label type, taxonomy level and metrics."""

from __future__ import annotations

import inspect

from m3bert.tasks.metrics import get_metric
from m3bert.tasks.registry import available_tasks, get_task

EXPECTED = {  # name: (label type, MARBLE taxonomy level, primary metric)
    "gtzan-genre": ("multiclass", "high-level", "accuracy"),
    "mtg-moodtheme": ("multilabel", "high-level", "roc_auc_macro"),
    "mtg-genre": ("multilabel", "high-level", "roc_auc_macro"),
    "mtg-instrument": ("multilabel", "acoustic", "roc_auc_macro"),
    "mtg-top50": ("multilabel", "high-level", "roc_auc_macro"),
    "mtt-top50": ("multilabel", "high-level", "roc_auc_macro"),
    "deam-va": ("regression", "high-level", "r2"),
    "emomusic-va": ("regression", "high-level", "r2"),
    "ballroom-ext": ("multiclass", "high-level", "accuracy"),
    "ballroom-ext9": ("multiclass", "high-level", "macro_f1"),
    "rwc-instrument": ("multiclass", "acoustic", "accuracy"),
    "nsynth-family": ("multiclass", "acoustic", "accuracy"),
    "nsynth-pitch": ("multiclass", "score", "accuracy"),
    "giantsteps-key": ("multiclass", "high-level", "key_weighted"),
    "fma-small-genre": ("multiclass", "high-level", "accuracy"),
    "fma-medium-genre": ("multiclass", "high-level", "accuracy"),
    "openmic-instrument": ("multilabel", "acoustic", "roc_auc_macro"),
    "irmas-instrument": ("multiclass", "acoustic", "accuracy"),
    "vocalset-technique": ("multiclass", "performance", "accuracy"),
    "vocalset-singer": ("multiclass", "acoustic", "accuracy"),
}
RANDOM_SPLIT = {"deam-va", "ballroom-ext", "ballroom-ext9", "rwc-instrument", "openmic-instrument", "irmas-instrument",
                "vocalset-technique", "vocalset-singer"}


def test_all_dataset_tasks_registered():
    names = available_tasks()
    for name, (label_type, taxonomy, primary) in EXPECTED.items():
        assert name in names
        task = get_task(name)
        assert (task.label_type, task.taxonomy, task.primary_metric) == (label_type, taxonomy, primary), name
        for m in task.metrics + (task.score_metrics or []):
            assert label_type in get_metric(m).label_types, (name, m)
        assert task.default_root is None  # real datasets always need the user's path
        params = inspect.signature(task.loader).parameters
        assert "skip_missing" in params and task.options.get("skip_missing") is False
        assert ("seed" in task.options) == (name in RANDOM_SPLIT), name
        if name in RANDOM_SPLIT:
            assert "seed" in params
