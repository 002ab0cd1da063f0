"""``m3bert export``: a run (pre-training or multi-task) or checkpoint -> a clean model directory.

See :func:`m3bert.models.hub.export_model` for what is validated and written.
"""

from __future__ import annotations

import argparse

from m3bert.models.hub import export_model

HELP = "Export a run or checkpoint to a clean model directory (config.json + model.safetensors)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory (best, else last checkpoint), checkpoint or model dir")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help="which checkpoint of a run (default: best if present, else last)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    info = export_model(args.run, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(f"exported {info['source']} -> {info['out']} (model id {info['model_id']}, "
          f"{info['n_parameters']:,} parameters, {info['n_hidden_states']} hidden states)")
    return 0
