"""``m3bert demo``: the whole M3BERT system end to end, small but real, and an honest answer to
"does pre-training help, and does enrichment help, at this compute?".

Stages (each reuses its output when the demo is run again, so an interrupted demo resumes):

1. ``corpus``      build the built-in labelled corpus (real compositions, synthetic performances)
2. ``music``       real recorded music for pre-training: free game soundtracks from Debian packages
                   (``apt-get download``, :mod:`m3bert.corpus.real_music`); when they cannot be
                   fetched the demo pre-trains on the built-in corpus instead, and says so
3. ``features``    324-d M3BERT frames of the built-in corpus into a feature store
4. ``music-features`` the same for the real music
5. ``pretrain``    M2BERT masked reconstruction (CFM+CCM) for a fixed step budget, keeping
                   checkpoints along the way (the learning curve)
6. ``diagnostics`` masked-cell loss of every kept checkpoint against trivial predictors (zeros,
                   per-channel mean, copy of the nearest visible frame) on the run's validation
7. ``enrich``      M3BERT multi-task enrichment of the frozen encoder on a subset of the tasks
8. ``export``      both encoders as model directories
9. ``bench``       M3BERT, M2BERT, its untrained twin and the MFCC / raw-feature baselines on every
                   built-in task, in the paper's and MARBLE's probing settings side by side, with
                   paired bootstraps for "pre-trained vs untrained" and "enriched vs pre-trained"
10. ``curve``      the held-out tasks probed at step 0 and at every kept checkpoint
11. ``analysis``   interpretability (paper Figs. 5-6): ``m3bert analyze`` of M2BERT and M3BERT
12. ``ablation``   (``--ablation masking``) the paper's Table 5 comparison
13. report         ``OUT/report.{html,md,json}`` and a one-screen terminal summary

The configuration of every stage lives in :class:`DemoConfig`; its presets ``tiny`` (tests),
``small`` (``make demo``, < 15 min on 2 cores) and ``long`` (``make demo-long``, 60-90 min) differ
only in sizes and budgets. The stage bodies are in :mod:`m3bert.app.demo_stages`.
"""

from __future__ import annotations

import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from m3bert.app import demo_stages as st
from m3bert.app.demo_report import report_sections, terminal_summary
from m3bert.core.errors import ConfigError
from m3bert.core.io import atomic_write_json, config_hash, read_json
from m3bert.corpus import build_corpus, corpus_info
from m3bert.corpus.real_music import RealMusicConfig, package_list
from m3bert.enrich import load_config as load_enrich_config
from m3bert.enrich import run_enrich
from m3bert.evaluate.report import load_results, write_report
from m3bert.features import get_feature_set
from m3bert.features.store import extract_to_store

ALL_TASKS = ("dance", "key", "instrument", "tags", "pitch", "tempo", "tempo-class", "style")
PRETRAIN_DATA = ("real", "real+builtin", "builtin")
SPLITS = ("predefined", "kfold", "heldout-kfold")


