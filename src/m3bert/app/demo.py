"""``m3bert demo``: the whole M3BERT system end to end on the built-in corpus, small but real.

Stages (each reuses its output when the demo is run again, so an interrupted demo resumes):

1. ``corpus``    build the built-in labelled corpus (real compositions, synthetic performances)
2. ``features``  324-d M3BERT frames of every clip into a feature store
3. ``pretrain``  M2BERT masked reconstruction (CFM+CCM by default) for a fixed step budget
4. ``enrich``    M3BERT multi-task enrichment of the frozen encoder on a subset of the tasks
5. ``export``    both encoders as model directories
6. ``bench``     M3BERT, M2BERT, a random encoder and the MFCC / raw-feature baselines on every
                 built-in task (enrichment tasks and held-out tasks), several probe seeds
7. ``analysis``  interpretability (paper Figs. 5-6): ``m3bert analyze`` of M2BERT and M3BERT, each
                 against a random twin, over a capped seeded subset of the test split of one task
8. ``ablation``  (``--ablation masking``) the paper's Table 5 comparison: one pre-training run per
                 masking policy and seed, same budget, benchmarked on the held-out tasks
9. ``report``    ``OUT/report.{html,md,json}`` and a one-screen terminal summary

The configuration of every stage lives in :class:`DemoConfig`; its presets ``tiny`` (tests) and
``small`` (``make demo``) differ only in sizes and budgets.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from m3bert.app.demo_report import MASKING_POLICIES, report_sections, terminal_summary
from m3bert.core.errors import ConfigError
from m3bert.core.io import atomic_write_json, config_hash, read_json
from m3bert.corpus import build_corpus, corpus_info
from m3bert.enrich import load_config as load_enrich_config
from m3bert.enrich import run_enrich
from m3bert.evaluate.analysis import AnalysisConfig, analyze
from m3bert.evaluate.baselines import get_baseline
from m3bert.evaluate.report import load_results, write_report
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.features import get_feature_set
from m3bert.features.store import extract_to_store
from m3bert.models.encoder import get_model_config
from m3bert.models.hub import export_model
from m3bert.pretrain.loop import load_pretrain_config, pretrain

ALL_TASKS = ("dance", "key", "instrument", "tags", "pitch", "tempo", "style")


@dataclass
class DemoConfig:
    """Sizes and budgets of every demo stage."""

    corpus_preset: str = "small"  # built-in corpus preset (tiny | small | full)
    renderer: str = "auto"  # corpus synthesizer: auto (FluidSynth when present) | fluidsynth | numpy
    seed: int = 0  # seeds the corpus, pre-training, enrichment and probes
    workers: int = 2  # processes for corpus rendering and feature extraction
    model: str = "m2bert-mini"  # registered encoder architecture pre-trained by the demo
    masking: str = "cfm+ccm"  # masking policies, '+'-joined (paper's best: cfm+ccm)
    pretrain_steps: int = 300  # optimizer steps of pre-training (~4 min on 2 cores)
    pretrain_batch: int = 16  # chunks per micro-batch
    pretrain_effective_batch: int = 16  # chunks per optimizer step
    pretrain_lr: float = 1e-3  # peak learning rate (higher than the paper's 2e-4: tiny model, short run)
    pretrain_frames: int = 256  # random crop length in frames (~6 s)
    precision: str = "bf16"  # bf16 autocast (fp32 is the reference)
    enrich_tasks: tuple[str, ...] = ("dance", "instrument", "tags", "tempo")  # tasks used for enrichment
    enrich_epochs: int = 12  # multi-task epochs
    enrich_lr: float = 1e-2  # peak lr of enrichment layer + heads (1e-3 barely moves them on this little data)
    enrich_weighting: str = "uncertainty"  # equal | reweight | uncertainty
    enrich_sampling: str = "temperature:2"  # proportional | uniform | temperature:T
    bench_tasks: tuple[str, ...] = ALL_TASKS  # every built-in task; those not in enrich_tasks are held out
    bench_seeds: int = 3  # probe seeds per (representation, task)
    protocol: str = "marble"  # probe protocol (marble | kim | linear)
    probe_max_epochs: int | None = None  # cap on probe epochs (None = the protocol's)
    # Which hidden state the probes read: "last" = the model's output representation, the paper's
    # setting (M3BERT: the enrichment output; M2BERT: the last encoder layer); "each+weighted" =
    # MARBLE's layer selection (which can pick the same shared layer for M2BERT and M3BERT).
    probe_layers: str = "last"
    ablation: str | None = None  # None | "masking"
    ablation_seeds: int = 2  # pre-training seeds per masking policy in the ablation
    ablation_steps: int = 100  # pre-training steps per ablation run
    ablation_tasks: tuple[str, ...] = ("key", "pitch", "style")  # tasks the ablation is judged on
    # Interpretability (paper Figs. 5-6): `m3bert analyze` of both models (each against a random twin of
    # its architecture) over a seeded subset of the test split of this task (its labels colour the t-SNE map).
    analysis_task: str = "instrument"
    analysis_clips: int = 40  # test clips analysed (~35 s on 2 cores for the small preset, f0 included)
    analysis_f0: bool = True  # pYIN f0 (~2.8 s per minute of audio on one core); off in the tiny preset
    analysis_figures: bool = True  # heatmaps, scatter plots, t-SNE (a few s of matplotlib); off in the tiny preset

    def __post_init__(self) -> None:
        if self.analysis_task not in ALL_TASKS:
            raise ConfigError(f"demo analysis_task={self.analysis_task!r}; expected one of {ALL_TASKS}")
        if self.analysis_clips < 0:
            raise ConfigError(f"demo analysis_clips={self.analysis_clips}; expected >= 0 (0 = no analysis stage)")
        for name in ("enrich_tasks", "bench_tasks", "ablation_tasks"):
            value = tuple(getattr(self, name))
            unknown = [t for t in value if t not in ALL_TASKS]
            if unknown:
                raise ConfigError(f"demo {name}: unknown task(s) {unknown}; expected some of {ALL_TASKS}")
            setattr(self, name, value)
        for part in self.masking.split("+"):
            if part not in ("cfm", "ccm", "pm"):
                raise ConfigError(f"demo masking={self.masking!r}; expected '+'-joined cfm, ccm, pm")
        if self.ablation not in (None, "masking"):
            raise ConfigError(f"demo ablation={self.ablation!r}; expected None or 'masking'")

    @property
    def held_out(self) -> tuple[str, ...]:
        return tuple(t for t in self.bench_tasks if t not in self.enrich_tasks)


PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    # The test preset: every stage runs, on the tiny corpus with the tiny model and a few steps.
    "tiny": dict(corpus_preset="tiny", model="m2bert-tiny", pretrain_steps=12, pretrain_batch=8,
                 pretrain_effective_batch=8, pretrain_frames=128, enrich_epochs=2, bench_seeds=2,
                 protocol="linear", probe_max_epochs=30, ablation_seeds=1, ablation_steps=6, workers=1,
                 ablation_tasks=("pitch", "key"), analysis_clips=4, analysis_f0=False,
                 analysis_figures=False),
}


def demo_config(preset: str = "small", **overrides: Any) -> DemoConfig:
    if preset not in PRESETS:
        raise ConfigError(f"demo preset={preset!r}; expected one of {sorted(PRESETS)}")
    return DemoConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


# ---------------------------------------------------------------------------------------------
# Stage bookkeeping: a stage is done when OUT/stages/NAME.json holds the hash of its inputs.
# ---------------------------------------------------------------------------------------------


class Stages:
    """Runs each stage once per configuration; records its summary and wall time."""

    def __init__(self, out: Path, *, say: Callable[[str], None]) -> None:
        self.out = out
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.summaries: dict[str, dict[str, Any]] = {}

    def run(self, name: str, key: Any, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        digest = config_hash(key)
        if path.is_file():
            record = read_json(path)
            if record.get("key") == digest:
                self.say(f"[{name}] reusing the result of an earlier run ({record['seconds']:.0f} s then)")
                self.summaries[name] = record
                return record["summary"]
        self.say(f"[{name}] running ...")
        t0 = time.time()
        summary = fn()
        record = {"stage": name, "key": digest, "seconds": time.time() - t0, "summary": summary}
        atomic_write_json(path, record)
        self.summaries[name] = record
        self.say(f"[{name}] done in {record['seconds']:.0f} s")
        return summary


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def _pretrain_config(cfg: DemoConfig, *, masking: str, steps: int, seed: int) -> Any:

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
        "train.eval_every": max(1, steps // 4),
        "train.save_every": max(1, steps // 4),
    })
    return load_pretrain_config(None, overrides=overrides)


def _pretrain(cfg: DemoConfig, store: Path, run: Path, *, masking: str, steps: int, seed: int,
              progress: bool) -> dict[str, Any]:

    if (run / "run.json").is_file():  # an interrupted run: continue it exactly
        return pretrain(None, store=store, out=run, resume=True, progress=progress)
    if run.exists():
        shutil.rmtree(run)  # debris of a run that never wrote run.json
    return pretrain(_pretrain_config(cfg, masking=masking, steps=steps, seed=seed), store=store, out=run,
                    progress=progress)


def _export(run: Path, out: Path) -> dict[str, Any]:
    return export_model(run, out, overwrite=True)


def run_demo(out: str | Path = "demo_out", *, config: DemoConfig | None = None, progress: bool = True,
             say: Callable[[str], None] = print, corpus: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every stage into ``out``; returns the benchmark results dict.

    ``corpus``: an already built corpus folder to use instead of building one into ``out/corpus``.
    """

    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, say=say)
    t_start = time.time()
    store, runs, models = out / "store", out / "runs", out / "models"
    if corpus is None:
        corpus = out / "corpus"
        stages.run("corpus", [cfg.corpus_preset, cfg.seed, cfg.renderer],
                   lambda: build_corpus(cfg.corpus_preset, corpus, seed=cfg.seed, renderer=cfg.renderer,
                                        progress=progress, workers=cfg.workers))
    else:

        corpus = Path(corpus)
        stages.run("corpus", [str(corpus.resolve()), corpus_info(corpus).get("seed")], lambda: corpus_info(corpus))

    feature_set = get_feature_set("m3bert324")
    stages.run("features", [feature_set.config_hash(), stages.summaries["corpus"]["key"]],
               lambda: extract_to_store(corpus / "audio", store, feature_set=feature_set, workers=cfg.workers,
                                        progress=progress))

    pre_key = [stages.summaries["features"]["key"], cfg.model, cfg.masking, cfg.pretrain_steps, cfg.pretrain_batch,
               cfg.pretrain_effective_batch, cfg.pretrain_lr, cfg.pretrain_frames, cfg.precision, cfg.seed]
    stages.run("pretrain", pre_key, lambda: _pretrain(cfg, store, runs / "m2bert", masking=cfg.masking,
                                                       steps=cfg.pretrain_steps, seed=cfg.seed, progress=progress))

    def enrich() -> dict[str, Any]:
        enrich_cfg = load_enrich_config(None, overrides={
            "scenario": "frozen", "epochs": cfg.enrich_epochs, "seed": cfg.seed, "optim.lr": cfg.enrich_lr,
            "sampling": cfg.enrich_sampling, "weighting.name": cfg.enrich_weighting})
        specs = [f"builtin-{t}:{corpus}" for t in cfg.enrich_tasks]
        return run_enrich(enrich_cfg, model=runs / "m2bert", tasks=specs, out=runs / "m3bert", progress=progress)

    enrich_key = [stages.summaries["pretrain"]["key"], cfg.enrich_tasks, cfg.enrich_epochs, cfg.enrich_weighting,
                  cfg.enrich_sampling, cfg.enrich_lr]
    stages.run("enrich", enrich_key, enrich)

    stages.run("export", [stages.summaries["enrich"]["key"]],
               lambda: {"m2bert": _export(runs / "m2bert", models / "m2bert"),
                        "m3bert": _export(runs / "m3bert", models / "m3bert")})

    # -- benchmark -------------------------------------------------------------------------------
    bench_specs = [f"builtin-{t}:{corpus}" for t in cfg.bench_tasks]
    bench_key = [stages.summaries["export"]["key"], cfg.bench_tasks, cfg.bench_seeds, cfg.protocol,
                 cfg.probe_max_epochs, cfg.probe_layers]

    def bench() -> dict[str, Any]:
        res = _benchmark(cfg, models, bench_specs, out / "bench", progress=progress, say=say)
        return {"results": str(out / "bench" / "results.json"), "elapsed_s": res["elapsed_s"]}

    stages.run("bench", bench_key, bench)

    results = load_results(out / "bench" / "results.json")

    # -- interpretability (paper Figs. 5-6) ---------------------------------------------------------
    if cfg.analysis_clips:
        analysis_key = [stages.summaries["export"]["key"], cfg.analysis_task, cfg.analysis_clips, cfg.analysis_f0,
                        cfg.analysis_figures, cfg.seed]
        stages.run("analysis", analysis_key, lambda: _analysis(cfg, models, corpus, out / "analysis",
                                                               key=config_hash(analysis_key), progress=progress,
                                                               say=say))

    # -- masking ablation (paper Table 5) ----------------------------------------------------------
    ablation = None
    if cfg.ablation == "masking":
        abl_key = [stages.summaries["features"]["key"], cfg.model, cfg.ablation_seeds, cfg.ablation_steps,
                   cfg.ablation_tasks, cfg.bench_seeds, cfg.protocol, cfg.pretrain_lr, cfg.pretrain_frames,
                   cfg.probe_max_epochs, cfg.probe_layers]
        stages.run("ablation", abl_key, lambda: _ablation(cfg, store, corpus, out / "ablation", progress=progress,
                                                          say=say))
        ablation = load_results(out / "ablation" / "bench" / "results.json")

    # -- report ----------------------------------------------------------------------------------------
    total_s = time.time() - t_start
    sections = report_sections(cfg, out, results, stages.summaries, ablation=ablation)

    paths = write_report(results, out, sections=sections)
    shutil.copyfile(paths["results"], out / "report.json")
    say("")
    say("\n".join(terminal_summary(cfg, results, stages.summaries, total_s, out, ablation=ablation)))
    return results


