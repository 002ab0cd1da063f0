"""Benchmark orchestration: tasks x representations x seeds -> probe -> metrics -> results dict.

``run_benchmark(representations, tasks, protocol="marble", seeds=3, out_dir=REPORT)`` loads each
task, gets every representation's features from the :class:`~m3bert.evaluate.cache.FeatureCache`,
trains the protocol's probe once per seed, scores the test split with the task's metrics, and
summarises each number over seeds (mean, std, 95 % t-interval). With ``out_dir`` it writes
``results.json``, ``report.md`` and ``report.html`` (:func:`m3bert.evaluate.report.write_report`).
The models of one run share each clip's input features through one
:class:`~m3bert.features.memo.FeatureMemo`, created for the run and dropped after it.

Splits: ``predefined`` protocols (MARBLE, linear) use the task's train/valid/test; ``kim`` uses
the task's predefined split as train+valid vs test when it has one
(``TaskData.split_source == "predefined"``) and otherwise draws a random 80/20 split by group per
seed. Each result row and run records the split it used (``"split"``), each task row its
``split_source``. Weighted-sum probes mix every hidden state but the input embedding (the layer
named ``"input"``), as MARBLE mixes layers 1..L.

Within-noise rule (reported with every table): for each task, every representation is compared
with the best one (highest mean task score) by a two-sided *paired t-test over matched seeds*
(the same seeds, hence the same splits and probe initialisation streams); ``p >= 0.05`` marks
the difference as within noise. With fewer than two seeds nothing can be said and the mark is
"n/a". Overlap of the 95 % intervals is recorded as well, for readers who prefer that rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import versions
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.probe_grid import config_to_dict, grid_configs
from m3bert.evaluate.probes import Protocol, ScoreFn, fit_chance, get_protocol, run_probe
from m3bert.evaluate.report import Section, write_report
from m3bert.evaluate.representations import EmbeddingsDirRepresentation, Representation
from m3bert.features.memo import FeatureMemo
from m3bert.tasks import metrics as M
from m3bert.tasks.registry import Task, TaskData, parse_task_spec, task_for_data

RESULTS_FORMAT = "m3bert-bench-results"
FEATURE_MEMO_BYTES = 512 << 20  # input features the models of one run share (an LRU of this size)
NOISE_ALPHA = 0.05
INPUT_LAYER = "input"  # the layer name of hidden state 0 (the input projection): never mixed by weighted sums
NOISE_RULE = (f"paired two-sided t-test of the task score over matched seeds against the best representation "
              f"of the task; p >= {NOISE_ALPHA} = within noise (n/a with fewer than 2 seeds)")


def _load_task(spec: str | Task | tuple[Task, TaskData] | TaskData, *, skip_missing: bool) -> tuple[Task, TaskData]:
    if isinstance(spec, tuple):
        task, data = spec
        return task, data.validate()
    if isinstance(spec, TaskData):
        return task_for_data(spec), spec.validate()
    if isinstance(spec, Task):
        task, root = spec, None
    else:
        task, root = parse_task_spec(spec)
    if root is None and task.default_root is None:
        raise ConfigError(f"task {task.name} needs a dataset path: use '{task.name}:/path/to/dataset'")
    options = {}
    if skip_missing:
        params = inspect.signature(task.loader).parameters
        if "skip_missing" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            options["skip_missing"] = True
    return task, task.load(root, **options)


def _targets(td: TaskData, clips: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
    y = td.target_matrix(clips)
    if td.label_type != "multilabel" or not any(c.target_mask is not None for c in clips):
        return y, None
    mask = np.stack([np.ones(len(td.classes), np.float32) if c.target_mask is None
                     else np.asarray(c.target_mask, np.float32) for c in clips])
    return y, mask


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


def _score_fn(task: Task, td: TaskData) -> ScoreFn:
    names = task.score_metrics or [task.primary_metric]

    def fn(y: np.ndarray, pred: np.ndarray, mask: np.ndarray | None) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # left-out AUC columns on small validation sets
            vals = M.compute_metrics(names, y, pred, label_type=td.label_type, classes=td.classes, target_mask=mask)
        return M.task_score(vals, names)

    return fn


def _summaries(runs: list[dict[str, Any]], metric_names: Sequence[str]) -> dict[str, Any]:
    return {"metrics": {m: M.summarize([r["metrics"][m] for r in runs]) for m in metric_names},
            "score": M.summarize([r["score"] for r in runs])}


def _comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task and r["runs"]]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["summary"]["score"]["mean"])
        bs = best["summary"]["score"]
        for r in rows:
            s = r["summary"]["score"]
            a = [x["score"] for x in best["runs"]]
            b = [x["score"] for x in r["runs"]]
            same_seeds = [x["seed"] for x in best["runs"]] == [x["seed"] for x in r["runs"]]
            p = M.paired_test(a, b) if same_seeds else None
            overlap = None
            if bs["half_width"] is not None and s["half_width"] is not None:
                overlap = bool(s["ci_high"] >= bs["ci_low"] and bs["ci_high"] >= s["ci_low"])
            out.append({"task": task, "representation": r["representation"], "best": best["representation"],
                        "is_best": r is best, "p_value": p,
                        "within_noise": None if p is None else bool(r is best or p >= NOISE_ALPHA),
                        "ci_overlap": overlap})
    return out


def _taxonomy(results: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    level = {t["name"]: t["taxonomy"] for t in tasks}
    out = []
    reps = list(dict.fromkeys(r["representation"] for r in results))
    for rep in reps:
        for lev in dict.fromkeys(t["taxonomy"] for t in tasks):
            rows = [r for r in results if r["representation"] == rep and level[r["task"]] == lev and r["runs"]]
            if not rows:
                continue
            n = min(len(r["runs"]) for r in rows)
            per_seed = [float(np.mean([r["runs"][i]["score"] for r in rows])) for i in range(n)]
            out.append({"representation": rep, "level": lev, "tasks": [r["task"] for r in rows],
                        "score": M.summarize(per_seed)})
    return out


def _task_row(task: Task, td: TaskData) -> dict[str, Any]:
    """What results.json records about a loaded task."""
    for m in task.metrics + (task.score_metrics or []):
        if td.label_type not in M.get_metric(m).label_types:
            raise ConfigError(f"task {task.name}: metric {m!r} does not apply to {td.label_type} labels")
    splits = np.array([c.split for c in td.clips])
    return {"name": task.name, "taxonomy": task.taxonomy, "label_type": td.label_type, "split_source": td.split_source,
            "metrics": list(task.metrics), "score_metrics": list(task.score_metrics or [task.primary_metric]),
            "classes": list(td.classes), "description": task.description, "root": td.root,
            "n_clips": {s: int((splits == s).sum()) for s in ("train", "valid", "test")},
            "skipped": [list(s) for s in td.skipped]}


def split_used(proto: Protocol, td: TaskData) -> str:
    """The split a protocol uses on a task: "predefined" or "random" (see the module doc)."""
    if proto.split == "predefined-else-random":
        return "predefined" if td.split_source == "predefined" else "random"
    return proto.split


def mix_layers_of(layer_names: Sequence[str], n_layers: int) -> list[int] | None:
    """The hidden states a weighted-sum probe mixes: all but the input embedding (MARBLE: layers 1..L).

    None (= all) when the names do not describe the features."""
    if len(layer_names) != n_layers:
        return None
    return [i for i, name in enumerate(layer_names) if name != INPUT_LAYER]


def _evaluate(rep: Representation, task: Task, td: TaskData, proto: Protocol, seeds: Sequence[int], *,
              cache: FeatureCache, skip_missing: bool, progress: bool) -> dict[str, Any]:
    """One (representation, task) result row: its features, then one probe run per seed."""
    clips = td.clips
    y_all, mask_all = _targets(td, clips)
    score_names = task.score_metrics or [task.primary_metric]
    splits = np.array([c.split for c in clips])
    t0 = time.time()
    if rep.predictor == "chance":
        feats, ok, failures, layer_names = None, np.ones(len(clips), bool), [], rep.layer_names
    else:
        got = cache.get(rep, task.name, clips, pooling=proto.pooling, skip_errors=skip_missing, progress=progress)
        feats, ok, failures, layer_names = got.features, got.ok, got.failures, got.layer_names
    extract_s = time.time() - t0
    keep = np.nonzero(ok)[0]
    n_layers = feats.shape[1] if feats is not None else 1
    mix = mix_layers_of(layer_names, n_layers)
    needs_valid = (len(grid_configs(n_layers, proto.probe, mix_layers=mix)) > 1 or proto.probe.early_stop_patience is not None
                   or proto.probe.lr_plateau_patience is not None)
    split = split_used(proto, td)
    n_out = len(td.classes)
    runs = []
    for seed in seeds:
        t1 = time.time()
        if split == "random":
            tr, te = random_group_split([clips[i] for i in keep], y_all[keep], label_type=td.label_type,
                                        test_fraction=proto.test_fraction, seed=seed)
            tr, te, va = keep[tr], keep[te], np.zeros(0, np.int64)
        elif proto.split == "predefined-else-random":  # Kim on a predefined split: train + valid vs test
            tr = keep[np.isin(splits[keep], ("train", "valid"))]
            te = keep[splits[keep] == "test"]
            va = np.zeros(0, np.int64)
        else:
            tr = keep[splits[keep] == "train"]
            va = keep[splits[keep] == "valid"]
            te = keep[splits[keep] == "test"]
            if len(va) == 0 and needs_valid and rep.predictor != "chance":
                tr, va = carve_validation(clips, tr, seed=seed)
        if len(tr) == 0 or len(te) == 0:
            raise DataError(f"task {task.name}: {len(tr)} train and {len(te)} test clips after dropping failures; "
                            "need both")
        m_tr = mask_all[tr] if mask_all is not None else None
        m_va = mask_all[va] if mask_all is not None else None
        m_te = mask_all[te] if mask_all is not None else None
        if rep.predictor == "chance":
            pred = fit_chance(y_all[tr], len(te), label_type=td.label_type, n_outputs=n_out, mask_train=m_tr)
            selected: dict[str, Any] = {"predictor": "chance"}
        else:
            out = run_probe(feats[tr], y_all[tr], feats[te], label_type=td.label_type, n_outputs=n_out,
                            config=proto.probe, seed=seed, score_fn=_score_fn(task, td),
                            x_valid=feats[va] if len(va) else None, y_valid=y_all[va] if len(va) else None,
                            mask_train=m_tr, mask_valid=m_va, mix_layers=mix)
            pred = out.test_pred
            selected = dict(out.selected)
            if selected.get("layer") not in (None, "weighted"):
                selected["layer_name"] = layer_names[int(selected["layer"])]
        vals = M.compute_metrics(task.metrics, y_all[te], pred, label_type=td.label_type, classes=td.classes,
                                 target_mask=m_te)
        for m in score_names:
            if m not in vals:
                vals[m] = M.compute_metric(m, y_all[te], pred, label_type=td.label_type, classes=td.classes,
                                           target_mask=m_te)
        runs.append({"seed": seed, "split": split, "metrics": vals, "score": M.task_score(vals, score_names),
                     "selected": selected, "n_train": int(len(tr)), "n_valid": int(len(va)),
                     "n_test": int(len(te)), "time_s": round(time.time() - t1, 3)})
    return {"representation": rep.name, "task": task.name, "split": split, "runs": runs,
            "summary": _summaries(runs, list(dict.fromkeys(task.metrics + score_names))),
            "failures": failures, "layer_names": layer_names,
            "feature_shape": list(feats.shape[1:]) if feats is not None else None,
            "extract_s": round(extract_s, 3)}


def run_benchmark(representations: Sequence[Representation], tasks: Sequence[Any], *, protocol: str | Protocol = "marble",
                  seeds: int | Sequence[int] | None = None, out_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, skip_missing: bool = False, progress: bool = True,
                  probe_overrides: dict[str, Any] | None = None, sections: Sequence[Section] = (),
                  echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the results dict (written with the report when ``out_dir`` is set).

    ``tasks``: ``"name[:PATH]"`` specs, :class:`Task` objects, loaded :class:`TaskData`, or
    ``(Task, TaskData)`` pairs. ``seeds``: a count (seeds 0..K-1) or explicit seeds; default the
    protocol's. ``probe_overrides``: :class:`ProbeConfig` fields to change (e.g. ``max_epochs``),
    recorded in the results. ``echo``: a callable for one-line progress messages.
    """
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if probe_overrides:
        proto = dataclasses.replace(proto, probe=dataclasses.replace(proto.probe, **probe_overrides))
    if seeds is None:
        seeds = proto.default_seeds
    if isinstance(seeds, (bool, np.bool_)):
        raise ConfigError(f"seeds={seeds!r}: expected a number of repeats >= 1 or a list of seeds")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ConfigError(f"seeds={int(seeds)}: expected a number of repeats >= 1 (or a list of seeds)")
        seed_list = list(range(int(seeds)))
    else:
        seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("seeds: expected at least one seed")
    if len(set(seed_list)) != len(seed_list) or any(s < 0 for s in seed_list):
        raise ConfigError(f"seeds={seed_list}: expected distinct seeds >= 0")
    if not representations:
        raise ConfigError("nothing to benchmark: give at least one representation (--model, --baseline, --embeddings, --hear)")
    if not tasks:
        raise ConfigError("nothing to benchmark: give at least one --task")
    names = [r.name for r in representations]
    if len(set(names)) != len(names):
        raise ConfigError(f"representation names must be unique, got {names}")
    say = echo or (lambda msg: None)
    cache = FeatureCache(cache_dir)
    started = time.time()
    task_rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    rep_rows: dict[str, dict[str, Any]] = {}

    # The models compared (M3BERT, M2BERT, a random encoder) share each clip's input features
    # through one memo for this run; leaving the block detaches it, and it goes with the run.
    memo = FeatureMemo(FEATURE_MEMO_BYTES)
    with contextlib.ExitStack() as sharing:
        for rep in representations:
            sharing.enter_context(rep.sharing_input_features(memo))
        for spec in tasks:
            task, td = _load_task(spec, skip_missing=skip_missing)
            task_rows.append(_task_row(task, td))
            say(f"task {task.name}: {len(td.clips)} clips ({task_rows[-1]['n_clips']}), {len(td.skipped)} skipped")
            for rep in representations:
                rep_t = rep.for_task(td.root) if isinstance(rep, EmbeddingsDirRepresentation) else rep
                row = _evaluate(rep_t, task, td, proto, seed_list, cache=cache, skip_missing=skip_missing,
                                progress=progress)
                rep_rows.setdefault(rep.name, rep_t.describe())
                results.append(row)
                s = row["summary"]["score"]
                say(f"  {rep.name:>20s} on {task.name}: score {s['mean']:.4f}"
                    + (f" ± {s['half_width']:.4f}" if s["half_width"] is not None else "")
                    + (f" ({len(row['failures'])} clip(s) failed)" if row["failures"] else ""))

    out = {
        "format": RESULTS_FORMAT, "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {"name": proto.name, "description": proto.description, "pooling": proto.pooling, "split": proto.split,
                     "test_fraction": proto.test_fraction, "probe": config_to_dict(proto.probe)},
        "seeds": seed_list, "confidence": 0.95, "noise_rule": NOISE_RULE,
        "config": {"cache_dir": str(cache_dir) if cache_dir else None, "skip_missing": skip_missing},
        "versions": versions(),
        "representations": [rep_rows[n] for n in names if n in rep_rows],
        "tasks": task_rows, "results": results,
        "comparisons": _comparisons(results),
        "taxonomy": _taxonomy(results, task_rows),
        "elapsed_s": round(time.time() - started, 2),
        "sections": [],
    }
    if out_dir is not None:
        write_report(out, out_dir, sections=sections)
    return out
