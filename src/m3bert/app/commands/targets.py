"""``m3bert targets``: per-frame targets beside a feature store: k-means class ids (MERT / HuBERT)
or Wu et al.'s worker features (float, from a ``wave16k`` store).

    m3bert targets --store STORE --out TARGETS [--group mfcc+dmfcc] [--k 500] [--seed 0]
    m3bert targets --store STORE --out TARGETS2 --model RUN --layer 3 [--k 2000]   # second iteration
    m3bert pretrain --store STORE --config configs/mert-mini.yaml --set objective.targets=TARGETS --out RUN
    m3bert targets --workers L,P,M,C,T --store WAVE_STORE --out WTARGETS [--jobs 4]   # Wu et al.'s workers

Rerunning the same command finishes an interrupted build; a finished one is left as it is.
"""

from __future__ import annotations

import argparse
import json

from m3bert.core.errors import ConfigError
from m3bert.pretrain.targets import (
    DEFAULT_FRAMES_PER_CHUNK,
    DEFAULT_GROUP,
    DEFAULT_K_FEATURES,
    DEFAULT_K_HIDDEN,
    DEFAULT_SAMPLE_FRAMES,
    build_targets,
)
from m3bert.pretrain.worker_targets import DEFAULT_VAL_FRACTION, DEFAULT_WORKERS, DTYPES, build_worker_targets

HELP = ("fit k-means on frames sampled from a feature store (or a model's hidden states) and label every frame; "
        "or, with --workers, compute Wu et al.'s worker features for every frame of a wave16k store")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", nargs="+", required=True, metavar="STORE", help="feature store folder (or several shards)")
    parser.add_argument("--out", required=True, metavar="TARGETS", help="targets folder to create (or finish)")
    parser.add_argument("--group", default=None,
                        help=f"feature group(s) to cluster, '+'-joined: chroma, mfcc, dmfcc, mel, cqt (default {DEFAULT_GROUP})")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="cluster this model's hidden states instead (a run, model folder or checkpoint)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="hidden state of --model: 0 = input projection, 1..L layers, -1 = last (default)")
    parser.add_argument("--k", type=int, default=None,
                        help=f"clusters (default {DEFAULT_K_FEATURES} for features, {DEFAULT_K_HIDDEN} for hidden states, "
                             "as in the MERT thesis)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the frame sample and k-means (default 0)")
    parser.add_argument("--sample-frames", type=int, default=DEFAULT_SAMPLE_FRAMES,
                        help=f"frames the k-means is fitted on, at most (default {DEFAULT_SAMPLE_FRAMES:,}); bounds memory")
    parser.add_argument("--frames-per-chunk", type=int, default=DEFAULT_FRAMES_PER_CHUNK,
                        help=f"at most this many sampled frames per chunk (default {DEFAULT_FRAMES_PER_CHUNK})")
    parser.add_argument("--max-iter", type=int, default=100, help="k-means passes over the sample (default 100)")
    parser.add_argument("--n-init", type=int, default=3, help="k-means++ initialisations, best kept (default 3)")
    parser.add_argument("--workers", default=None, metavar="LETTERS",
                        help=f"Wu et al.'s worker targets instead of k-means: letters of L (log power spectrum), "
                             f"P (prosody), M (MFCC), C (chroma), T (tempogram), e.g. {DEFAULT_WORKERS}; needs a wave16k store")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"--workers: songs held out of the standardisation statistics, as pre-training's "
                             f"data.val_fraction with the same --seed (default {DEFAULT_VAL_FRACTION})")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="--workers: storage type of the features (float16 halves the folder; default float32)")
    parser.add_argument("--jobs", type=int, default=1, help="--workers: processes computing chunks (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    store = args.store[0] if len(args.store) == 1 else list(args.store)
    if args.workers is not None:
        if args.group is not None or args.model is not None or args.k is not None:
            raise ConfigError("--workers computes worker features; --group, --model and --k are k-means settings")
        summary = build_worker_targets(store, args.out, workers=args.workers, seed=args.seed,
                                       val_fraction=args.val_fraction, dtype=args.dtype, n_workers=args.jobs,
                                       progress=not args.no_progress)
        print(json.dumps(summary, indent=2, default=str))
        return 0
    summary = build_targets(store, args.out, group=args.group, model=args.model, layer=args.layer, k=args.k,
                            seed=args.seed, sample_frames=args.sample_frames, frames_per_chunk=args.frames_per_chunk,
                            max_iter=args.max_iter, n_init=args.n_init, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0
