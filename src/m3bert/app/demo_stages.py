"""The demo's stage bodies: real music, pre-training, diagnostics, benchmark, learning curve,
interpretability and the masking ablation. ``cfg`` is the demo's :class:`~m3bert.app.demo.DemoConfig`;
:func:`m3bert.app.demo.run_demo` decides the order and what each stage's result depends on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from m3bert.app.demo_report import MASKING_POLICIES
from m3bert.core.config import to_dict
from m3bert.core.io import atomic_write_json, config_hash, read_json
from m3bert.corpus.real_music import RealMusicConfig, gather_real_music, package_list
from m3bert.evaluate.analysis import AnalysisConfig, analyze
from m3bert.evaluate.baselines import get_baseline
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store
from m3bert.models.encoder import get_model_config
from m3bert.models.hub import export_model
from m3bert.pretrain.diagnostics import build_module, kept_checkpoints, reconstruction_diagnostics
from m3bert.pretrain.loop import load_pretrain_config, pretrain

Say = Callable[[str], None]


@contextlib.contextmanager
def torch_threads(n: int) -> Any:
    """Run a block with ``n`` torch threads (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
TWIN = "M2BERT, no pre-training"  # the untrained twin: same architecture and seed, step 0 of the run
# the benchmark's hand-made rows; tempogram-stats (periodicity statistics) is the one that learns tempo-class
BASELINES = ("mfcc", "raw", "tempogram-stats", "chance")


# ---------------------------------------------------------------------------------------------
# Real music (pre-training data)
# ---------------------------------------------------------------------------------------------


def gather_music(cfg: Any, out: Path, *, say: Say, downloader: Any = None) -> dict[str, Any]:
    """Gather the real-music packages into ``out`` (a failure of all of them is a summary, not an error)."""
    mcfg = RealMusicConfig(packages=package_list(cfg.music_packages), min_seconds=cfg.music_min_seconds)
    try:
        manifest = gather_real_music(out, config=mcfg, downloader=downloader, say=say)
    except Exception as exc:  # noqa: BLE001  (no apt, no dpkg-deb, no disk: the demo falls back to the built-in corpus)
        say(f"[music] real music unavailable ({type(exc).__name__}: {exc}); pre-training on the built-in corpus")
        return {"n_files": 0, "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}", "packages": [], "failed": []}
    return {k: manifest[k] for k in ("n_files", "seconds", "packages", "failed", "gather_s", "batch_download_s")} | {
        "manifest": str(out / "manifest.json"), "n_rejects": len(manifest["rejects"])}


def music_features(cfg: Any, music: Path, store: Path, *, progress: bool) -> dict[str, Any]:
    return extract_to_store(music / "audio", store, feature_set=get_feature_set("m3bert324", cmvn=cfg.cmvn),
                            workers=cfg.workers, progress=progress)


# ---------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------


def pretrain_config(cfg: Any, *, masking: str, steps: int, seed: int, keep_every: int = 0) -> Any:
    arch = get_model_config(cfg.model).to_dict()
    arch.pop("enrichment", None)
    overrides: dict[str, Any] = {f"model.{k}": v for k, v in arch.items() if k != "n_input"}
    overrides.update({
        "seed": seed,
        "masking.policies": masking.split("+"),
        "data.max_frames": cfg.pretrain_frames,
        "data.batch_size": cfg.pretrain_batch,
        "data.effective_batch": cfg.pretrain_effective_batch,
        "optim.lr": cfg.pretrain_lr,
        "train.steps": steps,
        "train.precision": cfg.precision,
        "train.device": "cpu",
        "train.log_every": max(1, steps // 20),
        # validation at every kept checkpoint, so the loss curve and the probe curve share their steps
        "train.eval_every": keep_every or max(1, steps // 4),
        "train.save_every": max(1, steps // 4),
        "train.keep_every": keep_every,
    })
    return load_pretrain_config(None, overrides=overrides)


def run_pretrain(cfg: Any, store: Any, run: Path, *, masking: str, steps: int, seed: int, progress: bool,
                 keep_every: int = 0) -> dict[str, Any]:
    """Pre-train into ``run``; an interrupted run of the *same* request (config and stores, recorded in
    ``RUN/demo_request.json``) is continued exactly, anything else in ``run`` is removed first (a
    rerun with other steps, data or model must not resume an old run to its old budget)."""
    pcfg = pretrain_config(cfg, masking=masking, steps=steps, seed=seed, keep_every=keep_every)
    request = {"config": config_hash(to_dict(pcfg)), "store": [str(x) for x in (store if isinstance(store, list) else [store])]}
    marker = run / "demo_request.json"
    if (run / "run.json").is_file() and marker.is_file() and read_json(marker) == request:
        return pretrain(None, store=store, out=run, resume=True, progress=progress)
    if run.exists():
        shutil.rmtree(run)  # another request's run, or debris of one that never wrote run.json
    run.mkdir(parents=True)
    atomic_write_json(marker, request)
    return pretrain(pcfg, store=store, out=run, progress=progress)


def diagnostics(cfg: Any, run: Path, store: Any, out: Path) -> dict[str, Any]:
    """Masked-cell loss of every kept checkpoint (and step 0) against the trivial predictors, on the
    run's own validation: the training combination and each of its policies alone."""
    parts = cfg.masking.split("+")
    combos = [cfg.masking] + (parts if len(parts) > 1 else [])
    res = reconstruction_diagnostics(run, store=store, combos=combos)
    atomic_write_json(out, res)
    return {"diagnostics": str(out), "n_chunks": res["n_chunks"],
            "last": res["checkpoints"][-1]["loss"], "predictors": res["predictors"]}


def export(run: Path, out: Path) -> dict[str, Any]:
    return export_model(run, out, overwrite=True)


def export_untrained(run: Path, store: Any, out: Path) -> dict[str, Any]:
    """The untrained twin as a model folder: the run's architecture and seed before its first update,
    reading the run's features (CMVN included), so it differs from M2BERT in the training alone."""
    pcfg = load_pretrain_config(run / "config.yaml")
    fs = FeatureStore.open(store).feature_set
    pcfg.model = dataclasses.replace(pcfg.model, n_input=int(fs.n_channels))
    encoder, _objective = build_module(pcfg, fs)
    if out.exists():
        shutil.rmtree(out)
    encoder.save_pretrained(out, extra={"untrained_twin_of": str(run)})
    return {"model": str(out), "n_parameters": encoder.num_parameters()}


# ---------------------------------------------------------------------------------------------
# Benchmark and learning curve
# ---------------------------------------------------------------------------------------------


def representations(cfg: Any, models: Path) -> list[Any]:
    return [
        ModelRepresentation(str(models / "m3bert"), name="M3BERT"),
        ModelRepresentation(str(models / "m2bert"), name="M2BERT"),
        ModelRepresentation(str(models / "m2bert-untrained"), name=TWIN),
    ] + [get_baseline(name) for name in BASELINES]


def bench_kwargs(cfg: Any) -> dict[str, Any]:
    """What every benchmark of the demo shares: protocol, seeds, settings, split, probe caps."""
    over: dict[str, Any] = {}
    if cfg.probe_max_epochs:
        over["max_epochs"] = cfg.probe_max_epochs
    kw: dict[str, Any] = {"protocol": cfg.protocol, "seeds": cfg.bench_seeds, "probe_overrides": over or None,
                          "settings": list(cfg.settings), "split": cfg.split, "workers": cfg.probe_workers}
    if cfg.split == "heldout-kfold":
        kw["split"] = {"*": "predefined", **{f"builtin-{t}": "kfold" for t in cfg.held_out}}
    if cfg.split != "predefined":
        kw["n_folds"] = cfg.n_folds
    return kw


def benchmark(cfg: Any, models: Path, specs: list[str], out: Path, *, progress: bool, say: Say) -> dict[str, Any]:
    """Every representation on every task; paired bootstraps answer the demo's two questions."""
    pairs = [("M2BERT", TWIN), ("M3BERT", "M2BERT"), ("M2BERT", "raw")]
    with torch_threads(cfg.probe_threads):
        return run_benchmark(representations(cfg, models), specs, out_dir=out, cache_dir=out / "cache",
                             progress=progress, echo=say, pairs=pairs, **bench_kwargs(cfg))


def curve_steps(cfg: Any, run: Path) -> list[tuple[int, Path]]:
    """The kept checkpoints the learning curve probes (every one of the run's, in step order)."""
    return kept_checkpoints(run)


def learning_curve(cfg: Any, run: Path, twin: Path, specs: list[str], out: Path, *, cache: Path, progress: bool,
                   say: Say) -> dict[str, Any]:
    """The held-out tasks probed at step 0 (the untrained twin) and at each kept checkpoint, in the
    headline setting, each step paired with step 0 (a bootstrap over test pieces)."""
    steps = curve_steps(cfg, run)
    reps = [ModelRepresentation(str(twin), name="step 0")]
    reps += [ModelRepresentation(str(path), name=f"step {s}") for s, path in steps]
    kw = bench_kwargs(cfg)
    kw["settings"] = [cfg.headline_setting]
    pairs = [(f"step {s}", "step 0") for s, _ in steps]
    with torch_threads(cfg.probe_threads):
        res = run_benchmark(reps, specs, out_dir=out, cache_dir=cache, progress=progress, echo=say, pairs=pairs, **kw)
    return {"results": str(out / "results.json"), "steps": [0] + [s for s, _ in steps], "elapsed_s": res["elapsed_s"]}


# ---------------------------------------------------------------------------------------------
# Interpretability and the masking ablation
# ---------------------------------------------------------------------------------------------


def analysis(cfg: Any, models: Path, corpus: Path, out: Path, *, key: str, progress: bool, say: Say) -> dict[str, Any]:
    """``m3bert analyze`` of the demo's M2BERT and M3BERT over the test split of the analysis task
    (one folder each, both against a random twin; descriptors computed once for both)."""
    if (out / "key.json").is_file() and read_json(out / "key.json").get("key") != key:
        shutil.rmtree(out)  # an analysis of other models or settings: start again
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "key.json", {"key": key})
    acfg = AnalysisConfig(split="test", f0=cfg.analysis_f0, seed=cfg.seed, max_items=cfg.analysis_clips,
                          reservoir=1000, checkpoint_s=30.0, figures=cfg.analysis_figures)
    spec = f"builtin-{cfg.analysis_task}:{corpus}"
    cache: dict[Any, Any] = {}
    summary: dict[str, Any] = {}
    # One torch thread: the demo's encoders are small, and on a shared 2-core machine two torch threads
    # next to numpy's BLAS made this stage 3-4x slower (measured: 86 s vs 22-25 s for the small preset).
    with torch_threads(1):
        for name in ("m2bert", "m3bert"):
            say(f"[analysis] {name}: units vs descriptors over {spec} (test split, <= {cfg.analysis_clips} clips)")
            res = analyze(str(models / name), [spec], out / name, config=acfg, progress=progress, say=say,
                          descriptor_cache=cache, restart=True)
            best = res["models"]["model"]["best"]
            summary[name] = {"analysis": str(out / name / "analysis.json"), "n_items": res["inputs"]["n_done"],
                             "best_abs_r": {g: best[g]["abs_r"] for g in ("centroid", "harmonicity") if g in best}}
    return summary


def ablation(cfg: Any, store: Any, corpus: Path, out: Path, *, progress: bool, say: Say) -> dict[str, Any]:
    """One pre-training run per (masking policy, seed) with the same budget, then the benchmark."""
    reps = []
    for policy in MASKING_POLICIES:
        for s in range(cfg.ablation_seeds):
            run = out / "runs" / f"{policy.replace('+', '-')}-seed{s}"
            say(f"[ablation] pre-training with {policy}, seed {s}")
            run_pretrain(cfg, store, run, masking=policy, steps=cfg.ablation_steps, seed=cfg.seed + s, progress=progress)
            reps.append(ModelRepresentation(str(run), name=f"{policy} (seed {s})"))
    specs = [f"builtin-{t}:{corpus}" for t in cfg.ablation_tasks]
    kw = bench_kwargs(cfg)
    kw["settings"] = [cfg.headline_setting]
    with torch_threads(cfg.probe_threads):
        res = run_benchmark(reps, specs, out_dir=out / "bench", cache_dir=out / "bench" / "cache", progress=progress,
                            echo=say, **kw)
    return {"results": str(out / "bench" / "results.json"), "elapsed_s": res["elapsed_s"]}
