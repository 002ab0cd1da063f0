"""The analysis run: items -> descriptors + hidden states -> streaming sums -> ``analysis.json``.

One pass over the items. Each item is decoded once at the model's sample rate; its descriptors
(the ``descriptors`` feature set with the model's frame geometry) and the frame-level hidden states
of every layer of every model (the model and, by default, a random-init twin of the same
architecture) must have the same number of frames (checked; a mismatch is a bug, never padded
away). Then the item's frames are added to each model's :class:`~.stats.Sums` and to the shared
:class:`~.stats.Reservoir`.

Resumable: ``DIR/state.npz`` (one file: every sum, the reservoir, the clip vectors and, as JSON,
the list of finished items and failures) is rewritten atomically every ``checkpoint_s`` seconds
and at the end; a rerun with the same settings skips the finished items. Items are processed in
a fixed order (sorted ids) and every random choice is a pure function of the seed and the item,
so an interrupted and resumed run writes the same ``analysis.json`` as an uninterrupted one.
``analysis.json`` holds no wall times (those go to ``timing.json``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from m3bert.core.errors import ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_path, atomic_write_json, config_hash, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.evaluate.analysis.plots import write_figures
from m3bert.evaluate.analysis.report import write_analysis_report
from m3bert.evaluate.analysis.source import Item, descriptor_set_for, probe_test_groups
from m3bert.evaluate.analysis.stats import (
    RIDGE_ALPHAS,
    Reservoir,
    Sums,
    effective_n,
    fisher_bound,
    frame_keys,
    lag1_autocorrelation,
    pearson,
    ridge_probe,
    spearman,
)
from m3bert.features.descriptors import DESCRIPTOR_INFO, MASKED_BY, UNDEFINED_IN_SILENCE

FORMAT = "m3bert-analysis"
FORMAT_VERSION = 1
STATE = "state.npz"


@dataclass
class AnalysisConfig:
    """Settings of one analysis (all but ``checkpoint_s`` / ``batch_size`` / ``figures`` are part of its identity)."""

    split: str = "test"  # task input: the split analysed
    baseline: str = "random"  # "random": also analyse a random-init twin of the model | "none"
    baseline_seed: int = 1  # seed of the random twin's initialisation
    f0: bool = True  # compute f0 / voicing (pYIN, the slowest descriptor)
    seed: int = 0  # item subset, probe train/test groups, reservoir keys, t-SNE
    reservoir: int = 2000  # frames kept for Spearman and the scatter plots (a uniform sample)
    test_fraction: float = 0.3  # groups held out to score the linear probes
    threshold: float = 0.5  # "encoded" = Bonferroni lower bound on the best unit's |r| above this
    alpha: float = 0.05  # two-sided level of the confidence bounds (before Bonferroni)
    top_units: int = 10  # units listed per descriptor
    max_items: int | None = None  # analyse a seeded subset of at most this many items
    tsne_layer: int = -1  # layer whose clip embeddings (frame means) are mapped with t-SNE
    silence_dbfs: float | None = -60.0  # spectral-shape descriptors skip frames with RMS below this (None: keep all)
    checkpoint_s: float = 30.0  # rewrite the state at most this often (and at the end)
    batch_size: int = 8  # encoder windows per forward pass
    figures: bool = True  # draw the PNGs (heatmaps, scatter, t-SNE); ~2-5 s of matplotlib on a slow CPU

    def __post_init__(self) -> None:
        if self.baseline not in ("random", "none"):
            raise ConfigError(f"analysis baseline={self.baseline!r}; expected 'random' or 'none'")
        checks = {"reservoir": self.reservoir >= 10, "test_fraction": 0 < self.test_fraction < 1,
                  "threshold": 0 <= self.threshold < 1, "alpha": 0 < self.alpha < 1, "top_units": self.top_units >= 1,
                  "max_items": self.max_items is None or self.max_items >= 1, "checkpoint_s": self.checkpoint_s >= 0,
                  "batch_size": self.batch_size >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"analysis {name}={getattr(self, name)!r} is out of range (see AnalysisConfig)")

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("checkpoint_s", "batch_size", "figures"):
            d.pop(name)
        return d


def mask_group(group: str, *, silence: bool) -> str:
    """The frames a descriptor group is analysed on: ``"voiced"`` (f0), ``"sounding"`` (spectral-shape
    descriptors, when silent frames are skipped) or ``"all"``."""
    if group in MASKED_BY:
        return MASKED_BY[group]
    return "sounding" if silence and group in UNDEFINED_IN_SILENCE else "all"


def _channel_groups(desc: Any, *, silence: bool) -> tuple[list[str], list[str], list[str]]:
    """Per channel: its name, its descriptor group and its mask group (:func:`mask_group`)."""
    names, groups, masks = [], [], []
    for g in desc.spec.groups:
        for i in range(g.size):
            names.append(g.name if g.size == 1 else f"{g.name}_{i}")
            groups.append(g.name)
            masks.append(mask_group(g.name, silence=silence))
    return names, groups, masks


def validity(y: np.ndarray, groups: Sequence[str], *, silence_dbfs: float | None = None) -> np.ndarray:
    """``(T, K)`` bool, one validity per mask group (:func:`mask_group`). ``all``: the frames where every
    channel is finite (every frame in practice); ``sounding``: those whose RMS is at least
    ``silence_dbfs`` dB re full scale; a masked group (f0): those whose mask channel (voiced) is 1. The
    sums keep one Gram matrix per mask group, so every channel of a group sees the same frames."""
    finite = np.isfinite(y)
    base = finite.all(axis=1)
    valid = np.repeat(base[:, None], y.shape[1], axis=1)
    for g in dict.fromkeys(groups):
        cols = [k for k, gg in enumerate(groups) if gg == g]
        kind = mask_group(g, silence=silence_dbfs is not None)
        if kind == "sounding":
            floor = 10.0 ** (float(silence_dbfs) / 20.0)
            valid[:, cols] = (base & (y[:, groups.index("rms")] >= floor))[:, None]
        elif kind != "all":
            valid[:, cols] = (base & (y[:, groups.index(MASKED_BY[g])] > 0.5))[:, None]
    return valid


class State:
    """Everything the run accumulates; saved as one ``.npz`` (no pickle)."""

    def __init__(self, key: str, sources: Sequence[Any], n_channels: int, masks: Sequence[str], reservoir: int) -> None:
        self.key = key
        self.sums = {s.name: Sums(s.layer_dims, masks) for s in sources}
        self.reservoir = Reservoir(reservoir, n_channels, {s.name: s.layer_dims for s in sources})
        self.clip_vectors: dict[str, list[np.ndarray]] = {s.name: [] for s in sources}
        self.done: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for name, sums in self.sums.items():
            arrays.update(sums.arrays(f"sum_{name}_"))
            vecs = self.clip_vectors[name]
            arrays[f"clip_{name}"] = np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)
        arrays.update(self.reservoir.arrays())
        meta = {"format": "m3bert-analysis-state", "key": self.key, "done": self.done, "failures": self.failures}
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    @staticmethod
    def key_of(path: Path) -> str | None:
        """The settings key recorded in a state file (None if unreadable)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return json.loads(str(z["meta"])).get("key")
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None

    def load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != self.key:
                    raise ConfigError(f"{path}: holds an analysis with other settings (model, inputs, descriptors or "
                                      f"options differ: state key {meta.get('key')!r}, expected {self.key!r}); "
                                      "use another --out, or delete the folder to start again")
                for name, sums in self.sums.items():
                    sums.load(z, f"sum_{name}_")
                    vecs = np.array(z[f"clip_{name}"], dtype=np.float32)
                    self.clip_vectors[name] = list(vecs) if vecs.size else []
                self.reservoir.load(z)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: unreadable analysis state ({exc}); delete it to start the analysis again") from exc
        self.done = list(meta["done"])
        self.failures = dict(meta["failures"])


