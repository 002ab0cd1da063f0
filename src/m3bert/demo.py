"""``m3bert demo``: the whole M3BERT system end to end on the built-in corpus, small but real.

Stages (each reuses its output when the demo is run again, so an interrupted demo resumes):

1. ``corpus``    build the built-in labelled corpus (real compositions, synthetic performances)
2. ``features``  324-d M3BERT frames of every clip into a feature store
3. ``pretrain``  M2BERT masked reconstruction (CFM+CCM by default) for a fixed step budget
4. ``enrich``    M3BERT multi-task enrichment of the frozen encoder on a subset of the tasks
5. ``export``    both encoders as model directories
6. ``bench``     M3BERT, M2BERT, a random encoder and the MFCC / raw-feature baselines on every
                 built-in task (enrichment tasks and held-out tasks), several probe seeds
7. ``ablation``  (``--ablation masking``) the paper's Table 5 comparison: one pre-training run per
                 masking policy and seed, same budget, benchmarked on the held-out tasks
8. ``report``    ``OUT/report.{html,md,json}`` and a one-screen terminal summary

The configuration of every stage lives in :class:`DemoConfig`; its presets ``tiny`` (tests) and
``small`` (``make demo``) differ only in sizes and budgets.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from m3bert.errors import ConfigError
from m3bert.io import atomic_write_json, config_hash, read_json

ALL_TASKS = ("dance", "key", "instrument", "tags", "pitch", "tempo", "style")
MASKING_POLICIES = ("cfm", "ccm", "pm", "cfm+ccm")


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

    def __post_init__(self) -> None:
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
                 ablation_tasks=("pitch", "key")),
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
    from m3bert.models.encoder import get_model_config
    from m3bert.train.pretrain import load_pretrain_config

    arch = get_model_config(cfg.model).to_dict()
    arch.pop("enrichment", None)
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in arch.items() if k != "n_input"]
    overrides += [
        f"seed={seed}",
        f"masking.policies={json.dumps(masking.split('+'))}",
        f"data.max_frames={cfg.pretrain_frames}",
        f"data.batch_size={cfg.pretrain_batch}",
        f"optim.effective_batch={cfg.pretrain_effective_batch}",
        f"optim.lr={cfg.pretrain_lr}",
        f"train.steps={steps}",
        f"train.precision={cfg.precision}",
        "train.device=cpu",
        f"train.log_every={max(1, steps // 20)}",
        f"train.eval_every={max(1, steps // 4)}",
        f"train.save_every={max(1, steps // 4)}",
    ]
    return load_pretrain_config(None, overrides=overrides)


def _pretrain(cfg: DemoConfig, store: Path, run: Path, *, masking: str, steps: int, seed: int,
              progress: bool) -> dict[str, Any]:
    from m3bert.train.pretrain import pretrain

    if (run / "run.json").is_file():  # an interrupted run: continue it exactly
        return pretrain(None, store=store, out=run, resume=True, progress=progress)
    if run.exists():
        shutil.rmtree(run)  # debris of a run that never wrote run.json
    return pretrain(_pretrain_config(cfg, masking=masking, steps=steps, seed=seed), store=store, out=run,
                    progress=progress)


def _export(run: Path, out: Path) -> dict[str, Any]:
    from m3bert.commands.export import export_model

    return export_model(run, out, overwrite=True)


def run_demo(out: str | Path = "demo_out", *, config: DemoConfig | None = None, progress: bool = True,
             say: Callable[[str], None] = print, corpus: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every stage into ``out``; returns the benchmark results dict.

    ``corpus``: an already built corpus folder to use instead of building one into ``out/corpus``.
    """
    from m3bert.corpus.builtin import build_corpus
    from m3bert.features import get_feature_set
    from m3bert.features.store import extract_to_store
    from m3bert.train.multitask import load_config as load_multitask_config, run_finetune

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
        from m3bert.corpus.builtin import corpus_info

        corpus = Path(corpus)
        stages.run("corpus", [str(corpus.resolve()), corpus_info(corpus).get("seed")], lambda: corpus_info(corpus))

    fs = get_feature_set("m3bert324")
    stages.run("features", [fs.config_hash(), stages.summaries["corpus"]["key"]],
               lambda: extract_to_store(corpus / "audio", store, feature_set=fs, workers=cfg.workers,
                                        progress=progress))

    pre_key = [stages.summaries["features"]["key"], cfg.model, cfg.masking, cfg.pretrain_steps, cfg.pretrain_batch,
               cfg.pretrain_effective_batch, cfg.pretrain_lr, cfg.pretrain_frames, cfg.precision, cfg.seed]
    stages.run("pretrain", pre_key, lambda: _pretrain(cfg, store, runs / "m2bert", masking=cfg.masking,
                                                       steps=cfg.pretrain_steps, seed=cfg.seed, progress=progress))

    def enrich() -> dict[str, Any]:
        mt_cfg = load_multitask_config(None, overrides=[
            "scenario=frozen", f"epochs={cfg.enrich_epochs}", f"seed={cfg.seed}", f"optim.lr={cfg.enrich_lr}",
            f"sampling={cfg.enrich_sampling}", f"weighting.name={cfg.enrich_weighting}"])
        specs = [f"builtin-{t}:{corpus}" for t in cfg.enrich_tasks]
        return run_finetune(mt_cfg, model=runs / "m2bert", tasks=specs, out=runs / "m3bert", progress=progress)

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
    from m3bert.bench.report import load_results

    results = load_results(out / "bench" / "results.json")

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
    from m3bert.bench.report import write_report

    paths = write_report(results, out, sections=sections)
    shutil.copyfile(paths["results"], out / "report.json")
    say("")
    say("\n".join(terminal_summary(cfg, results, stages.summaries, total_s, out, ablation=ablation)))
    return results