@dataclass
class DemoConfig:
    """Sizes and budgets of every demo stage."""

    corpus_preset: str = "small"  # built-in corpus preset (tiny | small | full)
    renderer: str = "auto"  # corpus synthesizer: auto (FluidSynth when present) | fluidsynth | numpy
    seed: int = 0  # seeds the corpus, pre-training, enrichment and probes
    workers: int = 2  # processes for corpus rendering and feature extraction
    # Pre-training data: "real" = the real music of `music_packages` (the built-in corpus when they cannot be
    # fetched); "real+builtin" = both; "builtin" = the built-in corpus only (no network).
    pretrain_data: str = "real"
    music_packages: str = "demo"  # real-music package set (demo | full) or comma-separated Debian package names
    music_min_seconds: float = 30.0  # shorter files are jingles or effects: skipped and recorded
    # CMVN of the encoders' input frames (features.normalize): "corpus" = one mean/std over the pre-training
    # store, saved with the models; "clip" = every clip to zero mean and unit variance per channel, which erases
    # what a clip's average spectrum says (a note's pitch, a tune's key): measured, the untrained encoder's
    # held-out scores rise from key .206 / pitch .189 (clip) to .530 / .802 (corpus); README "Diagnosis".
    cmvn: str = "corpus"
    model: str = "m2bert-mini"  # registered encoder architecture pre-trained by the demo
    masking: str = "cfm+ccm"  # masking policies, '+'-joined (paper's best: cfm+ccm)
    pretrain_steps: int = 300  # optimizer steps of pre-training (~3 min on 2 idle cores)
    pretrain_batch: int = 16  # chunks per micro-batch
    pretrain_effective_batch: int = 16  # chunks per optimizer step
    pretrain_lr: float = 1e-3  # peak lr (the paper's 2e-4 is for 200k steps; 3e-3 lowered the loss, not the probes)
    pretrain_frames: int = 256  # random crop length in frames (~6 s)
    precision: str = "bf16"  # bf16 autocast (fp32 is the reference)
    curve_points: int = 3  # checkpoints kept every pretrain_steps / curve_points steps and probed (0 = no curve)
    diagnostics: bool = True  # reconstruction loss of the kept checkpoints vs trivial predictors
    # Tasks used for enrichment; instrument is held out (with key and pitch) so that three well-powered tasks
    # test whether pre-training and enrichment generalise (instrument has 622 clips: MDD .038 under 5-fold)
    enrich_tasks: tuple[str, ...] = ("dance", "tags", "tempo-class")
    enrich_epochs: int = 12  # multi-task epochs
    enrich_lr: float = 1e-2  # peak lr of enrichment layer + heads (1e-3 barely moves them on this little data)
    enrich_weighting: str = "uncertainty"  # equal | reweight | uncertainty
    enrich_sampling: str = "temperature:2"  # proportional | uniform | temperature:T
    # held out = not enriched; tempo-class replaces the BPM regression no representation learns (R^2 <= 0.04);
    # style is dropped: no baseline learns it (5-fold, small corpus: best .230 vs chance .200, MDD .13; README)
    bench_tasks: tuple[str, ...] = ("dance", "key", "instrument", "tags", "pitch", "tempo-class")
    bench_seeds: int = 1  # probe seeds per (representation, task); the answers' CIs are paired bootstraps over test pieces
    protocol: str = "marble"  # probe protocol (marble | kim | linear)
    # torch threads while probing (bench, curve, ablation probes): the probes' small ops spin two threads
    # for nothing; measured on the shared 2-core machine, a MARBLE probe on builtin-key took 27x the CPU
    # time with 2 threads (133.6 s vs 4.9 s). Pre-training keeps torch's default.
    probe_threads: int = 1
    # processes for the probe fits (evaluate.jobs: forked, one torch thread each; scores do not depend on it)
    probe_workers: int = 2
    probe_max_epochs: int | None = None  # cap on probe epochs (None = the protocol's)
    # Probing settings compared side by side (evaluate.probes SETTINGS): "paper" = the model's output layer,
    # time-mean (the M3BERT paper's); "marble" = each layer + weighted sum, best on validation (MARBLE's);
    # "*-meanstd" = mean + std over time, the pooling of the raw-feature statistics. Every representation,
    # baselines included, is pooled alike in a setting. The small preset: paper and MARBLE side by side with one
    # probe seed (MARBLE's layer grid costs 3.4x a setting; two seeds of both would not fit 15 minutes).
    settings: tuple[str, ...] = ("paper", "marble")
    headline_setting: str = "paper"  # the setting of the learning curve and the ablation (the answers show all)
    # predefined (the corpus's splits) | kfold (grouped k-fold by piece, every clip tested) | heldout-kfold (k-fold
    # on the held-out tasks, the corpus's split on the enrichment tasks, whose training clips M3BERT has seen)
    split: str = "predefined"
    n_folds: int = 5  # folds of the kfold split
    ablation: str | None = None  # None | "masking"
    ablation_seeds: int = 2  # pre-training seeds per masking policy in the ablation
    ablation_steps: int = 100  # pre-training steps per ablation run
    ablation_tasks: tuple[str, ...] = ("key", "pitch", "instrument")  # tasks the ablation is judged on
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
        if self.pretrain_data not in PRETRAIN_DATA:
            raise ConfigError(f"demo pretrain_data={self.pretrain_data!r}; expected one of {PRETRAIN_DATA}")
        if self.pretrain_data != "builtin":
            RealMusicConfig(packages=package_list(self.music_packages), min_seconds=self.music_min_seconds)
        if not 0 <= self.curve_points <= self.pretrain_steps:
            raise ConfigError(f"demo curve_points={self.curve_points}; expected 0..pretrain_steps={self.pretrain_steps}")
        self.settings = tuple(self.settings)
        if self.headline_setting not in self.settings:
            raise ConfigError(f"demo headline_setting={self.headline_setting!r}; expected one of settings={self.settings}")
        if self.cmvn not in ("clip", "corpus"):
            raise ConfigError(f"demo cmvn={self.cmvn!r}; expected 'clip' or 'corpus'")
        if self.split not in SPLITS:
            raise ConfigError(f"demo split={self.split!r}; expected one of {SPLITS}")

    @property
    def held_out(self) -> tuple[str, ...]:
        return tuple(t for t in self.bench_tasks if t not in self.enrich_tasks)

    @property
    def keep_every(self) -> int:
        return self.pretrain_steps // self.curve_points if self.curve_points else 0


PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    # The test preset: every stage runs, on the tiny corpus with the tiny model and a few steps (no network).
    "tiny": dict(corpus_preset="tiny", model="m2bert-tiny", pretrain_steps=12, pretrain_batch=8,
                 pretrain_effective_batch=8, pretrain_frames=128, enrich_epochs=2, bench_seeds=2,
                 protocol="linear", probe_max_epochs=30, ablation_seeds=1, ablation_steps=6, workers=1,
                 ablation_tasks=("pitch", "key"), analysis_clips=4, analysis_f0=False,
                 analysis_figures=False, pretrain_data="builtin", curve_points=2, settings=("paper",),
                 headline_setting="paper"),
    # The longer run (`make demo-long`, about 70 min on 2 idle cores): 8x the pre-training (2400 steps) on the
    # full real-music set (15 h, 11 packages), a checkpoint every 400 steps on the learning curve, MARBLE's layer
    # grid beside the paper's output layer, and 5-fold cross-validation by piece on the held-out tasks (every clip
    # tested: minimum detectable differences .04-.11 instead of .05-.3). One probe seed: the paired bootstraps over
    # test pieces decide, and MARBLE's grid under k-fold costs ~4 min of CPU per model and task (measured: two
    # seeds and a third setting would not fit 90 min). The probing corpus stays `small`.
    "long": dict(music_packages="full", pretrain_steps=2400, curve_points=6, bench_seeds=1,
                 settings=("paper", "marble"), headline_setting="paper", split="heldout-kfold"),
}


def demo_config(preset: str = "small", **overrides: Any) -> DemoConfig:
    if preset not in PRESETS:
        raise ConfigError(f"demo preset={preset!r}; expected one of {sorted(PRESETS)}")
    return DemoConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


