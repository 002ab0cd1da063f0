"""``m3bert demo``: the whole system end to end on the built-in corpus (resumable)."""

from __future__ import annotations

import argparse

from m3bert.app.demo import demo_config, run_demo

HELP = "run the whole M3BERT system end to end on the built-in corpus and write a report (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (rerun to resume; default demo_out)")
    parser.add_argument("--preset", default="small", choices=["small", "tiny", "long"],
                        help="small (make demo, < 15 min on 2 cores), tiny (a smoke run in about a minute) or long "
                             "(make demo-long, 60-90 min on 2 cores: 5000 pre-training steps on all the real music, MARBLE's layers)")
    parser.add_argument("--pretrain-data", default=None, choices=["real", "real+builtin", "builtin"],
                        help="pre-training audio: real = game soundtracks from Debian packages (apt-get download; the "
                             "built-in corpus when they cannot be fetched), real+builtin = both, builtin = no network")
    parser.add_argument("--music-packages", default=None,
                        help="real-music packages: a set (demo | full) or comma-separated Debian package names")
    parser.add_argument("--masking", default=None, help="pre-training masking: cfm | ccm | pm | cfm+ccm (default cfm+ccm)")
    parser.add_argument("--ablation", default=None, choices=["masking"],
                        help="also run the paper's Table 5 masking comparison (same budget per policy, several seeds)")
    parser.add_argument("--renderer", default=None, choices=["auto", "fluidsynth", "numpy"],
                        help="corpus synthesizer (default auto: FluidSynth when installed)")
    parser.add_argument("--cmvn", default=None, choices=["corpus", "clip"],
                        help="normalisation of the encoders' input: corpus (default; one mean/std over the pre-training "
                             "store) or clip (every clip on its own, which hides a clip's average spectrum)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every stage (default 0)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="pre-training steps (budget)")
    parser.add_argument("--seeds", type=int, default=None, help="probe seeds per representation and task")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:

    cfg = demo_config(args.preset, masking=args.masking, ablation=args.ablation, renderer=args.renderer,
                      seed=args.seed, pretrain_steps=args.pretrain_steps, bench_seeds=args.seeds,
                      pretrain_data=args.pretrain_data, music_packages=args.music_packages, cmvn=args.cmvn)
    run_demo(args.out, config=cfg, progress=not args.no_progress)
    return 0