# ---------------------------------------------------------------------------------------------
# Benchmark and ablation
# ---------------------------------------------------------------------------------------------


def _representations(cfg: DemoConfig, models: Path) -> list[Any]:

    return [
        ModelRepresentation(str(models / "m3bert"), name="M3BERT"),
        ModelRepresentation(str(models / "m2bert"), name="M2BERT"),
        ModelRepresentation(f"random:{cfg.model}:{cfg.seed}", name="M2BERT, no pre-training"),
        get_baseline("mfcc"),
        get_baseline("raw"),
        get_baseline("chance"),
    ]


def _benchmark(cfg: DemoConfig, models: Path, specs: list[str], out: Path, *, progress: bool,
               say: Callable[[str], None]) -> dict[str, Any]:

    return run_benchmark(_representations(cfg, models), specs, protocol=cfg.protocol, seeds=cfg.bench_seeds,
                         out_dir=out, cache_dir=out / "cache", progress=progress, echo=say,
                         probe_overrides=_probe_overrides(cfg))


def _probe_overrides(cfg: DemoConfig) -> dict[str, Any]:
    over: dict[str, Any] = {"layers": cfg.probe_layers}
    if cfg.probe_max_epochs:
        over["max_epochs"] = cfg.probe_max_epochs
    return over


