"""M2BERT masked reconstruction vs MERT-style objectives at the same compute, on the built-in corpus.

Variants (same encoder, steps, batch, crop, learning rate and schedule; each objective with its
own masking recipe):

* ``m2bert``          masked reconstruction, Huber, CFM+CCM (Greer et al. 2023)
* ``mert-ac``         masked prediction of k-means ids only (MERT's acoustic teacher)
* ``mert-ac-mix``     the same + in-batch noise mixup (p 0.5)
* ``mert-ac-cqt``     + CQT reconstruction at masked frames (MERT's musical teacher, weight 1)
* ``mert-ac-cqt-mix`` the same + mixup

The acoustic teacher is the thesis's best k-means one (Yuan 2023, Table 5.3 line 502): two
codebooks, log-mel k=300 and chroma k=200, fitted once (seed 0) on the store. MERT variants mask
HuBERT-style (CFM spans of 5 frames, 55 % of each crop, replaced by the CMVN mean).

Each (variant, pre-training seed) model is probed with ``run_benchmark`` on held-out built-in
tasks (linear probes over every layer and their weighted sum, several probe seeds). The report
gives each variant's score per task as the mean over pre-training seeds with a 95 % t-interval
over those seeds, a paired t-test against the best variant over matched pre-training seeds
(within noise when p >= 0.05), the per-model table of ``run_benchmark`` (its own within-noise
marks over probe seeds), the pre-training validation numbers, timings, and the thesis's claims
beside the measured outcome.

    .venv/bin/python perf/mert_comparison.py --work /tmp/mert_cmp                # ~15 min on 2 cores
    .venv/bin/python perf/mert_comparison.py --work /tmp/mert_cmp --quick        # smoke run

Writes ``docs/mert-comparison.md`` and ``docs/mert-comparison.json`` (``--out`` changes the stem).
Every stage reuses its output when rerun (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3bert.core.io import atomic_write_json, atomic_write_text, read_json, versions
from m3bert.corpus import build_corpus
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store
from m3bert.models.encoder import create_model, get_model_config
from m3bert.pretrain.loop import load_pretrain_config, pretrain
from m3bert.pretrain.targets import build_targets
from m3bert.tasks import metrics as M

ROOT = Path(__file__).resolve().parents[1]
NOISE_ALPHA = 0.05

VARIANTS: dict[str, dict[str, Any]] = {
    "m2bert": {"label": "M2BERT reconstruction (CFM+CCM, Huber)", "objective": "reconstruction", "mixup": 0.0},
    "mert-ac": {"label": "MERT acoustic (k-means mel300+chroma200)", "objective": "mert_acoustic", "mixup": 0.0},
    "mert-ac-mix": {"label": "MERT acoustic + mixup", "objective": "mert_acoustic", "mixup": 0.5},
    "mert-ac-cqt": {"label": "MERT acoustic + CQT", "objective": "mert", "mixup": 0.0},
    "mert-ac-cqt-mix": {"label": "MERT acoustic + CQT + mixup", "objective": "mert", "mixup": 0.5},
}
TEACHERS = (("mel", 300), ("chroma", 200))  # thesis 5.1.2 (line 419), Table 5.3 line 502

# (claim, thesis location, variant A, variant B, tasks, direction): "A better than B on tasks"
CLAIMS = [
    ("The CQT musical teacher improves key detection (GS key 55.1 -> 65.0, MARBLE avg 62.1 -> 67.3)",
     "Table 5.3, lines 502 vs 505; text line 521", "mert-ac-cqt", "mert-ac", ["builtin-key"]),
    ("The CQT teacher also helps pitch-level / tonal information (CQT 'emphasises pitch-level information')",
     "section 5.1.3, line 425", "mert-ac-cqt", "mert-ac", ["builtin-pitch"]),
    ("In-batch mixup gives worse results with k-means targets (avg 67.3 -> 65.2 at p=0.5)",
     "Table 5.4, lines 536 vs 540; text line 546", "mert-ac-cqt", "mert-ac-cqt-mix", None),
    ("Predicting discrete (quantised) targets is more effective than regressing the masked input",
     "section 2 'Mask Prediction', line 143", "mert-ac-cqt", "m2bert", None),
]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(timings: dict[str, float], name: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)
    return out


def pretrain_config(args: argparse.Namespace, variant: str, seed: int, targets: list[Path]) -> Any:
    v = VARIANTS[variant]
    arch = get_model_config(args.model).to_dict()
    arch.pop("enrichment", None)
    over: dict[str, Any] = {f"model.{k}": val for k, val in arch.items() if k != "n_input"}
    over.update({"seed": seed, "data.max_frames": args.frames, "data.batch_size": args.batch,
                 "data.effective_batch": args.batch, "data.val_fraction": 0.1, "data.val_max_chunks": 64,
                 "optim.lr": args.lr, "train.steps": args.steps, "train.precision": args.precision,
                 "train.device": "cpu", "train.threads": args.threads, "train.log_every": max(1, args.steps // 20),
                 "train.eval_every": max(1, args.steps // 2), "train.save_every": max(1, args.steps // 2)})
    if v["objective"] == "reconstruction":
        over["masking.policies"] = ["cfm", "ccm"]
    else:
        over.update({"objective.name": v["objective"], "objective.targets": [str(t) for t in targets],
                     "objective.mixup.prob": v["mixup"], "masking.policies": ["cfm"], "masking.cfm.ratio": 0.55,
                     "masking.cfm.min_span": 5, "masking.cfm.max_span": 5, "masking.cfm.zero_prob": 1.0,
                     "masking.cfm.random_prob": 0.0})
    return load_pretrain_config(None, overrides=over)


def run_one(args: argparse.Namespace, store: Path, run: Path, variant: str, seed: int, targets: list[Path]) -> dict[str, Any]:
    """Train (or finish, or reuse) one run; returns its summary."""
    state = run / "checkpoints" / "last" / "state.json"
    if state.is_file() and read_json(state)["state"]["step"] >= args.steps:
        return {"reused": True}
    if (run / "run.json").is_file():
        return pretrain(None, store=store, out=run, resume=True, progress=False)
    return pretrain(pretrain_config(args, variant, seed, targets), store=store, out=run, progress=False)


def last_val(run: Path) -> dict[str, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val/' in x]
    return {k: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else {}


def variant_table(results: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Per task and variant: per-pretrain-seed mean scores, their t-interval, paired test vs the best."""
    by: dict[tuple[str, str], dict[int, float]] = {}
    for row in results["results"]:
        variant, seed = row["representation"].rsplit(" s", 1)
        by.setdefault((row["task"], variant), {})[int(seed)] = float(np.mean([r["score"] for r in row["runs"]]))
    tasks = list(dict.fromkeys(r["task"] for r in results["results"]))
    out: dict[str, Any] = {}
    for task in tasks:
        rows = {v: by[(task, v)] for v in VARIANTS if (task, v) in by}
        summ = {v: M.summarize([s[k] for k in seeds]) for v, s in rows.items()}
        best = max(summ, key=lambda v: summ[v]["mean"])
        table = {}
        for v, s in summ.items():
            p = None if v == best else M.paired_test([rows[best][k] for k in seeds], [rows[v][k] for k in seeds])
            table[v] = {**s, "per_seed": [rows[v][k] for k in seeds], "is_best": v == best, "p_vs_best": p,
                        "within_noise": None if (p is None and v != best) else bool(v == best or p >= NOISE_ALPHA)}
        out[task] = {"best": best, "variants": table}
    return out


