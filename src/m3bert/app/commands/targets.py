"""``m3bert targets``: k-means class ids for every frame of a feature store (MERT / HuBERT targets).

    m3bert targets --store STORE --out TARGETS [--group mfcc+dmfcc] [--k 500] [--seed 0]
    m3bert targets --store STORE --out TARGETS2 --model RUN --layer 3 [--k 2000]   # second iteration
    m3bert pretrain --store STORE --config configs/mert-mini.yaml --set objective.targets=TARGETS --out RUN

Rerunning the same command finishes an interrupted build; a finished one is left as it is.
"""

from __future__ import annotations

import argparse
import json

from m3bert.pretrain.targets import (
    DEFAULT_FRAMES_PER_CHUNK,
    DEFAULT_GROUP,
    DEFAULT_K_FEATURES,
    DEFAULT_K_HIDDEN,
    DEFAULT_SAMPLE_FRAMES,
    build_targets,
)

HELP = "fit k-means on frames sampled from a feature store (or a model's hidden states) and label every frame"


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    store = args.store[0] if len(args.store) == 1 else list(args.store)
    summary = build_targets(store, args.out, group=args.group, model=args.model, layer=args.layer, k=args.k,
                            seed=args.seed, sample_frames=args.sample_frames, frames_per_chunk=args.frames_per_chunk,
                            max_iter=args.max_iter, n_init=args.n_init, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0