def run_analysis(sources: Sequence[Any], items: Sequence[Item], out: str | Path, *, config: AnalysisConfig | None = None,
                 task_info: dict[str, Any] | None = None, progress: bool = True,
                 say: Callable[[str], None] | None = None,
                 descriptor_cache: dict[Any, np.ndarray] | None = None, restart: bool = False) -> dict[str, Any]:
    """Analyse ``items`` with every source (the first is "the model"); write ``DIR/analysis.json``,
    ``DIR/units.npz`` and ``DIR/timing.json``; return the analysis dict.

    A source has ``name``, ``spec``, ``layer_names``, ``layer_dims``, ``model_id``, ``sample_rate``,
    ``feature_set``, ``describe()`` and ``frames(waveform) -> [(T, U_l)]`` (see
    :class:`~.source.EmbedderSource`). ``descriptor_cache``: a dict shared by several runs over the
    same items (the demo analyses two models), so each item's descriptors are computed once.
    ``restart``: a state of other settings in ``out`` is discarded (the demo, whose stage key says the
    analysis must be redone) instead of refused (the command line)."""
    cfg = config or AnalysisConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not items:
        raise DataError("analysis: no items to analyse")
    first = sources[0]
    sample_rate = int(first.sample_rate)
    for s in sources[1:]:
        if int(s.sample_rate) != sample_rate or int(s.feature_set.hop_length) != int(first.feature_set.hop_length):
            raise ConfigError(f"analysis: {s.name} reads frames at another rate than {first.name}; analyse them separately")
    for s in sources:
        if not -len(s.layer_dims) <= cfg.tsne_layer < len(s.layer_dims):
            raise ConfigError(f"analysis tsne_layer={cfg.tsne_layer}: {s.name} has {len(s.layer_dims)} hidden states "
                              f"(0 = input embedding .. {len(s.layer_dims) - 1}; negatives count from the end)")
    desc = descriptor_set_for(first.feature_set, f0=cfg.f0)
    channels, groups, masks = _channel_groups(desc, silence=cfg.silence_dbfs is not None)
    test_groups = probe_test_groups(items, fraction=cfg.test_fraction, seed=cfg.seed)
    identity = {"config": cfg.identity(), "descriptors": desc.to_dict(), "models": [[s.name, s.model_id] for s in sources],
                "items": [[it.item_id, it.group, it.start, it.end, str(it.path)] for it in items],
                "test_groups": sorted(test_groups)}
    state = State(config_hash(identity), sources, len(channels), masks, cfg.reservoir)
    state_path = out / STATE
    if state_path.is_file() and restart and State.key_of(state_path) != state.key:
        if say:
            say(f"analysis: {state_path} holds other settings; starting again")
        state_path.unlink()
    if state_path.is_file():
        state.load(state_path)
    done = {d["item_id"] for d in state.done}
    todo = [it for it in items if it.item_id not in done]
    if say and done:
        say(f"analysis: resuming, {len(done)} of {len(items)} item(s) already done")
    timing = {"decode_s": 0.0, "descriptors_s": 0.0, "encoders_s": 0.0, "sums_s": 0.0}
    t_start = last_save = time.time()
    audio_s = 0.0
    bar = progress_bar(total=len(todo), desc="analyze", unit="item", disable=not progress)
    updating = False
    try:
        for it in todo:
            try:
                t0 = time.time()
                x = it.load(sample_rate=sample_rate, min_samples=desc.min_samples)
                t1 = time.time()
                ckey = (desc.config_hash(), it.item_id, str(it.path), it.start, it.end)
                y = None if descriptor_cache is None else descriptor_cache.get(ckey)
                if y is None:
                    y = np.asarray(desc.extract(x, sample_rate=sample_rate, normalize=False), dtype=np.float64)
                    if descriptor_cache is not None:
                        descriptor_cache[ckey] = y
                t2 = time.time()
                states = {s.name: s.frames(x) for s in sources}
                t3 = time.time()
            except M3bertError as exc:
                state.failures[it.item_id] = str(exc)
                bar.update(1)
                continue
            for name, layers in states.items():
                bad = [h.shape for h in layers if h.shape[0] != y.shape[0]]
                if bad:
                    raise DataError(f"{it.path}: {name} gives {bad[0][0]} frames but the descriptors {y.shape[0]}; "
                                    "the descriptor frames must be the model's frames (same sample rate, n_fft, hop)")
            valid = validity(y, groups, silence_dbfs=cfg.silence_dbfs)
            split = 1 if it.group in test_groups else 0
            updating = True  # an interruption from here to the end of the item leaves the state torn: not saved
            for s in sources:
                state.sums[s.name].add(states[s.name], y, valid, split=split)
                state.clip_vectors[s.name].append(states[s.name][cfg.tsne_layer].mean(axis=0).astype(np.float32))
            state.reservoir.add(frame_keys(cfg.seed, it.item_id, y.shape[0]), y, valid, states)
            timing["decode_s"] += t1 - t0
            timing["descriptors_s"] += t2 - t1
            timing["encoders_s"] += t3 - t2
            timing["sums_s"] += time.time() - t3
            audio_s += x.size / sample_rate
            state.done.append({"item_id": it.item_id, "group": it.group, "split": "test" if split else "train",
                               "n_frames": int(y.shape[0]), "label": it.label})
            state.failures.pop(it.item_id, None)
            updating = False
            bar.update(1)
            if time.time() - last_save >= cfg.checkpoint_s:
                state.save(state_path)
                last_save = time.time()
    finally:
        bar.close()
        if not updating:
            state.save(state_path)
    t_fin = time.time()
    result = finalize(state, sources, items, desc, channels, groups, cfg, task_info=task_info)
    units = result.pop("_units")
    with atomic_path(out / "units.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **units)
    if cfg.figures:
        write_figures(result, reservoir=state.reservoir, done=state.done, clip_vectors=state.clip_vectors, out=out,
                      seed=cfg.seed, tsne_layer=cfg.tsne_layer)
    else:
        result["tsne"], result["figures"] = None, []
    atomic_write_json(out / "analysis.json", result)
    write_analysis_report(result, out)
    timing.update({"items_this_run": len(todo), "audio_s_this_run": audio_s, "total_s": time.time() - t_start,
                   "finalize_s": time.time() - t_fin})
    atomic_write_json(out / "timing.json", timing)
    return result


# ---------------------------------------------------------------------------------------------
# from sums to numbers


def _f(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def summarize_model(name: str, state: State, source: Any, channels: list[str], cfg: AnalysisConfig,
                    units: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every number of one model (see the module docstring of ``analysis``)."""
    sums = state.sums[name]
    res = state.reservoir
    m = int(sum(source.layer_dims))  # tests per descriptor: every unit of every layer
    n_layers, k = len(source.layer_dims), len(channels)
    best_unit = np.zeros((n_layers, k), dtype=int)
    best_r, best_lower, best_sp, max_sp, r2 = (np.full((n_layers, k), np.nan) for _ in range(5))
    ci = np.zeros((n_layers, k, 2))
    neff_best = np.zeros((n_layers, k))
    probes: list[list[dict[str, Any]]] = []
    flat: list[tuple[float, int, int, int, float, float, float, float]] = []  # per (k): candidates
    n_frames = None
    for li in range(n_layers):
        r, n = pearson(sums, li)
        n_frames = n
        rho_x, rho_y = lag1_autocorrelation(sums, li)
        neff = effective_n(n, rho_x, rho_y)
        lo, hi, lower = fisher_bound(r, neff, m=m, alpha=cfg.alpha)
        sp = spearman(res.states[name][li].astype(np.float64), res.y, res.valid) if res.keys.size else np.zeros_like(r)
        units[f"{name}_r_{li}"] = r
        units[f"{name}_spearman_{li}"] = sp
        units[f"{name}_abs_lower_{li}"] = lower
        units[f"{name}_n_eff_{li}"] = neff
        a = np.abs(r)
        best_unit[li] = np.argmax(a, axis=1)
        idx = (np.arange(k), best_unit[li])
        best_r[li], best_lower[li], best_sp[li] = r[idx], lower[idx], sp[idx]
        ci[li] = np.stack([lo[idx], hi[idx]], axis=1)
        neff_best[li] = neff[idx]
        max_sp[li] = np.abs(sp).max(axis=1)
        pr = ridge_probe(sums, li)
        probes.append([p.to_dict() for p in pr])
        r2[li] = [np.nan if p.r2_test is None else p.r2_test for p in pr]
        top = np.argsort(-a, axis=1)[:, : cfg.top_units]
        for j in range(k):
            for u in top[j]:
                flat.append((float(a[j, u]), j, li, int(u), float(r[j, u]), float(lower[j, u]), float(sp[j, u]),
                             float(neff[j, u])))
    ny = np.maximum(sums.ny.sum(axis=0), 1.0)
    my = sums.sy.sum(axis=0) / ny
    var_y = sums.syy.sum(axis=0) / ny - my * my
    constant = ~(var_y > 1e-12 * np.maximum(1.0, my * my)) | (sums.ny.sum(axis=0) < 3)
    for arr in (best_r, best_lower, best_sp, max_sp, r2):
        arr[:, constant] = np.nan  # no correlation is defined with a constant descriptor
    layer_names = list(source.layer_names)
    top_units: dict[str, list[dict[str, Any]]] = {}
    best: dict[str, dict[str, Any]] = {}
    best_probe: dict[str, dict[str, Any]] = {}
    for j, ch in enumerate(channels):
        if constant[j]:
            top_units[ch] = []
            best[ch] = {"layer": None, "layer_index": None, "unit": None, "r": None, "abs_r": None, "abs_lower": None,
                        "ci": [None, None], "spearman": None, "n_frames": int(sums.ny.sum(axis=0)[j]), "n_eff": None,
                        "encoded": False, "constant": True}
            best_probe[ch] = {"layer": None, "layer_index": None, "r2": None}
            continue
        cands = sorted((c for c in flat if c[1] == j), key=lambda c: (-c[0], c[2], c[3]))[: cfg.top_units]
        top_units[ch] = [{"layer": layer_names[c[2]], "layer_index": c[2], "unit": c[3], "r": c[4], "abs_lower": c[5],
                          "spearman": c[6], "n_eff": c[7]} for c in cands]
        li = int(np.argmax(np.abs(best_r[:, j])))
        best[ch] = {"layer": layer_names[li], "layer_index": li, "unit": int(best_unit[li, j]), "r": _f(best_r[li, j]),
                    "abs_r": _f(abs(best_r[li, j])), "abs_lower": _f(best_lower[li, j]),
                    "ci": [_f(ci[li, j, 0]), _f(ci[li, j, 1])], "spearman": _f(best_sp[li, j]),
                    "n_frames": int(n_frames[j]) if n_frames is not None else 0, "n_eff": _f(neff_best[li, j]),
                    "encoded": bool(best_lower[li, j] > cfg.threshold), "constant": False}
        col = r2[:, j]
        if np.isfinite(col).any():
            lp = int(np.nanargmax(col))
            best_probe[ch] = {"layer": layer_names[lp], "layer_index": lp, "r2": _f(col[lp])}
        else:
            best_probe[ch] = {"layer": None, "layer_index": None, "r2": None}

    def grid(a: np.ndarray) -> list[list[float | None]]:
        return [[_f(v) for v in row] for row in a]

    return {**source.describe(), "n_units_tested": m,
            "best_abs_r": grid(np.abs(best_r)), "best_r": grid(best_r), "best_unit": best_unit.tolist(),
            "best_abs_lower": grid(best_lower), "best_spearman": grid(best_sp), "max_abs_spearman": grid(max_sp),
            "probe_r2": grid(r2), "probe": probes, "best": best, "best_probe": best_probe, "top_units": top_units}


def finalize(state: State, sources: Sequence[Any], items: Sequence[Item], desc: Any, channels: list[str],
             groups: list[str], cfg: AnalysisConfig, *, task_info: dict[str, Any] | None) -> dict[str, Any]:
    units: dict[str, np.ndarray] = {}
    models = {s.name: summarize_model(s.name, state, s, channels, cfg, units) for s in sources}
    comparison: dict[str, dict[str, Any]] = {}
    names = [s.name for s in sources]
    for ch in channels:
        row: dict[str, Any] = {}
        for name in names:
            row[f"{name}_abs_r"] = models[name]["best"][ch]["abs_r"]
            row[f"{name}_abs_lower"] = models[name]["best"][ch]["abs_lower"]
            row[f"{name}_r2"] = models[name]["best_probe"][ch]["r2"]
        if len(names) > 1:
            a, b = names[0], names[1]
            ra, rb = row[f"{a}_abs_r"], row[f"{b}_abs_r"]
            row["abs_r_difference"] = None if ra is None or rb is None else ra - rb
            qa, qb = row[f"{a}_r2"], row[f"{b}_r2"]
            row["r2_difference"] = None if qa is None or qb is None else qa - qb
            la = row[f"{a}_abs_lower"]
            row["beyond_random"] = bool(la is not None and rb is not None and la > rb)
        comparison[ch] = row
    n_split = {"train": 0, "test": 0}
    for d in state.done:
        n_split[d["split"]] += d["n_frames"]
    result = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": cfg.identity(),
        "rules": {
            "pearson": "per (layer, unit, descriptor) over every valid frame, from float64 streaming sums",
            "bound": (f"Fisher-z two-sided {100 * (1 - cfg.alpha):.0f} % interval of r, Bonferroni over the units tested "
                      "per descriptor (every unit of every layer), n = Bartlett's effective sample size "
                      "n (1 - a_x a_y) / (1 + a_x a_y) from the lag-1 autocorrelations a of unit and descriptor"),
            "encoded": f"the best unit's lower bound on |r| > {cfg.threshold}",
            "beyond_random": "the model's lower bound on its best |r| > the random twin's best |r|",
            "spearman": (f"Pearson of average ranks on a seeded uniform sample of at most {cfg.reservoir} frames "
                         "(bottom-k by a per-frame key)"),
            "probe": (f"ridge regression from all units of a layer (standardised), penalty by GCV among {list(RIDGE_ALPHAS)} "
                      f"x mean eigenvalue, fitted on the train groups, R^2 on the {cfg.test_fraction:.0%} held-out groups"),
            "frames": ("f0 is analysed over voiced frames only (pYIN's voiced flag); "
                       + (f"the spectral-shape descriptors ({', '.join(UNDEFINED_IN_SILENCE)}) over frames with an RMS of "
                          f"at least {cfg.silence_dbfs} dBFS (their value is undefined in silence); "
                          if cfg.silence_dbfs is not None else "")
                       + "every other descriptor over all frames"),
        },
        "descriptors": {"feature_set": desc.to_dict(), "channels": channels, "groups": groups,
                        "info": {g: list(DESCRIPTOR_INFO[g]) for g in dict.fromkeys(groups)},
                        "frames": {g: mask_group(g, silence=cfg.silence_dbfs is not None) for g in dict.fromkeys(groups)}},
        "inputs": {"task": task_info, "n_items": len(items), "n_done": len(state.done),
                   "n_failed": len(state.failures), "failures": [{"item_id": k, "error": v}
                                                                 for k, v in sorted(state.failures.items())],
                   "n_frames": n_split, "items": state.done},
        "models": models,
        "comparison": comparison,
        "versions": {k: v for k, v in versions().items() if k not in ("platform",)},
    }
    result["_units"] = units
    return result
