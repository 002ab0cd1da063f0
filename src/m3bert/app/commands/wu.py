"""``m3bert wu-ablation``: Wu et al. (2021)'s worker ablation on a built-in corpus, its claims measured.

    m3bert corpus build --preset small --out CORPUS
    m3bert wu-ablation --corpus CORPUS --out WU                       # ~20 min on 2 cores (preset small)
    m3bert wu-ablation --corpus CORPUS --out WU --m2bert MODEL        # + M2BERT on the same tasks
    m3bert wu-ablation --corpus CORPUS --out WU --seeds 5 --steps 300 # more seeds: narrower CIs

A small PASE+ is pre-trained once per worker set (WLP, WLP+M, WLP+C, WLP+T, WLP+MCT) x loss
weighting (equal, re-weighted) x seed, probed frozen with the ``wu`` protocol on ``dance``,
``instrument`` and ``style``, and the paper's Fig. 3-5 claims are marked holds / does not hold /
within noise / untested from 95 % CIs over seeds. Rerun the same command to resume: finished runs
are skipped. See :mod:`m3bert.app.wu_experiment`.
"""

from __future__ import annotations

import argparse

from m3bert.app.wu_experiment import PRESETS, VERDICTS, experiment_config, run_wu_experiment

HELP = "Wu et al. 2021: the worker ablation (WLP, +M, +C, +T, all; equal vs re-weighted) with its claims measured"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, metavar="DIR", help="built-in corpus (m3bert corpus build --preset small)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder (rerun to resume)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS),
                   help="small (~20 min on 2 cores) or tiny (every stage in about a minute, for tests)")
    p.add_argument("--seeds", type=int, default=None, help="pre-training seeds per cell (the CIs are over these)")
    p.add_argument("--steps", type=int, default=None, help="pre-training steps per run")
    p.add_argument("--trials", type=int, default=None, help="probe trials per encoder and task (paper: 10)")
    p.add_argument("--task-clips", type=int, default=None,
                   help="clips per task and split probed (small: 20; 0 = all: stronger probes, slower)")
    p.add_argument("--m2bert", default=None, metavar="MODEL", help="an M2BERT model folder or run to compare on the same tasks")
    p.add_argument("--raw-targets", action="store_true",
                   help="workers regress raw-scale features instead of standardised ones (Fig. 4's loss magnitudes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    over = {k: v for k, v in (("seeds", args.seeds), ("steps", args.steps), ("probe_trials", args.trials),
                              ("task_clips", args.task_clips)) if v is not None}
    if args.raw_targets:
        over["standardize_targets"] = False
    res = run_wu_experiment(args.corpus, args.out, config=experiment_config(args.preset, over), m2bert=args.m2bert,
                            progress=not args.no_progress, echo=print)
    for c in res["claims"]:
        s = c["summary"]
        est = "-" if not s else f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
        print(f"{c['id']:>16s} {c['figure']}: {c['verdict']:<13s} {est}  {c['test']}")
    print("verdicts: " + ", ".join(f"{sum(c['verdict'] == v for c in res['claims'])} {v}" for v in VERDICTS))
    print(f"report: {res['report']}")
    return 0