# ---------------------------------------------------------------------------------------------
# Benchmark and ablation
# ---------------------------------------------------------------------------------------------


def _representations(cfg: DemoConfig, models: Path) -> list[Any]:
    from m3bert.bench.baselines import get_baseline
    from m3bert.bench.representations import ModelRepresentation

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
    from m3bert.bench.runner import run_benchmark

    return run_benchmark(_representations(cfg, models), specs, protocol=cfg.protocol, seeds=cfg.bench_seeds,
                         out_dir=out, cache_dir=out / "cache", progress=progress, echo=say,
                         probe_overrides=_probe_overrides(cfg))


def _probe_overrides(cfg: DemoConfig) -> dict[str, Any]:
    over: dict[str, Any] = {"layers": cfg.probe_layers}
    if cfg.probe_max_epochs:
        over["max_epochs"] = cfg.probe_max_epochs
    return over


def _ablation(cfg: DemoConfig, store: Path, corpus: Path, out: Path, *, progress: bool,
              say: Callable[[str], None]) -> dict[str, Any]:
    """One pre-training run per (masking policy, seed) with the same budget, then the benchmark."""
    from m3bert.bench.representations import ModelRepresentation
    from m3bert.bench.runner import run_benchmark

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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _score(results: dict[str, Any], rep: str, task: str) -> dict[str, Any] | None:
    for r in results["results"]:
        if r["representation"] == rep and r["task"] == task and r["runs"]:
            return r["summary"]["score"]
    return None


def _within_noise(results: dict[str, Any], task: str, a: str, b: str) -> bool | None:
    """Whether reps ``a`` and ``b`` are within noise on ``task``: overlapping 95 % CIs."""
    sa, sb = _score(results, a, task), _score(results, b, task)
    if not sa or not sb or sa.get("half_width") is None or sb.get("half_width") is None:
        return None
    return bool(sa["ci_high"] >= sb["ci_low"] and sb["ci_high"] >= sa["ci_low"])


