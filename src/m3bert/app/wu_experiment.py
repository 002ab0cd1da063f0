"""``m3bert wu-ablation``: Wu et al. (2021)'s worker ablation (sec. 4.2-4.3, Figs. 3-5) on a built-in corpus.

Longer than 500 lines because the claims, their per-seed tests, the verdicts and the report that
prints them are one unit with the runs they read; split, a claim's wording and its test would drift apart.

1. A pre-training store of a seeded subset of the corpus's training clips as 16 kHz waveform rows
   (feature set ``wave16k``) and the worker targets of the five feature workers (L, P, M, C, T; W
   needs none), built once (:func:`~m3bert.pretrain.worker_targets.build_worker_targets`).
2. One pre-training run of a small PASE+ (``model``, default ``pase+-tiny``) per worker set (WLP,
   WLP+M, WLP+C, WLP+T, WLP+MCT = all) x loss weighting (equal, re-weighted) x seed, same budget
   each, under ``OUT/runs/NAME`` (:func:`~m3bert.pretrain.workers.pretrain_workers`): a finished run
   is skipped, an interrupted one resumes exactly, a run folder of other settings is refused. A
   re-weighted run takes its weights from the first ``reweight_epochs`` epochs of the *equal* run of
   the same worker set and seed (the equal-weighted training Wu et al. calibrate on: same config,
   seed and schedule), so that phase is not trained twice.
3. Every pre-trained encoder, frozen, probed with the ``wu`` protocol (sec. 3.4) on the built-in
   analogues of the paper's downstream tasks: ``dance`` (rhythm: Extended Ballroom), ``instrument``
   (OpenMIC), ``style`` (genre: FMA); macro-F1, the mean over the probe trials of each encoder.
   The untrained PASE+ and, optionally, an M2BERT model (``--m2bert``) are probed beside them.
4. The paper's Figure 3 / 4 / 5 claims (:data:`CLAIMS`), each turned into one number per
   pre-training seed, summarised with a 95 % t-interval over seeds and marked: ``holds`` (the
   interval excludes 0 on the claimed side), ``does not hold`` (excludes 0 on the other side),
   ``within noise`` (contains 0) or ``untested`` (not measurable here: fewer than 2 seeds, a worker
   set or task left out, per-worker losses not logged, a zero baseline; the reason is given).
5. ``OUT/report.md``, ``OUT/report.json``, ``OUT/wu_ablation.png``; :func:`report_section` gives
   the same as a :class:`~m3bert.evaluate.report.Section` for the benchmark / demo reports.

Deviations (CPU scale; the report states the sizes): a tiny PASE+, ~15 min of synthetic music
instead of 83 h of AudioSet, tens of steps instead of epochs; Wu's "first 10 epochs" of the
calibration become ``reweight_epochs`` epochs (one validation each); the probes see a seeded
subset of each task (``task_clips`` per split). Fig. 5 does not say which weighting it uses, so
its claims are tested under each. Relative improvement is ``100 (F1(WLP+X) - F1(WLP)) / F1(WLP)``
per seed and task, as Fig. 5 plots it; the Fig. 4 claims read the all-worker runs' mean
validation loss per worker (re-weighted: weight x loss).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.figure
import numpy as np
import torch

from m3bert.core.config import bounded, from_dict, to_dict
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, config_hash, json_default, read_json
from m3bert.corpus.layout import read_metadata
from m3bert.evaluate.report import Figure, Section, Table, figure_png, load_results
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.evaluate.wu_protocol import WU_PROTOCOL
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store
from m3bert.models.base import create_model, named_config
from m3bert.pretrain.data import split_by_group, store_groups
from m3bert.pretrain.loop import DataConfig, load_pretrain_config
from m3bert.pretrain.worker_targets import build_worker_targets
from m3bert.pretrain.workers import is_reweighted_run, pretrain_workers, reweight_from_log, worker_curves
from m3bert.tasks import metrics as M
from m3bert.tasks.registry import parse_task_spec

WORKER_SETS = {"WLP": "W,L,P", "WLP+M": "W,L,P,M", "WLP+C": "W,L,P,C", "WLP+T": "W,L,P,T", "WLP+MCT": "W,L,P,M,C,T"}
WEIGHTINGS = ("equal", "reweighted")
# built-in task -> the paper's dataset it stands in for (same kind of label)
PAPER_TASKS = {"dance": "Extended Ballroom", "instrument": "OpenMIC", "style": "FMA Small"}
VERDICTS = ("holds", "does not hold", "within noise", "untested")
METRIC = "macro_f1"


@dataclass
class WuExperimentConfig:
    """Sizes and budgets of the worker ablation (presets :data:`PRESETS`)."""

    model: str = "pase+-tiny"  # registered model config pre-trained for every cell
    worker_sets: tuple[str, ...] = tuple(WORKER_SETS)  # labels of WORKER_SETS
    weightings: tuple[str, ...] = WEIGHTINGS  # equal | reweighted
    seeds: int = bounded(3, ge=1)  # pre-training seeds per (worker set, weighting): the CIs are over these
    steps: int = bounded(30, ge=1)  # optimizer steps per pre-training run (2 epochs of pretrain_clips)
    batch_size: int = bounded(8, ge=1)  # chunks per step
    crop_frames: int = bounded(100, ge=1)  # 10 ms frames per random training crop (100 = 1 s)
    lr: float = bounded(1e-3, gt=0)  # Adam peak lr (high: the runs are short)
    reweight_epochs: int = bounded(1, ge=1)  # epochs of the equal run whose validations give the re-weights (paper: 10)
    pretrain_clips: int = bounded(120, ge=0)  # train-split clips in the pre-training store, seeded subset; 0 = all
    tasks: tuple[str, ...] = tuple(PAPER_TASKS)  # built-in tasks probed (macro-F1)
    probe_trials: int = bounded(5, ge=1)  # probe seeds per encoder and task (paper: 10 trials)
    probe_max_epochs: int = bounded(200, ge=1)  # cap on probe epochs (early stopping, patience 10, ends them first)
    precision: str = "fp32"  # fp32 | bf16 pre-training
    # torch threads for the whole experiment (0 = leave torch's): 1, because these small encoders ran 5-10x
    # slower with 2 threads than with 1 on the shared 2-core machine (measured, load average ~10)
    threads: int = bounded(1, ge=0)
    task_clips: int = bounded(20, ge=0)  # clips per task and split probed, a seeded subset (0 = all)
    clip_seconds: float = bounded(4.0, ge=0)  # probe the first seconds of each clip only (0 = whole clips)
    seed: int = bounded(0, ge=0)  # first pre-training seed; seeds are seed, seed + 1, ...
    plots: bool = True  # each run draws its per-worker loss figure (Fig. 4), ~1 s a run
    # workers regress standardised targets (PASE's choice; Wu et al. do not say). Fig. 4's loss magnitudes
    # (L dominating, T two orders smaller) are those of raw-scale targets: false tests them that way
    standardize_targets: bool = True

    def __post_init__(self) -> None:
        self.worker_sets, self.weightings, self.tasks = tuple(self.worker_sets), tuple(self.weightings), tuple(self.tasks)
        for name, value, known in (("worker_sets", self.worker_sets, WORKER_SETS), ("weightings", self.weightings, WEIGHTINGS)):
            bad = [v for v in value if v not in known]
            if bad or not value:
                raise ConfigError(f"wu-ablation {name}={list(value)}: unknown {bad}; expected some of {list(known)}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"wu-ablation precision={self.precision!r}; expected fp32 or bf16")
        if not self.tasks:
            raise ConfigError("wu-ablation tasks: expected at least one built-in task")


PRESETS: dict[str, dict[str, Any]] = {
    "small": {},  # the defaults: sized to ~20 min on 2 cores (the report records the timings)
    # the test preset: every stage, ~1 min
    "tiny": dict(seeds=2, steps=2, batch_size=2, crop_frames=50, reweight_epochs=1, pretrain_clips=6,
                 probe_trials=2, probe_max_epochs=20, plots=False, task_clips=3, clip_seconds=2.0),
}


def experiment_config(preset: str = "small", overrides: Mapping[str, Any] | None = None) -> WuExperimentConfig:
    """A preset with keyword overrides (``{"seeds": 5}``), checked by the shared config loader."""
    if preset not in PRESETS:
        raise ConfigError(f"wu-ablation preset={preset!r}; expected one of {sorted(PRESETS)}")
    return from_dict(WuExperimentConfig, {**PRESETS[preset], **dict(overrides or {})}, where="wu-ablation")


@dataclass(frozen=True)
class Cell:
    """One pre-training run of the plan."""

    worker_set: str  # label of WORKER_SETS
    weighting: str  # equal | reweighted
    seed: int  # pre-training seed

    @property
    def name(self) -> str:
        return f"{self.worker_set.replace('+', '-')}-{self.weighting}-s{self.seed}"

    @property
    def workers(self) -> str:
        return WORKER_SETS[self.worker_set]


def plan(cfg: WuExperimentConfig) -> list[Cell]:
    """Every run, equal before re-weighted for each worker set and seed (a re-weighted run reads the
    equal run's first validations)."""
    return [Cell(ws, w, cfg.seed + s) for s in range(cfg.seeds) for ws in cfg.worker_sets for w in cfg.weightings]


# ---------------------------------------------------------------------------------------------
# Claims: each a number per seed, from the score table (and, for Fig. 4, the per-worker losses)
# ---------------------------------------------------------------------------------------------

Scores = Mapping[tuple[str, str, str, int], float]  # (worker set, weighting, task, seed) -> macro-F1
Losses = Mapping[tuple[str, int], Mapping[str, Any]]  # (weighting, seed) -> {"losses": {worker: mean}, "weighted": {...}}


class Untested(Exception):
    """A claim cannot be measured on this plan; the message says why."""


def _s(scores: Scores, ws: str, w: str, task: str, seed: int) -> float:
    key = (ws, w, task, seed)
    if key not in scores:
        raise Untested(f"no score for {ws} / {w} on {task} (seed {seed}): not in the plan")
    return float(scores[key])


def rel(scores: Scores, extra: str, w: str, task: str, seed: int) -> float:
    """Relative improvement (%) of WLP+``extra`` over WLP (Fig. 5)."""
    base = _s(scores, "WLP", w, task, seed)
    if base <= 0:
        raise Untested(f"WLP scores macro-F1 0 on {task} (seed {seed}): no relative improvement")
    return 100.0 * (_s(scores, f"WLP+{extra}", w, task, seed) - base) / base


def _tasks(tasks: Sequence[str], *need: str) -> list[str]:
    missing = [t for t in need if t not in tasks]
    if missing:
        raise Untested(f"task(s) {missing} not probed")
    return list(tasks)


def _log_losses(losses: Losses, w: str, seed: int, *, weighted: bool = False) -> dict[str, float]:
    """log10 of the all-worker ``w`` run's mean validation loss per worker (``weighted``: weight x loss)."""
    rec = losses.get((w, seed))
    key = "weighted" if weighted else "losses"
    if not rec or not rec.get(key):
        raise Untested(f"no per-worker validation losses logged for the all-worker {w} run (seed {seed})")
    out = {}
    for k, v in rec[key].items():
        if not float(v) > 0:
            raise Untested(f"worker {k} loss {v} is not > 0: no log ratio")
        out[k] = math.log10(float(v))
    return out


def _need_workers(logs: dict[str, float], *names: str) -> None:
    if any(n not in logs for n in names):
        raise Untested(f"workers {[n for n in names if n not in logs]} not logged")


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, quoted, and the per-seed number that tests it."""

    id: str  # short id, e.g. "3a"
    figure: str  # "Fig. 3" | "Fig. 4" | "Fig. 5"
    quote: str  # the paper's words (sec. 4.2 / 4.3)
    test: str  # what is measured, in words
    direction: int  # +1: the claim says the number is > 0; -1: < 0
    per_seed: Callable[[Scores, Losses, Sequence[str], str, int], float]  # (scores, losses, tasks, weighting, seed)
    weighting: str | None = None  # the weighting a Fig. 5 claim is judged under (None: the claim compares them)
    paper_value: str = ""  # the paper's number, where it gives one


def _rw_gain(ws_list: Sequence[str] | None, task: str | None):
    """Mean of F1(re-weighted) - F1(equal) over ``ws_list`` (None: every worker set scored) and
    ``task`` (None: every task probed)."""
    def f(sc: Scores, lo: Losses, tasks: Sequence[str], w: str, seed: int) -> float:
        sets = ws_list if ws_list is not None else list(dict.fromkeys(k[0] for k in sc))
        if task is not None:
            _tasks(tasks, task)
        ts = tasks if task is None else [task]
        return float(np.mean([_s(sc, ws, "reweighted", t, seed) - _s(sc, ws, "equal", t, seed) for ws in sets for t in ts]))
    return f


def _t_most(sc, lo, tasks, w, seed):
    gaps = [np.mean([rel(sc, "T", w, t, seed) - rel(sc, x, w, t, seed) for t in tasks]) for x in ("M", "C")]
    return float(min(gaps))


def _t_especially_dance(sc, lo, tasks, w, seed):
    others = [t for t in _tasks(tasks, "dance") if t != "dance"]
    if not others:
        raise Untested("only dance probed: nothing to compare it with")
    return rel(sc, "T", w, "dance", seed) - float(np.mean([rel(sc, "T", w, t, seed) for t in others]))


def _single(extra: str, task: str):
    def f(sc, lo, tasks, w, seed):
        _tasks(tasks, task)
        return rel(sc, extra, w, task, seed)
    return f


def _l_dominates(sc, lo, tasks, w, seed):
    logs = _log_losses(lo, "equal", seed)
    _need_workers(logs, "L")
    return min(logs["L"] - v for k, v in logs.items() if k != "L")


def _t_least(sc, lo, tasks, w, seed):
    logs = _log_losses(lo, "equal", seed)
    _need_workers(logs, "T")
    return logs["T"] - min(v for k, v in logs.items() if k != "T")


def _more_equal(sc, lo, tasks, w, seed):
    spread = {w2: float(np.std(list(_log_losses(lo, w2, seed, weighted=w2 == "reweighted").values())))
              for w2 in WEIGHTINGS}
    return spread["reweighted"] - spread["equal"]


FIG5 = [
    ("5a", "Tempogram helps the most across all different combinations",
     "min over X in {M, C} of the task mean of rel(WLP+T) - rel(WLP+X), %", +1, _t_most, ""),
    ("5b", "[Tempogram helps] especially for Extended Ballroom",
     "rel(WLP+T) on dance minus its mean on the other tasks, %", +1, _t_especially_dance, ""),
    ("5c", "MFCC is usually important for most of the downstream tasks",
     "task mean of rel(WLP+M), %", +1, lambda sc, lo, tasks, w, seed: float(np.mean([rel(sc, "M", w, t, seed) for t in tasks])), ""),
    ("5d", "Chroma is however at a disadvantage, especially for OpenMIC",
     "rel(WLP+C) on instrument (OpenMIC's analogue), %", -1, _single("C", "instrument"), ""),
    ("5e", "MFCC only hurts slightly on Extended Ballroom",
     "rel(WLP+M) on dance (Ballroom's analogue), %", -1, _single("M", "dance"), ""),
    ("5f", "relative improvement adding all workers compared to WLP baseline by 1.9% [...] on OpenMIC",
     "rel(WLP+MCT) on instrument, %", +1, _single("MCT", "instrument"), "+1.9 %"),
    ("5g", "[...] 4.5% [...] on FMA", "rel(WLP+MCT) on style (FMA's analogue), %", +1, _single("MCT", "style"), "+4.5 %"),
    ("5h", "[...] and 14% on [...] Extended Ballroom", "rel(WLP+MCT) on dance, %", +1, _single("MCT", "dance"), "+14 %"),
]

CLAIMS: list[Claim] = [
    Claim("3a", "Fig. 3", "re-weighted mechanism [...] helps to boost the influences from various workers to the "
          "performance of downstream tasks in general",
          "mean over worker sets and tasks of F1(re-weighted) - F1(equal)", +1, _rw_gain(None, None)),
    Claim("3b", "Fig. 3", "For Extended Ballroom [...] results with workers containing Tempogram are improved by a large margin",
          "dance: mean over WLP+T, WLP+MCT of F1(re-weighted) - F1(equal)", +1,
          _rw_gain(["WLP+T", "WLP+MCT"], "dance")),
    Claim("4a", "Fig. 4", "with equal weighted [...] LPS (L) almost dominates all losses",
          "all-workers equal run: min over workers k != L of log10(loss_L / loss_k)", +1, _l_dominates),
    Claim("4b", "Fig. 4", "Tempogram (T) worker loss contributes the least with two orders of magnitude smaller",
          "all-workers equal run: log10(loss_T) - min over k != T of log10(loss_k)", -1, _t_least, paper_value="~ -2"),
    Claim("4c", "Fig. 4", "for re-weighted [...] each worker contributes more equally",
          "std over workers of log10(weight x loss): re-weighted run minus equal run", -1, _more_equal),
] + [Claim(cid, "Fig. 5", quote, test, d, fn, weighting=w, paper_value=pv)
     for w in WEIGHTINGS for cid, quote, test, d, fn, pv in FIG5]


def verdict(values: Sequence[float], direction: int) -> tuple[str, dict[str, Any] | None]:
    """The verdict of per-seed values for a claim that they are > 0 (``direction`` +1) or < 0 (-1)."""
    if len(values) < 2:
        return "untested", None
    s = M.summarize(values)
    lo, hi = s["ci_low"] * direction, s["ci_high"] * direction
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "holds", s
    if hi < 0:
        return "does not hold", s
    return "within noise", s


def evaluate_claims(scores: Scores, losses: Losses, *, tasks: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every claim of :data:`CLAIMS`: its per-seed numbers, 95 % CI over seeds and verdict."""
    out = []
    for c in CLAIMS:
        row: dict[str, Any] = {"id": c.id if c.weighting is None else f"{c.id}-{c.weighting}", "figure": c.figure,
                               "quote": c.quote, "test": c.test, "direction": c.direction, "weighting": c.weighting,
                               "paper_value": c.paper_value, "per_seed": {}, "summary": None, "reason": ""}
        try:
            row["per_seed"] = {int(s): float(c.per_seed(scores, losses, list(tasks), c.weighting or "", s)) for s in seeds}
            row["verdict"], row["summary"] = verdict(list(row["per_seed"].values()), c.direction)
            if row["verdict"] == "untested":
                row["reason"] = f"{len(seeds)} seed(s): a CI needs at least 2"
        except Untested as exc:
            row["verdict"], row["reason"] = "untested", str(exc)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Scores from a benchmark, summaries, the report
# ---------------------------------------------------------------------------------------------


def scores_from_results(results: Mapping[str, Any], cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple, float]:
    """``(worker set, weighting, task, seed) -> mean macro-F1 over the probe trials`` of each cell's encoder."""
    by_name = {c.name: c for c in cells}
    out = {}
    for row in results["results"]:
        cell = by_name.get(row["representation"])
        task = row["task"].removeprefix("builtin-")
        if cell is None or task not in tasks or not row["runs"]:
            continue
        out[(cell.worker_set, cell.weighting, task, cell.seed)] = float(np.mean([r["metrics"][METRIC] for r in row["runs"]]))
    return out


def cell_table(scores: Scores, cfg: WuExperimentConfig, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Macro-F1 of every (worker set, weighting, task): summary over seeds (Fig. 3's points and bars)."""
    rows = []
    for ws in cfg.worker_sets:
        for w in cfg.weightings:
            for t in cfg.tasks:
                vals = [scores[(ws, w, t, s)] for s in seeds if (ws, w, t, s) in scores]
                rows.append({"worker_set": ws, "weighting": w, "task": t, "summary": M.summarize(vals) if vals else None})
    return rows


def relative_table(scores: Scores, cfg: WuExperimentConfig, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Relative improvement (%) over WLP of every other worker set (Fig. 5), summary over seeds."""
    rows = []
    for ws in [w for w in cfg.worker_sets if w != "WLP"]:
        for w in cfg.weightings:
            for t in cfg.tasks:
                vals = []
                for s in seeds:
                    try:
                        vals.append(rel(scores, ws.removeprefix("WLP+"), w, t, s))
                    except Untested:
                        pass
                rows.append({"worker_set": ws, "weighting": w, "task": t, "summary": M.summarize(vals) if vals else None})
    return rows


def _ci(s: Mapping[str, Any] | None, *, digits: int = 3) -> str:
    if not s:
        return "-"
    if s.get("half_width") is None:
        return f"{s['mean']:+.{digits}f}"
    return f"{s['mean']:+.{digits}f} [{s['ci_low']:+.{digits}f}, {s['ci_high']:+.{digits}f}]"


def _f1(s: Mapping[str, Any] | None) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.3f}" + (f" ± {s['half_width']:.3f}" if s.get("half_width") is not None else "")


def claims_table(claims: Sequence[Mapping[str, Any]]) -> Table:
    """The claims beside the measured outcome (one row per claim, Fig. 5 claims once per weighting)."""
    rows = [[c["id"], c["figure"], f"\"{c['quote']}\"", c["test"], ">" if c["direction"] > 0 else "<",
             c["paper_value"] or "-", _ci(c["summary"]), c["verdict"] + (f" ({c['reason']})" if c["reason"] else "")]
            for c in claims]
    return Table(["id", "figure", "the paper says", "measured per seed", "claimed sign (vs 0)", "paper",
                  "mean [95 % CI over seeds]", "verdict"], rows)


def ablation_png(result: Mapping[str, Any]) -> bytes:
    """Top: macro-F1 per worker set, open = equal, filled = re-weighted, bars = 95 % CI (Fig. 3).
    Bottom: relative improvement over WLP (%) per added worker (Fig. 5)."""
    tasks = list(result["config"]["tasks"])
    sets = list(result["config"]["worker_sets"])
    fig = matplotlib.figure.Figure(figsize=(4.0 * len(tasks), 6.2))
    axes = fig.subplots(2, len(tasks), squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        for k, w in enumerate(result["config"]["weightings"]):
            for i, ws in enumerate(sets):
                s = next((r["summary"] for r in result["cells"] if r["worker_set"] == ws and r["weighting"] == w
                          and r["task"] == task), None)
                if s:
                    ax.errorbar(i + 0.15 * (k - 0.5), s["mean"], yerr=s["half_width"] or 0.0, fmt="o", capsize=3,
                                color=f"C{i}", mfc=f"C{i}" if w == "reweighted" else "white")
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(sets, fontsize=8)
        ax.set_title(f"{task} ({PAPER_TASKS.get(task, '?')}'s analogue)", fontsize=9)
        ax.set_ylabel("macro-F1" if j == 0 else "")
        ax.grid(axis="y", alpha=0.3)
        ax = axes[1][j]
        others = [ws for ws in sets if ws != "WLP"]
        for k, w in enumerate(result["config"]["weightings"]):
            for i, ws in enumerate(others):
                s = next((r["summary"] for r in result["relative"] if r["worker_set"] == ws and r["weighting"] == w
                          and r["task"] == task), None)
                if s:
                    ax.bar(i + 0.4 * (k - 0.5), s["mean"], width=0.38, yerr=s["half_width"] or 0.0, capsize=2,
                           color=f"C{i + 1}", alpha=1.0 if w == "reweighted" else 0.45, label=w if i == 0 else None)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(others)))
        ax.set_xticklabels(others, fontsize=8)
        ax.set_ylabel("relative to WLP (%)" if j == 0 else "")
        ax.grid(axis="y", alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7, title="pale: equal, solid: re-weighted", title_fontsize=7)
    fig.suptitle(f"Worker ablation (Wu et al. 2021 Figs. 3, 5) on the built-in corpus: mean ± 95 % CI over "
                 f"{len(result['seeds'])} pre-training seed(s); open marker = equal, filled = re-weighted", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def render_report(result: Mapping[str, Any]) -> str:
    """The markdown report of an experiment result (every number from ``result``)."""
    cfg = result["config"]
    counts = {v: sum(c["verdict"] == v for c in result["claims"]) for v in VERDICTS}
    task_desc = ", ".join(f"`{t}` ({PAPER_TASKS.get(t, '-')})" for t in cfg["tasks"])
    lines = [
        "## Wu et al. (2021) worker ablation, measured on the built-in corpus", "",
        f"Corpus `{result['corpus']}`: {result['pretrain_store']['n_clips']} training clips "
        f"({result['pretrain_store']['audio_s'] / 60:.1f} min) pre-train a `{cfg['model']}` "
        f"({result['n_parameters']:,} parameters) for {cfg['steps']} steps of {cfg['batch_size']} crops of "
        f"{cfg['crop_frames'] / 100:.1f} s, once per worker set x weighting x seed ({len(result['runs'])} runs, seeds "
        f"{result['seeds']}). Every encoder, frozen, is probed with the `wu` protocol (mean pooling -> MLP 512, Adam "
        f"1e-3, early stopping patience 10 on validation loss) on {task_desc}, "
        f"{cfg['probe_trials']} trial(s) each; a seed's score is the mean macro-F1 over its trials. A claim's number is "
        "computed per pre-training seed; the verdict reads its 95 % t-interval over seeds: **holds** (excludes 0 on the "
        "claimed side), **does not hold** (excludes 0 on the other side), **within noise** (contains 0), **untested** "
        "(not measurable here; the reason is given).", "",
        f"Verdicts: {', '.join(f'{n} {v}' for v, n in counts.items())}. The paper's setting differs in scale (a PASE+ "
        "of ~8M parameters, ~83 h of AudioSet music, three real datasets): a verdict here says what this small "
        "replication shows, not whether the paper is right.", "",
    ]
    t = claims_table(result["claims"])
    lines += ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in t.rows]
    lines += ["", "Macro-F1 (mean ± 95 % CI over seeds):", "",
              "| worker set | weighting | " + " | ".join(cfg["tasks"]) + " |", "|---|---|" + "---|" * len(cfg["tasks"])]
    for ws in cfg["worker_sets"]:
        for w in cfg["weightings"]:
            cells = {r["task"]: r["summary"] for r in result["cells"] if r["worker_set"] == ws and r["weighting"] == w}
            lines.append(f"| {ws} | {w} | " + " | ".join(_f1(cells.get(tk)) for tk in cfg["tasks"]) + " |")
    lines += ["", "Relative improvement over WLP, % (Fig. 5; mean [95 % CI over seeds]):", "",
              "| worker set | weighting | " + " | ".join(cfg["tasks"]) + " |", "|---|---|" + "---|" * len(cfg["tasks"])]
    for ws in [w for w in cfg["worker_sets"] if w != "WLP"]:
        for w in cfg["weightings"]:
            cells = {r["task"]: r["summary"] for r in result["relative"] if r["worker_set"] == ws and r["weighting"] == w}
            lines.append(f"| {ws} | {w} | " + " | ".join(_ci(cells.get(tk), digits=1) for tk in cfg["tasks"]) + " |")
    if result.get("worker_losses"):
        lines += ["", "Per-worker validation loss of the all-worker runs (Fig. 4; mean over the logged validations, "
                  "log10; re-weighted: log10 of weight x loss). The feature workers regress "
                  + ("standardised targets (PASE's choice), so their losses start near 1 whatever the feature's scale; "
                     "Fig. 4's magnitudes are those of raw-scale targets (`--raw-targets` tests claims 4a-4b that way):"
                     if cfg.get("standardize_targets", True) else "raw-scale targets (`--raw-targets`):"),
                  "", "| run | " + " | ".join(result["loss_workers"]) + " |",
                  "|---|" + "---|" * len(result["loss_workers"])]
        for name, rec in result["worker_losses"].items():
            src = rec["weighted"] if rec["weighting"] == "reweighted" else rec["losses"]
            vals = [math.log10(src[k]) if src.get(k, 0) > 0 else float("nan") for k in result["loss_workers"]]
            lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in vals) + " |")
    if result.get("comparison"):
        lines += ["", "Beside the untrained encoder (and M2BERT when given; all frozen, the same `wu` protocol; macro-F1, "
                  "mean ± 95 % CI over probe trials; the all-worker rows pool the trials of every seed):", "",
                  "| encoder | " + " | ".join(cfg["tasks"]) + " |", "|---|" + "---|" * len(cfg["tasks"])]
        for name, per_task in result["comparison"].items():
            lines.append(f"| {name} | " + " | ".join(_f1(per_task.get(tk)) for tk in cfg["tasks"]) + " |")
    tm = result["timings"]
    lines += ["", f"Timings (this call): store + targets {tm['inputs_s']:.0f} s, pre-training {tm['pretrain_s']:.0f} s "
              f"({len(result['runs'])} runs, recorded when each was trained), probes {tm['bench_s']:.0f} s, total "
              f"{tm['total_s']:.0f} s wall, {tm.get('cpu_s', 0):.0f} s CPU of this process; load average at the end "
              f"{(tm.get('load_average') or [0])[0]:.1f}.", ""]
    return "\n".join(lines)


def report_section(result: Mapping[str, Any], *, png: bytes | None = None) -> Section:
    """The experiment as one section of a benchmark / demo report (claims table + the figure)."""
    counts = ", ".join(f"{sum(c['verdict'] == v for c in result['claims'])} {v}" for v in VERDICTS)
    text = (f"Wu et al. (2021) Figs. 3-5 claims on the built-in corpus ({len(result['runs'])} pre-training runs of "
            f"`{result['config']['model']}`, seeds {result['seeds']}, `wu` protocol, macro-F1). Verdict from the 95 % "
            f"t-interval over pre-training seeds: {counts}. Full tables: {result.get('report', 'report.md')}.")
    figures = [Figure("macro-F1 per worker set (Fig. 3) and relative improvement over WLP (Fig. 5)", png)] if png else []
    return Section("Worker ablation (Wu et al. 2021)", text=text, table=claims_table(result["claims"]), figures=figures)


# ---------------------------------------------------------------------------------------------
# The experiment: inputs, runs, probes, claims, report
# ---------------------------------------------------------------------------------------------


def analyse(cfg: WuExperimentConfig, scores: Scores, losses: Losses, seeds: Sequence[int]) -> dict[str, Any]:
    """Every number of the report from the scores and the per-worker losses: the tables and the claims."""
    worker_losses = {f"WLP+MCT {w} s{s}": {"weighting": w, **rec} for (w, s), rec in losses.items() if rec}
    return {"scores": [{"worker_set": k[0], "weighting": k[1], "task": k[2], "seed": k[3], METRIC: v}
                       for k, v in scores.items()],
            "cells": cell_table(scores, cfg, seeds), "relative": relative_table(scores, cfg, seeds),
            "claims": evaluate_claims(scores, losses, tasks=cfg.tasks, seeds=seeds),
            "worker_losses": worker_losses,
            "loss_workers": sorted({k for rec in worker_losses.values() for k in rec["losses"]}, key="WLPMCT".find)}


def pretrain_files(corpus: Path, cfg: WuExperimentConfig) -> list[Path]:
    """The corpus's training-split clips (a seeded subset of ``pretrain_clips`` when set), sorted."""
    rows = sorted((r for r in read_metadata(corpus) if r["split"] == "train"), key=lambda r: r["clip_id"])
    if not rows:
        raise DataError(f"{corpus / 'metadata.jsonl'}: no clip in the train split to pre-train on")
    if cfg.pretrain_clips and len(rows) > cfg.pretrain_clips:
        pick = np.random.default_rng(cfg.seed).choice(len(rows), size=cfg.pretrain_clips, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return [corpus / r["path"] for r in rows]


def _pretrain_config(cfg: WuExperimentConfig, cell: Cell, targets: Path, *, steps_per_epoch: int,
                     reweight_losses: Mapping[str, float] | None = None) -> Any:
    entry = named_config(cfg.model)
    overrides: dict[str, Any] = {
        "seed": cell.seed, "architecture": entry.architecture, **{f"model.{k}": v for k, v in entry.config.items()},
        "objective.name": "workers", "objective.workers": cell.workers, "objective.targets": str(targets),
        "objective.weighting": "equal" if cell.weighting == "equal" else "reweight",
        "objective.reweight_epochs": cfg.reweight_epochs, "objective.reweight_steps_per_epoch": steps_per_epoch,
        "data.max_frames": cfg.crop_frames, "data.batch_size": cfg.batch_size, "data.effective_batch": cfg.batch_size,
        "optim.lr": cfg.lr, "train.steps": cfg.steps, "train.precision": cfg.precision, "train.device": "cpu",
        "train.threads": cfg.threads, "train.log_every": min(steps_per_epoch, cfg.steps),
        # one validation per epoch: the re-weights average the first reweight_epochs of them (Wu: 10 epochs)
        "train.eval_every": min(steps_per_epoch, cfg.steps),
        "train.save_every": min(cfg.steps, max(10, cfg.steps // 3)),  # a save costs ~0.5 s: a few per run
        "objective.plot": cfg.plots, "objective.standardize": cfg.standardize_targets,
    }
    if reweight_losses:
        overrides["objective.reweight_losses"] = dict(reweight_losses)
    return load_pretrain_config(None, overrides=overrides)


def _calibration(cfg: WuExperimentConfig, cell: Cell, runs: Path, steps_per_epoch: int) -> dict[str, float] | None:
    """A re-weighted cell's calibration: the mean validation loss per worker over the first
    ``reweight_epochs`` epochs of the *equal* run of the same worker set and seed, which is exactly the
    equal-weighted training Wu et al. calibrate on (same config, seed and schedule), so it is read
    from that run instead of being trained again; None when the plan has no equal run (then
    :func:`~m3bert.pretrain.workers.pretrain_workers` trains the calibration phase itself)."""
    if cell.weighting == "equal" or "equal" not in cfg.weightings:
        return None
    equal = runs / Cell(cell.worker_set, "equal", cell.seed).name
    n1 = min(cfg.reweight_epochs * steps_per_epoch, cfg.steps)
    return reweight_from_log(equal, cell.workers.split(","), max_step=n1, normalize=False)["mean_val_losses"]


def _pretrain_cell(cfg: WuExperimentConfig, cell: Cell, store: Path, targets: Path, runs: Path, *,
                   steps_per_epoch: int, progress: bool) -> float:
    """Train (or finish) one cell's run; returns its training seconds (recorded once, reused on resume)."""
    run = runs / cell.name
    pcfg = _pretrain_config(cfg, cell, targets, steps_per_epoch=steps_per_epoch,
                            reweight_losses=_calibration(cfg, cell, runs, steps_per_epoch))
    if (run / "run.json").is_file():
        differ = _differences(read_json(run / "run.json").get("config") or {}, pcfg.to_dict())
        if differ:
            raise ConfigError(f"{run}: trained with other settings ({'; '.join(differ[:4])}); this experiment asks "
                              "for the new ones: use a new --out (or delete that run folder)")
    done = run / "experiment-time.json"
    if done.is_file():
        return float(read_json(done)["train_s"])
    t0 = time.time()
    if (run / "run.json").is_file() or is_reweighted_run(run):  # an interrupted run: continue it exactly
        pretrain_workers(None, store=store, out=run, resume=True, progress=progress)
    else:
        if run.exists():
            shutil.rmtree(run)  # debris of a run that never wrote run.json
        pretrain_workers(pcfg, store=store, out=run, progress=progress)
    train_s = round(time.time() - t0, 2)
    atomic_write_json(done, {"train_s": train_s})
    return train_s


def _differences(stored: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as ``key: stored -> wanted``."""
    stored, wanted = json.loads(json.dumps(stored, default=json_default)), json.loads(json.dumps(wanted, default=json_default))
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _check_inputs(out: Path, corpus: Path, cfg: WuExperimentConfig) -> None:
    """One experiment folder = one pre-training store: refuse another corpus or clip selection."""
    want = {"corpus": str(corpus.resolve()), "pretrain_clips": cfg.pretrain_clips, "seed": cfg.seed}
    path = out / "inputs.json"
    if path.is_file():
        differ = _differences(read_json(path), want)
        if differ:
            raise ConfigError(f"{out}: its store was built from other inputs ({'; '.join(differ)}); use a new --out")
    else:
        atomic_write_json(path, want)


def worker_losses(run: Path) -> dict[str, Any]:
    """Mean per-worker validation loss over a run's validations (Fig. 4), unweighted and weight x loss.
    Empty when the metrics log holds no per-worker losses."""
    curves = {key: {w: [v for _, v in pts] for w, pts in worker_curves(run, weighted=key == "weighted").items()}
              for key in ("losses", "weighted")}
    if not curves["losses"]:
        return {}
    return {key: {w: float(np.mean(v)) for w, v in c.items()} for key, c in curves.items()}


def task_subset(spec: str, *, n_per_split: int, seed: int, seconds: float = 0.0) -> tuple[Any, Any]:
    """``(Task, TaskData)`` of ``spec``, keeping a seeded subset of ``n_per_split`` clips of each split (0: all),
    each cut to its first ``seconds`` (0: whole)."""
    task, root = parse_task_spec(spec)
    data = task.load(root)
    if seconds:
        clips = []
        for c in data.clips:
            start = c.start or 0.0
            end = start + seconds if c.end is None else min(c.end, start + seconds)
            clips.append(dataclasses.replace(c, start=start, end=end))
        data = dataclasses.replace(data, clips=clips)
    if n_per_split:
        rng = np.random.default_rng(seed)
        keep = []
        for split in ("train", "valid", "test"):
            idx = [i for i, c in enumerate(data.clips) if c.split == split]
            keep += sorted(rng.permutation(idx)[:n_per_split].tolist()) if len(idx) > n_per_split else idx
        data = dataclasses.replace(data, clips=[data.clips[i] for i in sorted(keep)])
    return task, data


def _bench(cfg: WuExperimentConfig, cells: Sequence[Cell], out: Path, corpus: Path, m2bert: str | None, *,
           progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Probe every encoder (reused when the same encoders and settings were probed before)."""
    reps = [ModelRepresentation(str(out / "runs" / c.name / "checkpoints" / "last"), name=c.name) for c in cells]
    reps.append(ModelRepresentation(f"random:{cfg.model}:{cfg.seed}", name=f"{cfg.model}, untrained"))
    if m2bert:
        reps.append(ModelRepresentation(str(m2bert), name="M2BERT"))
    key = config_hash({"reps": [r.cache_key for r in reps], "tasks": list(cfg.tasks), "trials": cfg.probe_trials,
                       "task_clips": cfg.task_clips, "clip_seconds": cfg.clip_seconds, "seed": cfg.seed,
                       "max_epochs": cfg.probe_max_epochs, "corpus": str(corpus)})
    bench = out / "bench"
    if (bench / "key.json").is_file() and read_json(bench / "key.json").get("key") == key and (bench / "results.json").is_file():
        say("[wu] probes: reusing bench/results.json")
        return load_results(bench / "results.json")
    tasks = [task_subset(f"builtin-{t}:{corpus}", n_per_split=cfg.task_clips, seed=cfg.seed, seconds=cfg.clip_seconds)
             for t in cfg.tasks]
    res = run_benchmark(reps, tasks, protocol=WU_PROTOCOL, seeds=cfg.probe_trials,
                        out_dir=bench, cache_dir=bench / "cache", progress=progress, echo=say,
                        probe_overrides={"max_epochs": cfg.probe_max_epochs})
    atomic_write_json(bench / "key.json", {"key": key})
    return res


def _comparison(bench: Mapping[str, Any], cfg: WuExperimentConfig, cells: Sequence[Cell]) -> dict[str, Any]:
    """M2BERT, the untrained PASE+ and the all-worker PASE+ runs (every seed's trials pooled) per task."""
    rows: dict[str, dict[str, Any]] = {}
    groups = {"M2BERT": ["M2BERT"], f"{cfg.model}, untrained": [f"{cfg.model}, untrained"]}
    for w in cfg.weightings:
        groups[f"{cfg.model} WLP+MCT {w}"] = [c.name for c in cells if c.worker_set == "WLP+MCT" and c.weighting == w]
    for label, names in groups.items():
        for row in bench["results"]:
            if row["representation"] in names and row["runs"]:
                vals = rows.setdefault(label, {}).setdefault(row["task"].removeprefix("builtin-"), [])
                vals.extend(r["metrics"][METRIC] for r in row["runs"])
    return {label: {t: M.summarize(v) for t, v in per.items()} for label, per in rows.items()}


def run_wu_experiment(corpus: str | Path, out: str | Path, *, config: WuExperimentConfig | None = None,
                      m2bert: str | None = None, progress: bool = False,
                      echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the inputs, pre-train every cell, probe, test the claims, write the report (module doc)."""
    cfg = config or experiment_config("small")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, Path(corpus), Path(out), m2bert=m2bert, progress=progress, say=echo or (lambda msg: None))
    finally:
        torch.set_num_threads(old_threads)


def _run(cfg: WuExperimentConfig, corpus: Path, out: Path, *, m2bert: str | None, progress: bool,
         say: Callable[[str], None]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.time(), time.process_time()
    _check_inputs(out, corpus, cfg)
    files = pretrain_files(corpus, cfg)
    store, targets = out / "store", out / "targets"
    say(f"[wu] inputs: {len(files)} training clips -> {store} (wave16k) + worker targets")
    extract_to_store(files, store, feature_set=get_feature_set("wave16k"), progress=progress)
    build_worker_targets(store, targets, workers="L,P,M,C,T", seed=cfg.seed, progress=progress)
    inputs_s = time.time() - t_start
    cells = plan(cfg)
    fs = FeatureStore.open(store)
    train_idx, _ = split_by_group(store_groups(fs), val_fraction=DataConfig().val_fraction, seed=cfg.seed)
    spe = max(1, math.ceil(len(train_idx) / cfg.batch_size))  # steps per epoch (the store's training chunks)
    train_s = {}
    for i, cell in enumerate(cells):
        say(f"[wu] run {i + 1}/{len(cells)} {cell.name} (workers {cell.workers})")
        train_s[cell.name] = _pretrain_cell(cfg, cell, store, targets, out / "runs", steps_per_epoch=spe,
                                            progress=progress)
    t0 = time.time()
    bench = _bench(cfg, cells, out, corpus, m2bert, progress=progress, say=say)
    bench_s = time.time() - t0
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    scores = scores_from_results(bench, cells, cfg.tasks)
    losses = {(c.weighting, c.seed): worker_losses(out / "runs" / c.name) for c in cells if c.worker_set == "WLP+MCT"}
    result: dict[str, Any] = {
        "format": "m3bert-wu-ablation", "format_version": 1, "corpus": str(corpus), "config": to_dict(cfg),
        "seeds": seeds, "steps_per_epoch": spe, "runs": [{"name": c.name, "worker_set": c.worker_set, "workers": c.workers,
                                  "weighting": c.weighting, "seed": c.seed, "train_s": train_s[c.name]} for c in cells],
        "n_parameters": int(create_model(cfg.model).num_parameters()),
        "pretrain_store": {"n_clips": len(files), "audio_s": float(sum(int(r["n_frames"]) for r in fs.rows)) / 100.0},
        **analyse(cfg, scores, losses, seeds),
        "comparison": _comparison(bench, cfg, cells),
        "bench": str(out / "bench" / "results.json"),
    }
    result["timings"] = {"inputs_s": round(inputs_s, 2), "pretrain_s": round(sum(train_s.values()), 2),
                         "bench_s": round(bench_s, 2), "total_s": round(time.time() - t_start, 2),
                         # this process's CPU seconds and the machine's load: the wall times of a shared machine vary
                         "cpu_s": round(time.process_time() - cpu_start, 2), "load_average": list(os.getloadavg())}
    png = ablation_png(result)
    atomic_write_bytes(out / "wu_ablation.png", png)
    result["report"] = str(out / "report.md")
    result["figure"] = str(out / "wu_ablation.png")
    atomic_write_json(out / "report.json", result)
    atomic_write_text(out / "report.md", render_report(result) + "\n![worker ablation](wu_ablation.png)\n")
    return result