def judge(claims_out: list[dict[str, Any]], table: dict[str, Any], seeds: list[int]) -> None:
    for claim, where, a, b, tasks in CLAIMS:
        names = tasks or list(table)
        rows = []
        for t in names:
            if t not in table:
                continue
            va, vb = table[t]["variants"][a], table[t]["variants"][b]
            diff = va["mean"] - vb["mean"]
            p = M.paired_test(va["per_seed"], vb["per_seed"])
            rows.append({"task": t, "a": va["mean"], "b": vb["mean"], "diff": diff, "p": p})
        if not rows:
            continue
        if tasks is None:  # an average over tasks: the thesis compares averages
            ma = [np.mean([table[t]["variants"][a]["per_seed"][i] for t in names]) for i in range(len(seeds))]
            mb = [np.mean([table[t]["variants"][b]["per_seed"][i] for t in names]) for i in range(len(seeds))]
            rows.append({"task": "average", "a": float(np.mean(ma)), "b": float(np.mean(mb)),
                         "diff": float(np.mean(ma) - np.mean(mb)), "p": M.paired_test(ma, mb)})
        key = rows[-1]
        if key["p"] is not None and key["p"] < NOISE_ALPHA:
            verdict = "supported" if key["diff"] > 0 else "contradicted"
        else:
            verdict = f"within noise ({'same' if key['diff'] > 0 else 'opposite'} direction)"
        if tasks is None:
            verdict = f"on average {verdict}"
            beyond = [f"{r['task'].replace('builtin-', '')} {'for' if r['diff'] > 0 else 'against'}" for r in rows[:-1]
                      if r["p"] is not None and r["p"] < NOISE_ALPHA]
            if beyond:
                verdict += "; beyond noise per task: " + ", ".join(beyond)
        claims_out.append({"claim": claim, "where": where, "a": a, "b": b, "rows": rows, "verdict": verdict})


def fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(rep: dict[str, Any]) -> str:
    s = rep["setup"]
    lines = ["# M2BERT reconstruction vs MERT-style objectives on the built-in corpus", "",
             f"Generated by `perf/mert_comparison.py` on {rep['created']} ({rep['machine']}). Total wall time "
             f"{rep['timings']['total_s'] / 60:.1f} min.", "",
             "## Setup (same compute for every variant)", "",
             f"* corpus: built-in `{s['corpus_preset']}` ({s['n_clips']} clips, {s['n_frames']:,} frames of 324-d features)",
             f"* encoder `{s['model']}` ({s['n_parameters']:,} parameters), {s['steps']} steps x {s['batch']} crops of "
             f"{s['frames']} frames ({s['steps'] * s['batch'] * s['frames']:,} frames seen), lr {s['lr']}, "
             f"{s['precision']}, {s['threads']} threads",
             f"* pre-training seeds {s['seeds']}; probes: `{s['protocol']}` protocol (every layer + weighted sum, lr "
             f"grid, selected on validation), {s['probe_seeds']} probe seeds, max {s['probe_max_epochs']} epochs",
             "* M2BERT masking: CFM (15 %, spans 2-7) + CCM; MERT masking: CFM spans of 5 frames over 55 % of the crop "
             "(HuBERT/MERT's mask_prob 0.8, length 5), replaced by the CMVN mean",
             f"* acoustic teacher: k-means (MiniBatchKMeans, seed 0, {s['target_sample_frames']:,} sampled frames, "
             f"{s.get('kmeans_max_iter', 100)} passes) "
             "over log-mel (k=300) and chroma (k=200), two codebooks, two heads (thesis Table 5.3 line 502); "
             "CQT teacher: MSE on the 144 CQT channels at masked frames, weight 1; mixup: p 0.5, 1-3 excerpts "
             "of 22-43 frames at gain 0.1-0.5", ""]
    lines += ["## Scores per variant (mean over pre-training seeds, 95 % CI over those seeds)", "",
              "Within noise: paired t-test against the task's best variant over matched pre-training seeds, "
              f"p >= {NOISE_ALPHA} (with {len(s['seeds'])} seeds the test has little power).", ""]
    tasks = list(rep["variants"])
    lines.append("| variant | " + " | ".join(t.replace("builtin-", "") for t in tasks) + " |")
    lines.append("|---|" + "---:|" * len(tasks))
    for v in VARIANTS:
        cells = []
        for t in tasks:
            r = rep["variants"][t]["variants"].get(v)
            if r is None:
                cells.append("-")
                continue
            hw = f" ± {r['half_width']:.3f}" if r["half_width"] is not None else ""
            mark = " **best**" if r["is_best"] else ("" if r["within_noise"] else " (below, p={:.3f})".format(r["p_vs_best"]))
            cells.append(f"{r['mean']:.3f}{hw}{mark}")
        lines.append(f"| {VARIANTS[v]['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Metrics: " + ", ".join(f"{t['name'].replace('builtin-', '')} = {t['score_metrics'][0]}"
                                          for t in rep["bench"]["tasks"]), ""]
    lines += ["## The thesis's claims beside the measured outcome", "",
              "| claim (thesis) | where | measured (A vs B) | verdict |", "|---|---|---|---|"]
    for c in rep["claims"]:
        meas = "; ".join(f"{r['task'].replace('builtin-', '')}: {r['a']:.3f} vs {r['b']:.3f} (p={fmt(r['p'])})"
                         for r in c["rows"])
        lines.append(f"| {c['claim']} | {c['where']} | {c['a']} vs {c['b']}: {meas} | {c['verdict']} |")
    lines += ["", "## Pre-training: validation at the last step (mean over seeds)", "",
              "| variant | val loss (own objective) | masked acc mel300 | masked acc chroma200 | CQT MSE (zero-baseline) | "
              "train s/run |", "|---|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        runs = [r for r in rep["runs"] if r["variant"] == v]
        if not runs:
            continue

        def avg(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
            vals = [r["val"].get(key) for r in runs if r["val"].get(key) is not None]
            return float(np.mean(vals)) if vals else None

        loss = avg("val/loss[cfm+ccm]") if v == "m2bert" else avg("val/loss[cfm]")
        cqt = avg("val/cqt_loss")
        zero = avg("val/cqt_zero_baseline")
        lines.append(f"| {VARIANTS[v]['label']} | {fmt(loss)} | {fmt(avg('val/acc[mel-k300]'))} | "
                     f"{fmt(avg('val/acc[chroma-k200]'))} | {fmt(cqt)}{'' if zero is None else f' ({zero:.3f})'} | "
                     f"{np.mean([r['seconds'] for r in runs]):.0f} |")
    lines += ["", "## Per model (run_benchmark: mean over probe seeds, its within-noise marks)", "",
              "| model | " + " | ".join(t.replace("builtin-", "") for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    noise = {(c["task"], c["representation"]): c for c in rep["bench"]["comparisons"]}
    for name in dict.fromkeys(r["representation"] for r in rep["bench"]["results"]):
        cells = []
        for t in tasks:
            row = next((r for r in rep["bench"]["results"] if r["representation"] == name and r["task"] == t), None)
            if row is None:
                cells.append("-")
                continue
            sc = row["summary"]["score"]
            c = noise.get((t, name), {})
            mark = " best" if c.get("is_best") else ("" if c.get("within_noise") in (True, None) else " *")
            cells.append(f"{sc['mean']:.3f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "`*` = below the task's best model beyond probe noise (paired t-test over probe seeds, p < 0.05).", "",
              "## Timings (wall seconds)", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in rep["timings"].items()]
    lines += [""] + [f"* {n}" for n in rep.get("notes", [])]
    lines += ["", "## Caveats", "",
              "* A small encoder, a few hundred steps and a ~1 h synthetic corpus: this checks that the objectives "
              "train and how they rank here, not the thesis's numbers (95M parameters, 400k steps, 1k h of music).",
              "* Mixup is applied to normalised feature frames, not to waveforms as in MERT (see `pretrain/mixup.py`).",
              "* The pre-training corpus contains the probe tasks' audio (self-supervised, no labels), as in the demo.",
              "* Each objective uses its own masking recipe (the thesis's and the M2BERT paper's), so 'same compute' "
              "means the same steps, batch, crop, model and learning-rate schedule.",
              "* The probes may pick any hidden state, the input projection (layer 0) included; in a 64-wide encoder "
              "what survives even that projection depends on what the objective asks to be kept (reconstruction: all "
              "324 channels; cluster prediction: what predicts the clusters).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/mert_comparison", help="working folder (corpus, store, targets, runs)")
    ap.add_argument("--corpus", default=None, help="an already built corpus folder (default: build one in WORK)")
    ap.add_argument("--preset", default="small", help="built-in corpus preset (default small)")
    ap.add_argument("--model", default="m2bert-tiny", help="encoder config (default m2bert-tiny)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads oversubscribe)")
    ap.add_argument("--seeds", type=int, default=3, help="pre-training seeds per variant")
    ap.add_argument("--probe-seeds", type=int, default=3)
    ap.add_argument("--probe-max-epochs", type=int, default=60)
    ap.add_argument("--protocol", default="linear")
    ap.add_argument("--tasks", default="key,pitch,instrument,style", help="built-in tasks to probe")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--target-sample-frames", type=int, default=60_000)
    ap.add_argument("--kmeans-max-iter", type=int, default=20, help="k-means passes over the sample (HuBERT: 100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "mert-comparison"), help="report stem (.md and .json)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny corpus, 20 steps, 2 probe seeds")
    ap.add_argument("--rerender", action="store_true",
                    help="only rebuild OUT.md (and the claims in OUT.json) from an existing OUT.json")
    args = ap.parse_args(argv)
    if args.rerender:
        out = Path(args.out)
        rep = read_json(out.with_suffix(".json"))
        rep["claims"] = []
        judge(rep["claims"], rep["variants"], rep["setup"]["seeds"])
        atomic_write_json(out.with_suffix(".json"), rep)
        atomic_write_text(out.with_suffix(".md"), markdown(rep))
        return 0
    if args.quick:
        args.preset, args.steps, args.probe_seeds, args.probe_max_epochs, args.seeds = "tiny", 20, 2, 10, 2
        args.target_sample_frames = 5000
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]

    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    if not args.corpus:
        say(f"corpus ({args.preset}) -> {corpus}")
        timed(timings, "corpus", lambda: build_corpus(args.preset, corpus, seed=0, progress=False, workers=args.workers))
    store = work / "store"
    say(f"features -> {store}")
    timed(timings, "features", lambda: extract_to_store(corpus / "audio", store, feature_set=get_feature_set("m3bert324"),
                                                        workers=args.workers, progress=False))
    fs = FeatureStore.open(store)
    targets = []
    for group, k in TEACHERS:
        out = work / "targets" / f"{group}-k{k}"
        say(f"k-means targets {group} k={k} -> {out}")
        timed(timings, "targets", lambda out=out, group=group, k=k: build_targets(
            fs, out, group=group, k=k, seed=0, progress=False, sample_frames=args.target_sample_frames,
            max_iter=args.kmeans_max_iter))
        targets.append(out)

    variants = [v for v in args.variants.split(",") if v]
    seeds = list(range(args.seeds))
    runs, reps = [], []
    for v in variants:
        for s in seeds:
            run = work / "runs" / f"{v}-s{s}"
            say(f"pre-training {v} seed {s}")
            t0 = time.perf_counter()
            timed(timings, "pretrain", lambda run=run, v=v, s=s: run_one(args, store, run, v, s, targets))
            runs.append({"variant": v, "seed": s, "run": str(run), "seconds": round(time.perf_counter() - t0, 1),
                         "val": last_val(run)})
            reps.append(ModelRepresentation(str(run / "checkpoints" / "last"), name=f"{v} s{s}"))
    tasks = [f"builtin-{t}:{corpus}" for t in args.tasks.split(",") if t]
    say(f"benchmark: {len(reps)} models x {len(tasks)} tasks x {args.probe_seeds} probe seeds")
    results = timed(timings, "bench", lambda: run_benchmark(
        reps, tasks, protocol=args.protocol, seeds=args.probe_seeds, progress=False, echo=say,
        cache_dir=work / "bench-cache", probe_overrides={"max_epochs": args.probe_max_epochs}))
    table = variant_table(results, seeds)
    claims: list[dict[str, Any]] = []
    judge(claims, table, seeds)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    n_params = sum(p.numel() for p in create_model(args.model).parameters())
    rep = {
        "format": "m3bert-mert-comparison", "created": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load_before:.1f} -> "
                   f"{os.getloadavg()[0]:.1f}",
        "setup": {"corpus_preset": args.preset if not args.corpus else str(corpus), "n_clips": len(fs.groups()),
                  "n_frames": int(fs.lengths.sum()), "model": args.model, "n_parameters": n_params,
                  "steps": args.steps, "batch": args.batch, "frames": args.frames, "lr": args.lr,
                  "precision": args.precision, "threads": args.threads, "seeds": seeds, "protocol": args.protocol,
                  "probe_seeds": args.probe_seeds, "probe_max_epochs": args.probe_max_epochs,
                  "target_sample_frames": args.target_sample_frames, "kmeans_max_iter": args.kmeans_max_iter,
                  "variants": {v: VARIANTS[v] for v in variants}},
        "targets": [read_json(t / "targets.json") | {"path": str(t)} for t in targets],
        "runs": runs, "variants": table, "claims": claims, "timings": timings, "bench": results,
        "versions": versions(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    for t in rep["targets"]:
        t.pop("versions", None)
        t.pop("request", None)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), rep)
    atomic_write_text(out.with_suffix(".md"), markdown(rep))
    say(f"wrote {out.with_suffix('.md')} and .json in {timings['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