def _fmt(s: dict[str, Any] | None) -> str:
    if not s:
        return "n/a"
    hw = s.get("half_width")
    return f"{s['mean']:.3f}" + (f" ± {hw:.3f}" if hw is not None else "")


def m2_vs_m3_rows(cfg: DemoConfig, results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for t in cfg.bench_tasks:
        task = f"builtin-{t}"
        m2, m3 = _score(results, "M2BERT", task), _score(results, "M3BERT", task)
        if not m2 or not m3:
            continue
        noise = _within_noise(results, task, "M2BERT", "M3BERT")
        verdict = "within noise" if noise else ("M3BERT better" if m3["mean"] > m2["mean"] else "M2BERT better")
        if noise is None:
            verdict = "n/a (one seed)"
        rows.append([task, "enrichment" if t in cfg.enrich_tasks else "held out", _fmt(m2), _fmt(m3),
                     round(m3["mean"] - m2["mean"], 4), verdict])
    return rows


def _loss_curve_png(run: Path) -> bytes | None:
    from m3bert.bench.report import figure_png

    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    train, val = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("step")
        for key, value in row.items():
            if step is None or not isinstance(value, (int, float)):
                continue
            if key in ("loss", "train/loss"):
                train.append((step, value))
            elif key.startswith("val/") and key.endswith("loss"):
                val.append((step, key, value))
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot([s for s, _ in train], [v for _, v in train], label="train (masked cells)", lw=1.2)
    for key in sorted({k for _, k, _ in val}):
        pts = [(s, v) for s, k, v in val if k == key]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("Huber loss")
    ax.set_title("M2BERT pre-training")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def report_sections(cfg: DemoConfig, out: Path, results: dict[str, Any], stages: dict[str, dict[str, Any]],
                    *, ablation: dict[str, Any] | None = None) -> list[Any]:
    from m3bert.bench.report import Figure, Section, Table

    corpus = stages.get("corpus", {}).get("summary", {})
    renderer = corpus.get("renderer") or corpus.get("renderer_name") or cfg.renderer
    pre = stages.get("pretrain", {}).get("summary", {})
    sections = [Section(
        title="What this demo shows",
        text=(
            "Every number here was produced by `m3bert demo` on this machine; none is typed by hand.\n\n"
            f"The audio is the built-in corpus (preset `{cfg.corpus_preset}`): real compositions from music21's "
            "corpus (O'Neill's and Ryan's dance tunes, Essen folksongs, Bach chorales) and single notes, rendered "
            f"as synthetic performances (renderer: {renderer}). Labels come from the scores and the render "
            "settings, never from a person's judgement, and the sound is far cleaner and more uniform than "
            "recorded music, so these numbers say whether the pipeline learns, not how M3BERT fares on real "
            "music (the README has the recipes for that).\n\n"
            f"Compute is tiny: a `{cfg.model}` encoder pre-trained for {cfg.pretrain_steps} steps on "
            f"{cfg.pretrain_frames}-frame crops, against the paper's 200k steps of M3BERT-Small on 4,283 hours. "
            f"Multi-task enrichment used the tasks {', '.join(cfg.enrich_tasks)}; the tasks "
            f"{', '.join(cfg.held_out) or '(none)'} were held out of enrichment. Probes: protocol "
            f"`{cfg.protocol}` on the models' output representation (layers: `{cfg.probe_layers}`), "
            f"{cfg.bench_seeds} seeds, mean ± 95 % CI. Two representations whose CIs overlap are within noise: "
            "read those comparisons as ties."
        ))]
    stage_rows = [[name, round(rec.get("seconds", 0.0), 1)] for name, rec in stages.items()]
    sections.append(Section(title="Pipeline stages", text="Wall time of each stage in the run that produced it.",
                            table=Table(headers=["stage", "seconds"], rows=stage_rows)))
    figs = []
    png = _loss_curve_png(out / "runs" / "m2bert")
    if png:
        figs.append(Figure(caption="Masked-reconstruction loss of the demo's M2BERT pre-training run.", png=png))
    pre_text = ""
    if pre:
        pre_text = (f"Pre-training ran {pre.get('end_step')} steps at {pre.get('frames_per_s', 0):.0f} frames/s; "
                    f"final validation: " + ", ".join(f"{k} {v:.4f}" for k, v in (pre.get('val') or {}).items()))
    sections.append(Section(title="M2BERT pre-training", text=pre_text, figures=figs))
    rows = m2_vs_m3_rows(cfg, results)
    if rows:
        sections.append(Section(
            title="M2BERT vs M3BERT (enrichment tasks and held-out tasks)",
            text="Task score (primary metric) of the probe on each representation. 'within noise' = the 95 % CIs "
                 "overlap. Held-out tasks show whether multi-task enrichment generalises beyond its own tasks.",
            table=Table(headers=["task", "role", "M2BERT", "M3BERT", "M3 - M2", "verdict"], rows=rows)))
    if ablation is not None:
        sections.append(ablation_section(cfg, ablation))
    return sections


def ablation_section(cfg: DemoConfig, ablation: dict[str, Any]) -> Any:
    """Paper Table 5 on the built-in corpus: mean task score per masking policy over seeds."""
    import numpy as np

    from m3bert.bench.report import Section, Table

    tasks = [t["name"] for t in ablation["tasks"]]
    rows = []
    for policy in MASKING_POLICIES:
        row: list[Any] = [policy]
        all_runs = []
        for task in tasks:
            runs = [x["score"] for r in ablation["results"] if r["task"] == task
                    and r["representation"].startswith(f"{policy} (") for x in r["runs"]]
            all_runs.append(runs)
            row.append(f"{np.mean(runs):.3f} ± {np.std(runs):.3f}" if runs else "n/a")
        flat = [v for runs in all_runs for v in runs]
        row.append(round(float(np.mean(flat)), 4) if flat else None)
        rows.append(row)
    return Section(
        title="Masking ablation (paper Table 5, built-in corpus)",
        text=(f"One pre-training run per masking policy and seed ({cfg.ablation_seeds} seeds x {cfg.ablation_steps} "
              f"steps each, same budget), probed on {', '.join(tasks)} with {cfg.bench_seeds} probe seeds. Cells: "
              "mean ± std over pre-training seeds and probe seeds. The paper (MTG-Jamendo, ROC-AUC) found "
              "CFM+CCM > PM > CFM > CCM; with this little compute, differences smaller than the std are noise."),
        table=Table(headers=["masking"] + tasks + ["mean"], rows=rows))


def terminal_summary(cfg: DemoConfig, results: dict[str, Any], stages: dict[str, dict[str, Any]], total_s: float,
                     out: Path, *, ablation: dict[str, Any] | None = None) -> list[str]:
    from m3bert.bench.report import summary_lines

    lines = ["=" * 78, "m3bert demo: summary", "=" * 78]
    lines += summary_lines(results)
    lines.append("")
    rows = m2_vs_m3_rows(cfg, results)
    if rows:
        lines.append("M2BERT -> M3BERT per task (role, delta, verdict):")
        for task, role, _m2, _m3, delta, verdict in rows:
            lines.append(f"  {task:<20s} {role:<11s} {delta:+.4f}  {verdict}")
    if ablation is not None:
        sec = ablation_section(cfg, ablation)
        lines.append("")
        lines.append("Masking ablation (mean score over tasks and seeds):")
        for row in sec.table.rows:
            lines.append(f"  {row[0]:<8s} {row[-1]}")
    lines.append("")
    timing = ", ".join(f"{k} {v.get('seconds', 0):.0f}s" for k, v in stages.items())
    lines.append(f"total wall time of this invocation: {total_s / 60:.1f} min (stages when run: {timing})")
    lines.append(f"report: {out / 'report.html'}  (+ report.md, report.json)")
    return lines
