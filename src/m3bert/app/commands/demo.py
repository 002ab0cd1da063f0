"""``m3bert demo``: the whole system end to end on the built-in corpus (resumable)."""

from __future__ import annotations

import argparse

from m3bert.app.demo import demo_config, run_demo

HELP = "run the whole M3BERT system end to end on the built-in corpus and write a report (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (rerun to resume; default demo_out)")
    parser.add_argument("--preset", default="small", choices=["small", "tiny"],
                        help="small (make demo, < 15 min on 2 cores) or tiny (a smoke run in about a minute)")
    parser.add_argument("--masking", default=None, help="pre-training masking: cfm | ccm | pm | cfm+ccm (default cfm+ccm)")
    parser.add_argument("--ablation", default=None, choices=["masking"],
                        help="also run the paper's Table 5 masking comparison (same budget per policy, several seeds)")
    parser.add_argument("--renderer", default=None, choices=["auto", "fluidsynth", "numpy"],
                        help="corpus synthesizer (default auto: FluidSynth when installed)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every stage (default 0)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="pre-training steps (budget)")
    parser.add_argument("--seeds", type=int, default=None, help="probe seeds per representation and task")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:

    cfg = demo_config(args.preset, masking=args.masking, ablation=args.ablation, renderer=args.renderer,
                      seed=args.seed, pretrain_steps=args.pretrain_steps, bench_seeds=args.seeds)
    run_demo(args.out, config=cfg, progress=not args.no_progress)
    return 0
