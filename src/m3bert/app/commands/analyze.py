"""``m3bert analyze MODEL AUDIO_OR_TASK --out DIR``: which interpretable descriptors a model's units encode.

    m3bert analyze runs/m3bert builtin-dance:CORPUS --split test --out out/analysis
    m3bert analyze random:m2bert-small music/ --out out/analysis-random --no-f0

MODEL is anything ``load_model`` takes (model folder, run folder, checkpoint, ``random:CONFIG[:SEED]``);
AUDIO_OR_TASK is audio files/folders, or one task spec (its ``--split`` is analysed and its labels
colour the t-SNE map). Writes ``DIR/analysis.json`` (every number), ``DIR/units.npz`` (per-unit
r, Spearman, bounds), heatmaps, the best-unit scatter, the t-SNE map, ``DIR/report.{md,html}``;
rerunning the same command resumes (``DIR/state.npz``). The work is
:func:`m3bert.evaluate.analysis.analyze`'s; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from m3bert.evaluate.analysis import AnalysisConfig, analyze, sentence

HELP = "Correlate a model's units with interpretable audio descriptors (vs a random twin) and write a report."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model dir, run dir, checkpoint dir or random:CONFIG[:SEED]")
    p.add_argument("inputs", nargs="+", metavar="AUDIO_OR_TASK",
                   help="audio files and/or folders, or one task spec such as builtin-dance:CORPUS")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="task input: split analysed")
    p.add_argument("--baseline", default="random", choices=("random", "none"),
                   help="also analyse a random-init model of the same architecture (default) or not")
    p.add_argument("--baseline-seed", type=int, default=1, help="seed of the random twin")
    p.add_argument("--no-f0", action="store_true", help="skip f0/voicing (pYIN, the slowest descriptor)")
    p.add_argument("--max-items", type=int, default=None, help="analyse a seeded subset of at most N items")
    p.add_argument("--reservoir", type=int, default=2000, help="frames sampled for Spearman and the scatter plots")
    p.add_argument("--threshold", type=float, default=0.5, help="'encoded' = corrected lower bound on |r| above this")
    p.add_argument("--test-fraction", type=float, default=0.3, help="groups held out to score the linear probes")
    p.add_argument("--tsne-layer", type=int, default=-1, help="layer of the clip embeddings mapped with t-SNE")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice of the analysis")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = AnalysisConfig(split=args.split, baseline=args.baseline, baseline_seed=args.baseline_seed, f0=not args.no_f0,
                         seed=args.seed, reservoir=args.reservoir, test_fraction=args.test_fraction,
                         threshold=args.threshold, max_items=args.max_items, tsne_layer=args.tsne_layer)
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1))
    try:
        res = analyze(args.model, args.inputs, args.out, config=cfg, device=args.device, progress=not args.quiet,
                      say=print)
    finally:
        torch.set_num_threads(old)
    print("\n".join(summary_lines(res)))
    print(f"report: {args.out}/report.html (+ report.md, analysis.json)")
    return 1 if res["inputs"]["n_done"] == 0 else 0


def summary_lines(res: dict[str, Any]) -> list[str]:
    """One line per descriptor (best |r| of the model and of the random twin) and the failures."""
    inp = res["inputs"]
    model = next(iter(res["models"]))
    lines = [(f"analysed {inp['n_done']} of {inp['n_items']} item(s), {sum(inp['n_frames'].values())} frames; "
              f"{inp['n_failed']} failed")]
    for f in inp["failures"][:10]:
        lines.append(f"  skipped {f['item_id']}: {f['error']}")
    for g in dict.fromkeys(res["descriptors"]["groups"]):
        lines.append("  " + sentence(res, model, g).replace("**", ""))
    return lines
