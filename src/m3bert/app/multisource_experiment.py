"""``m3bert multisource experiment``: Kim et al. (2020)'s experiment on a built-in corpus, end to end.

1. The design (:func:`m3bert.enrich.design.experiment_design`): SS-R for every source and the five
   multi-source strategies with 2..m sources (all m, plus a balanced fraction of the smaller
   subsets), each once per seed. Every run is a ``multisource`` enrich run under ``OUT/runs/NAME``
   (a finished run is skipped, an interrupted one resumes exactly), sharing one frame cache.
2. Every learned representation (its last checkpoint: the paper trains a fixed number of epochs) and
   the untrained network (the paper's *Rand*) are probed on held-out target tasks with
   :func:`m3bert.evaluate.runner.run_benchmark` and the ``kim`` protocol (mean + std of 2.5 s
   slices, MLP 2x256); optionally a cold-start recommendation target (a synthetic taste profile
   over the corpus written in the Taste Profile layout, :mod:`m3bert.evaluate.recommendation`).
3. The two findings are tested (:func:`m3bert.enrich.design.findings`) and written as a report
   (markdown + JSON) with the timings.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3bert.core.errors import ConfigError
from m3bert.core.io import atomic_write_json, atomic_write_text, read_json
from m3bert.corpus.layout import read_metadata
from m3bert.enrich import load_multisource_config, train_enrich
from m3bert.enrich.design import experiment_design, findings
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.recommendation import WMFConfig, evaluate_recommendation
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.models.kim import STRATEGIES
from m3bert.tasks.registry import load_task

DEFAULT_SOURCES = ("builtin-tempo", "builtin-tags", "builtin-key", "builtin-instrument")
DEFAULT_TARGETS = ("builtin-dance", "builtin-style", "builtin-pitch")
# configs/kim-corpus.yaml: Algorithm 1 shrunk to minutes on two CPU cores
CORPUS_SETTINGS: dict[str, Any] = {
    "batch_size": 32, "eval_batch_size": 64, "epochs": 3, "threads": 1, "optim.lr": 1e-3,
    "multisource.crop_frames": 108,
}


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, metavar="DIR", help="built-in corpus (m3bert corpus build --preset small)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder (rerun to resume)")
    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated learning-source tasks")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated held-out target tasks")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per design cell")
    p.add_argument("--probe-seeds", type=int, default=1,
                   help="probe seeds (splits) per representation and target; 1: every representation on the same split "
                        "(the bootstrap over runs carries the variability)")
    p.add_argument("--probe-epochs", type=int, default=100, help="MLP probe iterations (kim protocol: 200)")
    p.add_argument("--model", default="random:kim-cnn-tiny", metavar="SPEC", help="the kim-cnn config to train")
    p.add_argument("--config", default=None, metavar="YAML", help="training config over the Algorithm 1 preset "
                   "(default: the corpus settings of configs/kim-corpus.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted training-config override (repeatable)")
    p.add_argument("--taste-users", type=int, default=100,
                   help="users of the synthetic taste profile for the recommendation target (0: no recommendation)")
    p.add_argument("--taste-songs", type=int, default=300, help="songs (corpus clips) of the synthetic taste profile")
    p.add_argument("--report", default=None, metavar="MD", help="report path (default OUT/report.md; + .json beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_experiment_command(args: argparse.Namespace) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    res = run_experiment(args.corpus, args.out, sources=split(args.sources), targets=split(args.targets),
                         seeds=list(range(args.seeds)), probe_seeds=args.probe_seeds, probe_epochs=args.probe_epochs,
                         model=args.model, config=args.config, overrides=args.overrides, taste_users=args.taste_users,
                         taste_songs=args.taste_songs,
                         report=args.report, progress=not args.no_progress, echo=print)
    for key in ("finding1", "finding2"):
        f = res["findings"][key]
        print(f"{f['claim']}: {f['verdict']} (estimate [95% CI]: {_ci(f)})")
    print(f"report: {res['report']}")
    return 0


def training_config(config: str | None, overrides: Sequence[str], strategy: str, seed: int) -> Any:
    base = [] if config else [f"{k}={v}" for k, v in CORPUS_SETTINGS.items()]
    return load_multisource_config(config, base + list(overrides) + [f"multisource.strategy={strategy}", f"seed={seed}"])


def synth_taste_profile(corpus: str | Path, out: str | Path, *, n_users: int, n_songs: int = 300,
                        seed: int = 0) -> Path:
    """A synthetic Taste Profile over ``n_songs`` clips of the corpus (seeded) in the published layout
    (``train_triplets.txt`` + previews named by song id, symlinked): each user likes one family of music,
    two instruments and a tempo range, and plays the ~12 % of songs that suit those tastes best (plus
    noise) a few times each."""
    out = Path(out)
    if (out / "train_triplets.txt").is_file():
        return out
    rng = np.random.default_rng(seed)
    rows = read_metadata(Path(corpus))
    if n_songs and len(rows) > n_songs:
        rows = [rows[i] for i in sorted(rng.choice(len(rows), size=int(n_songs), replace=False))]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    families = sorted({str(r.get("family") or r.get("kind")) for r in rows})
    programs = sorted({int(r["program"]) for r in rows if r.get("program") is not None})
    songs = []
    for r in rows:
        sid = "SO" + hashlib.sha1(r["clip_id"].encode()).hexdigest()[:16].upper()
        link = out / "audio" / f"{sid}{Path(r['path']).suffix}"
        if not link.exists():
            link.symlink_to((Path(corpus) / r["path"]).resolve())
        songs.append((sid, str(r.get("family") or r.get("kind")), r.get("program"), r.get("tempo_bpm")))
    lines = []
    for u in range(n_users):
        fam, progs = rng.choice(families), set(rng.choice(programs, size=2, replace=False).tolist())
        fast = rng.random() < 0.5
        aff = np.array([2.0 * (f == fam) + 1.5 * (p in progs) + 1.0 * (t is not None and (float(t) > 105) == fast)
                        for _, f, p, t in songs]) + rng.normal(0, 0.7, len(songs))
        for j in np.argsort(-aff)[: max(5, int(0.12 * len(songs)))]:
            lines.append(f"U{u:05d}\t{songs[j][0]}\t{1 + int(rng.poisson(3))}")
    atomic_write_text(out / "train_triplets.txt", "\n".join(lines) + "\n")
    return out


def run_experiment(corpus: str | Path, out: str | Path, *, sources: Sequence[str] = DEFAULT_SOURCES,
                   targets: Sequence[str] = DEFAULT_TARGETS, seeds: Sequence[int] = (0, 1), probe_seeds: int = 1,
                   probe_epochs: int = 100, model: str = "random:kim-cnn-tiny", config: str | None = None,
                   overrides: Sequence[str] = (), taste_users: int = 100, taste_songs: int = 300, report: str | Path | None = None,
                   progress: bool = False, echo: Any = None) -> dict[str, Any]:
    """Train the design, probe every representation, test the findings, write the report (module doc)."""
    say = echo or (lambda msg: None)
    out, corpus = Path(out), Path(corpus)
    if set(sources) & set(targets):
        raise ConfigError(f"a task cannot be both a learning source and a held-out target: {sorted(set(sources) & set(targets))}")
    t_start = time.time()
    design = experiment_design(sources, seeds=seeds)
    short = {s: s.replace("builtin-", "") for s in sources}
    say(f"design: {len(design)} runs ({sum(r.phase == 1 for r in design)} SS-R, {sum(r.phase == 2 for r in design)} "
        f"with all {len(sources)} sources, {sum(r.phase == 3 for r in design)} fractional)")
    timings: dict[str, Any] = {"train_s": {}}
    reps = []
    for i, run in enumerate(design):
        name = run.name(short)
        rdir = out / "runs" / name
        t0 = time.time()
        if not (rdir / "summary.json").is_file():
            cfg = training_config(config, overrides, run.strategy, run.seed)
            train_enrich(cfg, model=model, tasks=[f"{s}:{corpus}" for s in run.sources], out=rdir,
                         cache_dir=out / "cache", progress=progress)
            atomic_write_json(rdir / "experiment-time.json", {"train_s": round(time.time() - t0, 2)})
        timings["train_s"][name] = (read_json(rdir / "experiment-time.json")["train_s"]
                                    if (rdir / "experiment-time.json").is_file() else None)
        say(f"run {i + 1}/{len(design)} {name}: {timings['train_s'][name]} s")
        reps.append((run, ModelRepresentation(str(rdir / "checkpoints" / "last"), name=name)))
    rand = ModelRepresentation(f"{model}:0", name="rand")
    t0 = time.time()
    bench = run_benchmark([r for _, r in reps] + [rand], [f"{t}:{corpus}" for t in targets], protocol="kim",
                          seeds=probe_seeds, out_dir=out / "bench", cache_dir=out / "feature-cache",
                          progress=progress, probe_overrides={"max_epochs": int(probe_epochs)}, echo=say)
    timings["bench_s"] = round(time.time() - t0, 2)
    scores = {(row["representation"], row["task"]): row["summary"]["score"]["mean"] for row in bench["results"]}
    target_names = [t for t in targets]
    rec: dict[str, Any] = {}
    if taste_users > 0:
        t0 = time.time()
        data = load_task(f"taste-profile:{synth_taste_profile(corpus, out / 'taste', n_users=taste_users, n_songs=taste_songs)}")
        cache = FeatureCache(out / "feature-cache")
        for rep in [r for _, r in reps] + [rand]:
            rec[rep.name] = evaluate_recommendation(rep, data, seeds=list(range(max(2, probe_seeds))), cfg=WMFConfig(),
                                                    cache=cache)
            scores[(rep.name, "taste-profile")] = rec[rep.name]["summary"]["mean"]
        target_names.append("taste-profile")
        timings["recommendation_s"] = round(time.time() - t0, 2)
    rows = [{"run": rep.name, "strategy": run.strategy, "n": run.n, "seed": run.seed, "sources": list(run.sources),
             "task": t, "score": float(scores[(rep.name, t)])} for run, rep in reps for t in target_names]
    result = {"format": "m3bert-kim-multisource", "corpus": str(corpus), "sources": list(sources),
              "targets": target_names, "seeds": list(seeds), "probe_seeds": probe_seeds, "model": model,
              "training_config": training_config(config, overrides, "ms-cr@2", 0).to_dict(),
              "design": [dict(r.to_dict(), name=r.name(short)) for r in design], "observations": rows,
              "rand": {t: float(scores[("rand", t)]) for t in target_names},
              "findings": findings(rows), "recommendation": {k: v["summary"] for k, v in rec.items()},
              "timings": {**timings, "total_s": round(time.time() - t_start, 2)}}
    report = Path(report) if report else out / "report.md"
    atomic_write_json(report.with_suffix(".json"), result)
    atomic_write_text(report, render_report(result))
    result["report"] = str(report)
    return result


def _ci(f: dict[str, Any]) -> str:
    if f["estimate"] is None:
        return "-"
    return f"{f['estimate']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"


def render_report(res: dict[str, Any]) -> str:
    """The markdown report of an experiment result (numbers from ``res`` only)."""
    f1, f2 = res["findings"]["finding1"], res["findings"]["finding2"]
    t = res["timings"]
    lines = [
        "## Measured on the built-in corpus",
        "",
        f"Corpus `{res['corpus']}`; sources {', '.join(f'`{s}`' for s in res['sources'])}; held-out targets "
        f"{', '.join(f'`{s}`' for s in res['targets'])}; network `{res['model']}`; {len(res['design'])} runs "
        f"({res['findings']['n_runs']} representations x {len(res['targets'])} targets = "
        f"{res['findings']['n_observations']} observations), training seeds {res['seeds']}, "
        f"{res['probe_seeds']} probe seeds per observation (kim protocol). Scores are standardised within each "
        "target; intervals are 95 % percentile bootstraps over runs.",
        "",
        "| finding (paper) | test | estimate [95 % CI] | verdict |",
        "|---|---|---|---|",
        f"| 1. {f1['claim']} | {f1['test']} | {_ci(f1)} | **{f1['verdict']}** |",
        f"| 1b. multi-source beat single-source | mean y*(multi) - mean y*(SS-R) | {_ci(f1['multi_minus_single'])} | "
        f"{f1['multi_minus_single']['verdict']} |",
        f"| 2. {f2['claim']} | {f2['test']} | {_ci(f2)} | **{f2['verdict']}** |",
        f"| 2b. ... among multi-source strategies only | slope of y* on r* given n* | {_ci(f2['within_multi_source'])} | "
        f"{f2['within_multi_source']['verdict']} |",
        "",
        "Mean standardised score by strategy (95 % CI):",
        "",
        "| strategy | mean y* [95 % CI] |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_ci(v)} |" for k, v in res["findings"]["strategy_means"].items()]
    lines += ["", "Raw scores (mean over probe seeds; Rand = the untrained network):", "",
              "| run | strategy | n | " + " | ".join(res["targets"]) + " |", "|---|---|---|" + "---|" * len(res["targets"])]
    by_run: dict[str, dict[str, Any]] = {}
    for o in res["observations"]:
        by_run.setdefault(o["run"], {"strategy": o["strategy"], "n": o["n"]})[o["task"]] = o["score"]
    for name, d in by_run.items():
        lines.append(f"| {name} | {STRATEGIES[d['strategy']].label} | {d['n']} | "
                     + " | ".join(f"{d[t]:.3f}" for t in res["targets"]) + " |")
    lines.append("| rand | - | - | " + " | ".join(f"{res['rand'][t]:.3f}" for t in res["targets"]) + " |")
    known = [v for v in t["train_s"].values() if v is not None]
    lines += ["", f"Timings: training {sum(known):.0f} s over {len(known)} runs, probes "
              f"{t['bench_s']:.0f} s" + (f", recommendation {t['recommendation_s']:.0f} s" if "recommendation_s" in t else "")
              + f", total {t['total_s']:.0f} s.", ""]
    return "\n".join(lines)