# ---------------------------------------------------------------------------------------------
# Stage bookkeeping: a stage is done when OUT/stages/NAME.json holds the hash of its inputs.
# ---------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children (feature workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Stages:
    """Runs each stage once per configuration; records its summary and wall time."""

    def __init__(self, out: Path, *, say: Callable[[str], None]) -> None:
        self.out = out
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.summaries: dict[str, dict[str, Any]] = {}

    def run(self, name: str, key: Any, fn: Callable[[], dict[str, Any]], *,
            keep: Callable[[dict[str, Any]], bool] = lambda summary: True) -> dict[str, Any]:
        """``keep(summary)`` False: the result is used now but not recorded, so a rerun tries again."""
        path = self.dir / f"{name}.json"
        digest = config_hash(key)
        if path.is_file():
            record = read_json(path)
            if record.get("key") == digest:
                self.say(f"[{name}] reusing the result of an earlier run ({record['seconds']:.0f} s then)")
                self.summaries[name] = record
                return record["summary"]
        self.say(f"[{name}] running ...")
        t0, c0 = time.time(), cpu_seconds()
        summary = fn()
        # CPU seconds (this process + its finished workers): on a shared machine the wall time measures the
        # neighbours too, the CPU time measures the stage (on an idle machine wall ~ CPU / cores used)
        record = {"stage": name, "key": digest, "seconds": time.time() - t0, "cpu_seconds": cpu_seconds() - c0,
                  "summary": summary}
        if keep(summary):
            atomic_write_json(path, record)
        else:
            path.unlink(missing_ok=True)
        self.summaries[name] = record
        self.say(f"[{name}] done in {record['seconds']:.0f} s")
        return summary