def _analysis(cfg: DemoConfig, models: Path, corpus: Path, out: Path, *, key: str, progress: bool,
              say: Callable[[str], None]) -> dict[str, Any]:
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
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("m2bert", "m3bert"):
            say(f"[analysis] {name}: units vs descriptors over {spec} (test split, <= {cfg.analysis_clips} clips)")
            res = analyze(str(models / name), [spec], out / name, config=acfg, progress=progress, say=say,
                          descriptor_cache=cache, restart=True)
            best = res["models"]["model"]["best"]
            summary[name] = {"analysis": str(out / name / "analysis.json"), "n_items": res["inputs"]["n_done"],
                             "best_abs_r": {g: best[g]["abs_r"] for g in ("centroid", "harmonicity") if g in best}}
    finally:
        torch.set_num_threads(old_threads)
    return summary


def _ablation(cfg: DemoConfig, store: Path, corpus: Path, out: Path, *, progress: bool,
              say: Callable[[str], None]) -> dict[str, Any]:
    """One pre-training run per (masking policy, seed) with the same budget, then the benchmark."""

    reps = []
    for policy in MASKING_POLICIES:
        for s in range(cfg.ablation_seeds):
            run = out / "runs" / f"{policy.replace('+', '-')}-seed{s}"
            say(f"[ablation] pre-training with {policy}, seed {s}")
            _pretrain(cfg, store, run, masking=policy, steps=cfg.ablation_steps, seed=cfg.seed + s, progress=progress)
            reps.append(ModelRepresentation(str(run), name=f"{policy} (seed {s})"))
    specs = [f"builtin-{t}:{corpus}" for t in cfg.ablation_tasks]
    res = run_benchmark(reps, specs, protocol=cfg.protocol, seeds=cfg.bench_seeds, out_dir=out / "bench",
                        cache_dir=out / "bench" / "cache", progress=progress, echo=say,
                        probe_overrides=_probe_overrides(cfg))
    return {"results": str(out / "bench" / "results.json"), "elapsed_s": res["elapsed_s"]}
