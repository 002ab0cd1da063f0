"""``m3bert pretrain``: self-supervised pre-training on a feature store (M2BERT masked reconstruction,
MERT masked cluster prediction, Wu et al.'s workers).

    m3bert pretrain --store STORE --config configs/m2bert-small.yaml --out RUN [--set optim.lr=1e-4 ...]
    m3bert pretrain --store WAVE_STORE --config configs/pase-plus.yaml --targets WTARGETS \
        --workers W,L,P,M,C,T --set objective.weighting=reweighted --out RUN   # two phases, one folder
    m3bert pretrain --resume RUN
    torchrun --nproc-per-node 2 -m m3bert pretrain --store STORE --config ... --out RUN
"""

from __future__ import annotations

import argparse
import json
import os

from m3bert.core.errors import ConfigError
from m3bert.pretrain.loop import load_pretrain_config
from m3bert.pretrain.workers import pretrain_workers

HELP = ("pre-train an encoder on a feature store: M2BERT masked reconstruction (CFM/CCM/PM, Huber), MERT-style "
        "masked cluster prediction (--objective mert --targets DIR) or Wu et al.'s workers (--workers W,L,P,M,C,T "
        "--targets DIR); resume and DDP")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", nargs="+", default=None, metavar="STORE",
                        help="feature store directory (or several shards); on --resume defaults to the recorded one")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="preset, e.g. configs/m2bert-small.yaml (default: built-in defaults = Small)")
    parser.add_argument("--out", default=None, metavar="RUN", help="run directory to create")
    parser.add_argument("--resume", default=None, metavar="RUN", help="continue the run in RUN exactly where it stopped")
    parser.add_argument("--objective", default=None, metavar="NAME",
                        help="registered objective: reconstruction (default, M2BERT), mert, mert_acoustic, workers")
    parser.add_argument("--targets", default=None, metavar="DIR",
                        help="targets from `m3bert targets` (k-means for mert / mert_acoustic; --workers for workers)")
    parser.add_argument("--workers", default=None, metavar="LETTERS",
                        help="the workers objective with these of Wu et al.'s workers: W (waveform), L, P, M, C, T "
                             "(= --set objective.name=workers --set objective.workers=LETTERS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. optim.lr=1e-4 (repeatable; on --resume only train.*)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    store = None
    if args.store:
        store = args.store[0] if len(args.store) == 1 else list(args.store)
    if args.resume:
        if args.out or args.config or args.objective or args.targets or args.workers:
            raise ConfigError("--resume RUN continues RUN with its own config; drop --out/--config/--objective/--targets/--workers")
        summary = pretrain_workers(None, store=store, out=args.resume, resume=True, progress=not args.no_progress,
                                   resume_overrides=args.overrides)
    else:
        if not args.out or store is None:
            raise ConfigError("expected --store STORE and --out RUN (or --resume RUN)")
        if args.workers and args.objective not in (None, "workers"):
            raise ConfigError(f"--workers selects the workers objective; --objective {args.objective} is another one")
        sugar = ([f"objective.name={args.objective}"] if args.objective else []) + \
            (["objective.name=workers", f"objective.workers={args.workers}"] if args.workers else []) + \
            ([f"objective.targets={args.targets}"] if args.targets else [])
        cfg = load_pretrain_config(args.config, overrides=sugar + list(args.overrides))
        summary = pretrain_workers(cfg, store=store, out=args.out, progress=not args.no_progress)
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(json.dumps(summary, indent=2))
    return 0


def _is_rank0() -> bool:

    return os.environ.get("RANK", "0") == "0"
