"""Benchmark orchestration: tasks x representations x settings x seeds -> probe -> metrics -> results dict.

``run_benchmark(representations, tasks, protocol="marble", seeds=3, out_dir=REPORT)`` loads each
task, gets every representation's features from the :class:`~m3bert.evaluate.cache.FeatureCache`,
trains the protocol's probe once per seed, scores the test split with the task's metrics, and
summarises each number over seeds (mean, std, 95 % t-interval). With ``out_dir`` it writes
``results.json``, ``report.md`` and ``report.html`` (:func:`m3bert.evaluate.report.write_report`).
The models of one run share each clip's input features through one
:class:`~m3bert.features.memo.FeatureMemo`, created for the run and dropped after it.

Settings (issue 17, like-for-like comparisons): ``settings=["paper", "marble", "marble-meanstd"]``
(:class:`~m3bert.evaluate.probes.Setting`) probes every representation under each setting in the
same run: the same tasks, seeds, splits and probe grid, differing only in the layers read and the
pooling. Features are extracted once per (representation, task, pooling) and shared by the
settings that pool alike. Every result row names its ``"setting"``; without ``settings`` the run
has one setting named after the protocol (its layers and pooling), and its numbers are those of
earlier versions. ``results["layer_selection"]`` says which layer won per (setting,
representation, task): the layer the validation picked most often over seeds (and folds).

Splits: ``predefined`` protocols (MARBLE, linear) use the task's train/valid/test; ``kim`` uses
the task's predefined split as train+valid vs test when it has one
(``TaskData.split_source == "predefined"``) and otherwise draws a random 80/20 split by group per
seed; ``split="kfold"`` (any protocol, or per task: ``split={"builtin-dance": "predefined"}``) is
grouped k-fold cross-validation by piece (:mod:`m3bert.evaluate.splits`): the folds are drawn
per seed over every clip of the task, the same for every representation and setting; every clip
is tested once per seed, and each metric is computed per fold and averaged weighted by fold size
(:func:`m3bert.tasks.metrics.compute_fold_metrics`; for accuracy that is the pooled score).
Each result row and run records the split it used (``"split"``), each task row its
``split_source``. Weighted-sum probes mix every hidden state but the input embedding (the layer
named ``"input"``), as MARBLE mixes layers 1..L.

Within-noise rule (reported with every table): for each task and setting, every representation is
compared with the best one (highest mean task score) by a two-sided *paired t-test over matched
seeds* (the same seeds, hence the same splits and probe initialisation streams); ``p >= 0.05``
marks the difference as within noise. With fewer than two seeds nothing can be said and the mark
is "n/a". Overlap of the 95 % intervals is recorded as well, for readers who prefer that rule.
That rule sees the probe's noise only; the test set's is in ``results["power"]`` (the minimum
detectable difference per task, :mod:`m3bert.evaluate.power`) and, for the pairs asked with
``pairs=[("M2BERT", "M2BERT, no pre-training")]``, in ``results["pairs"]`` (a paired group
bootstrap of the score difference over test pieces: CI, p-value, MDD).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import versions
from m3bert.evaluate import power as P
from m3bert.evaluate import rhythm as _rhythm  # noqa: F401  (registers the tempogram-stats baseline)
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.jobs import run_jobs
from m3bert.evaluate.probe_grid import config_to_dict, grid_configs
from m3bert.evaluate.probes import (Protocol, Setting, check_split, fit_chance, get_protocol, layer_selection, resolve_settings,
                                    run_probe, task_score_fn, task_targets)
from m3bert.evaluate.report import Section, write_report
from m3bert.evaluate.representations import EmbeddingsDirRepresentation, Representation
from m3bert.evaluate.splits import carve_validation, group_kfold, kfold_indices, random_group_split
from m3bert.features.memo import FeatureMemo
from m3bert.tasks import metrics as M
from m3bert.tasks.registry import Task, TaskData, parse_task_spec, task_for_data

__all__ = ["run_benchmark", "random_group_split", "carve_validation", "split_used", "mix_layers_of", "layer_selection"]

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


def _summaries(runs: list[dict[str, Any]], metric_names: Sequence[str]) -> dict[str, Any]:
    return {"metrics": {m: M.summarize([r["metrics"][m] for r in runs]) for m in metric_names},
            "score": M.summarize([r["score"] for r in runs])}


def _setting_of(row: dict[str, Any]) -> str | None:
    return row.get("setting")


def _comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for setting, task in dict.fromkeys((_setting_of(r), r["task"]) for r in results):
        rows = [r for r in results if r["task"] == task and _setting_of(r) == setting and r["runs"]]
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
            out.append({"setting": setting, "task": task, "representation": r["representation"],
                        "best": best["representation"], "is_best": r is best, "p_value": p,
                        "within_noise": None if p is None else bool(r is best or p >= NOISE_ALPHA),
                        "ci_overlap": overlap})
    return out


def _taxonomy(results: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    level = {t["name"]: t["taxonomy"] for t in tasks}
    out = []
    for setting in dict.fromkeys(_setting_of(r) for r in results):
        mine = [r for r in results if _setting_of(r) == setting]
        for rep in dict.fromkeys(r["representation"] for r in mine):
            for lev in dict.fromkeys(t["taxonomy"] for t in tasks):
                rows = [r for r in mine if r["representation"] == rep and level[r["task"]] == lev and r["runs"]]
                if not rows:
                    continue
                n = min(len(r["runs"]) for r in rows)
                per_seed = [float(np.mean([r["runs"][i]["score"] for r in rows])) for i in range(n)]
                out.append({"setting": setting, "representation": rep, "level": lev, "tasks": [r["task"] for r in rows],
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
            "n_groups": len({c.group for c in td.clips}),
            "skipped": [list(s) for s in td.skipped]}


def split_used(proto: Protocol, td: TaskData, split: str | None = None) -> str:
    """The split used on a task: "predefined", "random" or "kfold" (see the module doc).
    ``split``: the run's choice for this task (default the protocol's)."""
    split = split or proto.split
    if split == "predefined-else-random":
        return "predefined" if td.split_source == "predefined" else "random"
    return split


def mix_layers_of(layer_names: Sequence[str], n_layers: int) -> list[int] | None:
    """The hidden states a weighted-sum probe mixes: all but the input embedding (MARBLE: layers 1..L).

    None (= all) when the names do not describe the features."""
    if len(layer_names) != n_layers:
        return None
    return [i for i, name in enumerate(layer_names) if name != INPUT_LAYER]


@dataclasses.dataclass
class _Features:
    """One representation's features of one task under one pooling (shared by the settings)."""

    feats: np.ndarray | None  # (n_clips, n_layers, D); None for chance
    ok: np.ndarray  # (n_clips,) bool
    failures: list[dict[str, str]]
    layer_names: list[str]
    extract_s: float