def run_demo(out: str | Path = "demo_out", *, config: DemoConfig | None = None, progress: bool = True,
             say: Callable[[str], None] = print, corpus: str | Path | None = None,
             music_downloader: Any = None) -> dict[str, Any]:
    """Run (or resume) every stage into ``out``; returns the benchmark results dict.

    ``corpus``: an already built corpus folder to use instead of building one into ``out/corpus``.
    ``music_downloader``: replaces ``apt-get download`` for the real music (tests, mirrors).
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

    # -- pre-training data: real music when it can be fetched, else the built-in corpus ---------------
    music_n = 0
    if cfg.pretrain_data != "builtin":
        music = stages.run("music", [package_list(cfg.music_packages), cfg.music_min_seconds],
                           lambda: st.gather_music(cfg, out / "music", say=say, downloader=music_downloader),
                           keep=lambda summary: summary["n_files"] > 0)
        music_n = int(music["n_files"])

    feature_set = get_feature_set("m3bert324", cmvn=cfg.cmvn)
    stages.run("features", [feature_set.config_hash(), stages.summaries["corpus"]["key"]],
               lambda: extract_to_store(corpus / "audio", store, feature_set=feature_set, workers=cfg.workers,
                                        progress=progress))
    pretrain_stores: list[Path] = [store]
    data_used = "builtin"
    if music_n:
        stages.run("music-features", [feature_set.config_hash(), stages.summaries["music"]["key"], music_n],
                   lambda: st.music_features(cfg, out / "music", out / "music_store", progress=progress))
        data_used = cfg.pretrain_data
        pretrain_stores = [out / "music_store"] + ([store] if cfg.pretrain_data == "real+builtin" else [])
    pre_store = [str(p) for p in pretrain_stores]

    pre_key = [stages.summaries["features"]["key"], data_used,
               stages.summaries["music-features"]["key"] if "music-features" in stages.summaries else None,
               cfg.model, cfg.masking, cfg.pretrain_steps, cfg.pretrain_batch, cfg.pretrain_effective_batch,
               cfg.pretrain_lr, cfg.pretrain_frames, cfg.precision, cfg.seed, cfg.keep_every]
    stages.run("pretrain", pre_key, lambda: {**st.run_pretrain(cfg, pre_store, runs / "m2bert", masking=cfg.masking,
                                                               steps=cfg.pretrain_steps, seed=cfg.seed,
                                                               progress=progress, keep_every=cfg.keep_every),
                                              "data": data_used, "stores": pre_store})
    if cfg.diagnostics:
        stages.run("diagnostics", [stages.summaries["pretrain"]["key"]],
                   lambda: st.diagnostics(cfg, runs / "m2bert", pre_store, out / "diagnostics.json"))

    def enrich() -> dict[str, Any]:
        enrich_cfg = load_enrich_config(None, overrides={
            "scenario": "frozen", "epochs": cfg.enrich_epochs, "seed": cfg.seed, "optim.lr": cfg.enrich_lr,
            "sampling": cfg.enrich_sampling, "weighting.name": cfg.enrich_weighting})
        specs = [f"builtin-{t}:{corpus}" for t in cfg.enrich_tasks]
        if (runs / "m3bert").exists():  # this stage is not done for this key: another request's run, or debris
            shutil.rmtree(runs / "m3bert")  # (enrichment takes about a minute; it is redone, not resumed)
        return run_enrich(enrich_cfg, model=runs / "m2bert", tasks=specs, out=runs / "m3bert", progress=progress)

    enrich_key = [stages.summaries["pretrain"]["key"], cfg.enrich_tasks, cfg.enrich_epochs, cfg.enrich_weighting,
                  cfg.enrich_sampling, cfg.enrich_lr]
    stages.run("enrich", enrich_key, enrich)

    stages.run("export", [stages.summaries["enrich"]["key"]],
               lambda: {"m2bert": st.export(runs / "m2bert", models / "m2bert"),
                        "m3bert": st.export(runs / "m3bert", models / "m3bert"),
                        "untrained": st.export_untrained(runs / "m2bert", pre_store, models / "m2bert-untrained")})

    # -- benchmark and learning curve --------------------------------------------------------------
    probe_key = [cfg.bench_seeds, cfg.protocol, cfg.probe_max_epochs, cfg.settings, cfg.headline_setting, cfg.split,
                 cfg.n_folds]
    bench_specs = [f"builtin-{t}:{corpus}" for t in cfg.bench_tasks]

    def bench() -> dict[str, Any]:
        res = st.benchmark(cfg, models, bench_specs, out / "bench", progress=progress, say=say)
        return {"results": str(out / "bench" / "results.json"), "elapsed_s": res["elapsed_s"]}

    stages.run("bench", [stages.summaries["export"]["key"], cfg.bench_tasks, st.BASELINES, probe_key], bench)
    results = load_results(out / "bench" / "results.json")

    curve = None
    if cfg.curve_points and cfg.held_out:
        curve_specs = [f"builtin-{t}:{corpus}" for t in cfg.held_out]
        stages.run("curve", [stages.summaries["pretrain"]["key"], cfg.held_out, probe_key],
                   lambda: st.learning_curve(cfg, runs / "m2bert", models / "m2bert-untrained", curve_specs, out / "curve",
                                             cache=out / "bench" / "cache", progress=progress, say=say))
        curve = load_results(out / "curve" / "results.json")

    # -- interpretability (paper Figs. 5-6) ---------------------------------------------------------
    if cfg.analysis_clips:
        analysis_key = [stages.summaries["export"]["key"], cfg.analysis_task, cfg.analysis_clips, cfg.analysis_f0,
                        cfg.analysis_figures, cfg.seed]
        stages.run("analysis", analysis_key, lambda: st.analysis(cfg, models, corpus, out / "analysis",
                                                                 key=config_hash(analysis_key), progress=progress,
                                                                 say=say))

    # -- masking ablation (paper Table 5) ----------------------------------------------------------
    ablation = None
    if cfg.ablation == "masking":
        abl_key = [stages.summaries["pretrain"]["key"], cfg.ablation_seeds, cfg.ablation_steps, cfg.ablation_tasks,
                   probe_key]
        stages.run("ablation", abl_key, lambda: st.ablation(cfg, pre_store, corpus, out / "ablation",
                                                            progress=progress, say=say))
        ablation = load_results(out / "ablation" / "bench" / "results.json")

    # -- report ----------------------------------------------------------------------------------------
    total_s = time.time() - t_start
    diag = read_json(out / "diagnostics.json") if cfg.diagnostics and (out / "diagnostics.json").is_file() else None
    sections = report_sections(cfg, out, results, stages.summaries, ablation=ablation, curve=curve, diagnostics=diag)
    title = f"m3bert demo ({cfg.model}, {cfg.pretrain_steps} pre-training steps): does pre-training help, does enrichment help?"
    paths = write_report({**results, "title": title}, out, sections=sections)
    shutil.copyfile(paths["results"], out / "report.json")
    say("")
    say("\n".join(terminal_summary(cfg, results, stages.summaries, total_s, out, ablation=ablation, curve=curve,
                                   diagnostics=diag)))
    return results