def _features_of_task(reps: Sequence[Representation], task: Task, clips: Sequence, pooling: str, *,
                      cache: FeatureCache, skip_missing: bool, progress: bool) -> dict[str, _Features]:
    """Every representation's features of one task under one pooling, by name: one pass over the
    clips that decodes each clip once for all of them (``FeatureCache.get_many``); ``extract_s`` is
    that pass's time, shared by the representations it served."""
    t0 = time.time()
    out = {r.name: _Features(None, np.ones(len(clips), bool), [], r.layer_names, 0.0)
           for r in reps if r.predictor == "chance"}
    learned = [r for r in reps if r.predictor != "chance"]
    if learned:
        got = cache.get_many(learned, task.name, clips, pooling=pooling, skip_errors=skip_missing, progress=progress)
        spent = round(time.time() - t0, 3)
        for r in learned:
            g = got[r.name]
            out[r.name] = _Features(g.features, g.ok, g.failures, g.layer_names, spent)
    return out


def _fit_predict(rep: Representation, f: _Features, td: TaskData, task: Task, probe: Any, seed: int,
                 y_all: np.ndarray, mask_all: np.ndarray | None, tr: np.ndarray, va: np.ndarray, te: np.ndarray,
                 mix: list[int] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Train one probe (or the chance predictor) on ``tr`` (selecting on ``va``); test predictions ``(len(te), C)``."""
    n_out = len(td.classes)
    m_tr = mask_all[tr] if mask_all is not None else None
    m_va = mask_all[va] if mask_all is not None else None
    if rep.predictor == "chance":
        return fit_chance(y_all[tr], len(te), label_type=td.label_type, n_outputs=n_out, mask_train=m_tr), {"predictor": "chance"}
    feats = f.feats
    out = run_probe(feats[tr], y_all[tr], feats[te], label_type=td.label_type, n_outputs=n_out,
                    config=probe, seed=seed, score_fn=task_score_fn(task, td),
                    x_valid=feats[va] if len(va) else None, y_valid=y_all[va] if len(va) else None,
                    mask_train=m_tr, mask_valid=m_va, mix_layers=mix)
    selected = dict(out.selected)
    if selected.get("layer") not in (None, "weighted"):
        selected["layer_name"] = f.layer_names[int(selected["layer"])]
    return out.test_pred, selected


def _evaluate(rep: Representation, task: Task, td: TaskData, proto: Protocol, setting: Setting, seeds: Sequence[int],
              f: _Features, *, split: str, folds: Mapping[int, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One (setting, representation, task) result row, one probe run per seed (per fold with k-fold),
    and what the power analysis needs (test clip indices and predictions per seed)."""
    clips = td.clips
    y_all, mask_all = task_targets(td, clips)
    score_names = task.score_metrics or [task.primary_metric]
    splits = np.array([c.split for c in clips])
    keep = np.nonzero(f.ok)[0]
    n_layers = f.feats.shape[1] if f.feats is not None else 1
    # a setting naming hidden states reads the only one of a single-state representation (a baseline)
    probe = dataclasses.replace(proto.probe, layers=setting.layers if n_layers > 1 or isinstance(setting.layers, str)
                                else "last")
    mix = mix_layers_of(f.layer_names, n_layers)
    needs_valid = rep.predictor != "chance" and (
        len(grid_configs(n_layers, probe, mix_layers=mix)) > 1 or probe.early_stop_patience is not None
        or probe.lr_plateau_patience is not None)
    runs, kept = [], {"test": [], "preds": [], "folds": []}
    for seed in seeds:
        t1 = time.time()
        fold_rows = None
        if split == "kfold":
            fold = folds[seed]
            pred = None
            fold_rows = []
            ok = np.zeros(len(clips), bool)
            ok[keep] = True
            for k in range(int(fold.max()) + 1):
                tr, va, te_k = (a[ok[a]] for a in kfold_indices(fold, k, with_validation=needs_valid))
                if len(tr) == 0 or len(te_k) == 0:
                    raise DataError(f"task {task.name}: fold {k} has {len(tr)} train and {len(te_k)} test clips after "
                                    "dropping failures; need both")
                p_k, sel_k = _fit_predict(rep, f, td, task, probe, seed, y_all, mask_all, tr, va, te_k, mix)
                if pred is None:
                    pred = np.zeros((len(clips), p_k.shape[1]), np.float32)
                pred[te_k] = p_k
                fold_rows.append({"fold": k, "n_train": int(len(tr)), "n_valid": int(len(va)), "n_test": int(len(te_k)),
                                  "selected": sel_k})
            te = keep
            pred = pred[te]
            fold_te = fold[te]
            selected = fold_rows[0]["selected"]
            n_tr = int(round(np.mean([r["n_train"] for r in fold_rows])))
            n_va = int(round(np.mean([r["n_valid"] for r in fold_rows])))
        else:
            fold_te = None
            if split == "random":
                tr, te = random_group_split([clips[i] for i in keep], y_all[keep], label_type=td.label_type,
                                            test_fraction=proto.test_fraction, seed=seed)
                tr, te, va = keep[tr], keep[te], np.zeros(0, np.int64)
            elif split == "predefined" and proto.split == "predefined-else-random":  # Kim: train + valid vs test
                tr = keep[np.isin(splits[keep], ("train", "valid"))]
                te = keep[splits[keep] == "test"]
                va = np.zeros(0, np.int64)
            else:
                tr = keep[splits[keep] == "train"]
                va = keep[splits[keep] == "valid"]
                te = keep[splits[keep] == "test"]
                if len(va) == 0 and needs_valid:
                    tr, va = carve_validation(clips, tr, seed=seed)
            if len(tr) == 0 or len(te) == 0:
                raise DataError(f"task {task.name}: {len(tr)} train and {len(te)} test clips after dropping failures; "
                                "need both")
            pred, selected = _fit_predict(rep, f, td, task, probe, seed, y_all, mask_all, tr, va, te, mix)
            n_tr, n_va = int(len(tr)), int(len(va))
        m_te = mask_all[te] if mask_all is not None else None
        if fold_te is not None:  # k-fold: per fold, averaged by fold size (tasks.metrics.compute_fold_metrics)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # AUC columns left out on a small fold
                vals = M.compute_fold_metrics(list(dict.fromkeys(task.metrics + score_names)), y_all[te], pred, fold_te,
                                              label_type=td.label_type, classes=td.classes, target_mask=m_te)
        else:
            vals = M.compute_metrics(task.metrics, y_all[te], pred, label_type=td.label_type, classes=td.classes,
                                     target_mask=m_te)
        for m in score_names:
            if m not in vals:
                vals[m] = M.compute_metric(m, y_all[te], pred, label_type=td.label_type, classes=td.classes,
                                           target_mask=m_te)
        run = {"seed": seed, "split": split, "metrics": vals, "score": M.task_score(vals, score_names),
               "selected": selected, "n_train": n_tr, "n_valid": n_va, "n_test": int(len(te)),
               "time_s": round(time.time() - t1, 3)}
        if fold_rows is not None:
            run["folds"] = fold_rows
        runs.append(run)
        kept["test"].append(te)
        kept["preds"].append(pred)
        kept["folds"].append(fold_te)
    row = {"setting": setting.name, "representation": rep.name, "task": task.name, "split": split,
           "pooling": setting.pooling, "layers": probe.layers if isinstance(probe.layers, str) else list(probe.layers),
           "runs": runs, "summary": _summaries(runs, list(dict.fromkeys(task.metrics + score_names))),
           "failures": f.failures, "layer_names": f.layer_names,
           "feature_shape": list(f.feats.shape[1:]) if f.feats is not None else None, "extract_s": f.extract_s}
    return row, kept


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
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
    return seed_list


def _split_for(split: str | Mapping[str, str] | None, task: str, proto: Protocol) -> str:
    if split is None:
        return proto.split
    if isinstance(split, str):
        return split
    return split.get(task, split.get("*", proto.split))


def run_benchmark(representations: Sequence[Representation], tasks: Sequence[Any], *, protocol: str | Protocol = "marble",
                  seeds: int | Sequence[int] | None = None, out_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, skip_missing: bool = False, progress: bool = True,
                  probe_overrides: dict[str, Any] | None = None, sections: Sequence[Section] = (),
                  echo: Callable[[str], None] | None = None, settings: Sequence[str | Setting] | None = None,
                  split: str | Mapping[str, str] | None = None, n_folds: int | None = None,
                  pairs: Sequence[tuple[str, str]] = (), power: bool = True, n_boot: int = P.N_BOOT,
                  workers: int = 1) -> dict[str, Any]:
    """Run the benchmark; return the results dict (written with the report when ``out_dir`` is set).

    ``tasks``: ``"name[:PATH]"`` specs, :class:`Task` objects, loaded :class:`TaskData`, or
    ``(Task, TaskData)`` pairs. ``seeds``: a count (seeds 0..K-1) or explicit seeds; default the
    protocol's. ``probe_overrides``: :class:`ProbeConfig` fields to change (e.g. ``max_epochs``),
    recorded in the results (a setting's ``layers`` wins over an overridden ``layers``). ``echo``:
    a callable for one-line progress messages. ``settings``: registered names (``"paper"``,
    ``"marble"``, ``"paper-meanstd"``, ``"marble-meanstd"``), ``"NAME=LAYERS[:POOLING]"`` specs or
    :class:`Setting` objects, all probed in this run (default: one, the protocol's). ``split``:
    the protocol's split for every task, one of ``SPLITS`` for all, or ``{task: split}`` (key
    ``"*"`` = the others); ``n_folds``: folds of the ``kfold`` split (default the protocol's, 5).
    ``pairs``: ``(a, b)`` representation names compared per task and setting by a paired group
    bootstrap over the test pieces. ``power``: record each task's minimum detectable difference.
    ``workers``: processes for the probe fits (:func:`m3bert.evaluate.jobs.run_jobs`, one torch thread
    each; the scores do not depend on it).
    """
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"run_benchmark workers={workers!r}: expected a number of processes >= 1")
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if probe_overrides:
        proto = dataclasses.replace(proto, probe=dataclasses.replace(proto.probe, **probe_overrides))
    if n_folds is not None:
        proto = dataclasses.replace(proto, n_folds=n_folds)
    seed_list = _seed_list(proto.default_seeds if seeds is None else seeds)
    setting_list = resolve_settings(settings, proto)
    for s in ([split] if isinstance(split, str) else list(split.values()) if split is not None else []):
        check_split(s, proto.n_folds, where="run_benchmark")
    check_split(proto.split, proto.n_folds, where=f"protocol {proto.name}")
    if not representations:
        raise ConfigError("nothing to benchmark: give at least one representation (--model, --baseline, --embeddings, --hear)")
    if not tasks:
        raise ConfigError("nothing to benchmark: give at least one --task")
    names = [r.name for r in representations]
    if len(set(names)) != len(names):
        raise ConfigError(f"representation names must be unique, got {names}")
    for a, b in pairs:
        if a not in names or b not in names:
            raise ConfigError(f"pairs: ({a!r}, {b!r}) names a representation not in this run; have {names}")
    for rep in representations:
        if rep.predictor != "chance":
            for s in setting_list:
                rep.check_pooling(s.pooling)  # fail before any extraction
    say = echo or (lambda msg: None)
    cache = FeatureCache(cache_dir)
    started = time.time()
    task_rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    power_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    rep_rows: dict[str, dict[str, Any]] = {}
    poolings = list(dict.fromkeys(s.pooling for s in setting_list))

    # The models compared (M3BERT, M2BERT, a random encoder) share each clip's input features
    # through one memo for this run; leaving the block detaches it, and it goes with the run.
    memo = FeatureMemo(FEATURE_MEMO_BYTES)
    with contextlib.ExitStack() as sharing:
        for rep in representations:
            sharing.enter_context(rep.sharing_input_features(memo))
        for spec in tasks:
            task, td = _load_task(spec, skip_missing=skip_missing)
            task_rows.append(_task_row(task, td))
            split_t = split_used(proto, td, _split_for(split, task.name, proto))
            folds: dict[int, np.ndarray] = {}
            if split_t == "kfold":  # drawn once per task and seed: the same folds for every representation and setting
                y_all = td.target_matrix(td.clips)
                folds = {sd: group_kfold([c.group for c in td.clips], y_all, label_type=td.label_type,
                                         n_folds=proto.n_folds, seed=sd) for sd in seed_list}
            task_rows[-1]["split_used"] = split_t
            say(f"task {task.name}: {len(td.clips)} clips ({task_rows[-1]['n_clips']}), {len(td.skipped)} skipped"
                + (f"; {proto.n_folds}-fold cross-validation by piece" if split_t == "kfold" else ""))
            kept: dict[str, dict[str, dict[str, Any]]] = {s.name: {} for s in setting_list}
            rows_t: dict[str, list[dict[str, Any]]] = {s.name: [] for s in setting_list}
            reps_t = [rep.for_task(td.root) if isinstance(rep, EmbeddingsDirRepresentation) else rep
                      for rep in representations]
            # extracted once per pooling (one decoding pass for all representations), shared by the
            # settings that pool alike
            feats_of = {pooling: _features_of_task(reps_t, task, td.clips, pooling, cache=cache,
                                                   skip_missing=skip_missing, progress=progress)
                        for pooling in poolings}
            # every (representation, setting) fit of this task, in report order; run in `workers` processes
            jobs, order = [], []
            for rep, rep_t in zip(representations, reps_t):
                for pooling in poolings:
                    f = feats_of[pooling][rep_t.name]
                    for s in (s for s in setting_list if s.pooling == pooling):
                        jobs.append(functools.partial(_evaluate, rep_t, task, td, proto, s, seed_list, f, split=split_t,
                                                      folds=folds))
                        order.append((rep, s))
                rep_rows.setdefault(rep.name, rep_t.describe())
            for (rep, s), (row, k) in zip(order, run_jobs(jobs, workers=workers)):
                results.append(row)
                rows_t[s.name].append(row)
                kept[s.name][rep.name] = k
                sc = row["summary"]["score"]
                say(f"  {rep.name:>20s} on {task.name}" + (f" [{s.name}]" if len(setting_list) > 1 else "")
                    + f": score {sc['mean']:.4f}"
                    + (f" ± {sc['half_width']:.4f}" if sc["half_width"] is not None else "")
                    + (f" ({len(row['failures'])} clip(s) failed)" if row["failures"] else ""))
            for s in setting_list:
                if power:
                    pw = P.task_power(rows_t[s.name], kept[s.name], task, td, n_boot=n_boot)
                    if pw is not None:
                        power_rows.append(pw)
                for a, b in pairs:
                    pr = P.pair_comparison(s.name, task, td, a, b, kept[s.name], n_boot=n_boot)
                    if pr is not None:
                        pair_rows.append(pr)

    out = {
        "format": RESULTS_FORMAT, "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {"name": proto.name, "description": proto.description, "pooling": proto.pooling, "split": proto.split,
                     "test_fraction": proto.test_fraction, "n_folds": proto.n_folds, "probe": config_to_dict(proto.probe)},
        "settings": [s.to_dict() for s in setting_list],
        "split": split if split is None or isinstance(split, str) else dict(split),
        "seeds": seed_list, "confidence": 0.95, "noise_rule": NOISE_RULE,
        "config": {"cache_dir": str(cache_dir) if cache_dir else None, "skip_missing": skip_missing},
        "versions": versions(),
        "representations": [rep_rows[n] for n in names if n in rep_rows],
        "tasks": task_rows, "results": results,
        "comparisons": _comparisons(results),
        "taxonomy": _taxonomy(results, task_rows),
        "layer_selection": layer_selection(results),
        "power": power_rows, "power_rule": P.MDD_RULE, "pairs": pair_rows,
        "elapsed_s": round(time.time() - started, 2),
        "sections": [],
    }
    if out_dir is not None:
        write_report(out, out_dir, sections=sections)
    return out
