"""``m3bert embed``: embeddings of a folder (or list) of audio files, resumable.

``--format npy`` (default) writes an embeddings folder: ``OUT/<relative path of the input>.npy``
per input file plus ``embed.json``, ``index.jsonl`` and ``summary.json``; ``--format h5`` writes
one HDF5 file. Rerunning the same command skips finished files and refuses to mix settings or
models in one output. The format and the run are :mod:`m3bert.embed.folder`'s
(:func:`~m3bert.embed.folder.embed_files`); this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from m3bert.core.errors import ConfigError
from m3bert.embed import DTYPES, load_model
from m3bert.embed.folder import FORMATS, embed_files

HELP = "Embed audio files with a model (clip or frame level, any layers) into .npy files or one HDF5."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="MUSIC_DIR_OR_FILES", help="audio files and/or folders (recursive)")
    p.add_argument("--model", required=True, help="model dir, run dir, checkpoint dir or random:CONFIG[:SEED]")
    p.add_argument("--out", required=True, help="output folder (npy) or .h5 file (h5)")
    p.add_argument("--level", choices=("clip", "frame"), default="clip", help="clip vectors or frame sequences")
    p.add_argument("--layers", default="-1", help="-1 (last), all, or comma-separated indices (0 = input embedding)")
    p.add_argument("--pool", choices=("mean", "meanstd"), default="mean", help="clip-level pooling over time")
    p.add_argument("--format", choices=FORMATS, default="npy", dest="fmt", help="output format")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="encoder precision: fp32, bf16 (autocast) or int8 (CPU: dynamically quantised linear layers, "
                        "clip-level cosine to fp32 >= 0.999)")
    p.add_argument("--batch-size", type=int, default=8, help="encoder windows per forward pass")
    p.add_argument("--prefetch", type=int, default=None,
                   help="files decoded and featurised ahead of the encoder in a background thread "
                        "(default: one batch; 0 = none)")
    p.add_argument("--window-frames", type=int, default=None,
                   help="encoder window, >= 1 (default, when left out: the model's context)")
    p.add_argument("--hop-frames", type=int, default=None,
                   help="hop between windows, >= 1 (default, when left out: window - window/6)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads, >= 1 (default: torch's choice)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: expected an integer >= 1 (leave it out for torch's default)")
        torch.set_num_threads(int(args.threads))
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: expected an integer >= 1 (encoder windows per forward pass)")
    embedder = load_model(args.model, device=args.device, dtype=args.dtype, window_frames=args.window_frames,
                          hop_frames=args.hop_frames, prefetch=args.prefetch)
    summary = embed_files(args.inputs, args.out, embedder=embedder, level=args.level, layers=args.layers,
                          pool=args.pool, fmt=args.fmt, batch_size=args.batch_size, strict=args.strict,
                          progress=not args.no_progress)
    print(format_summary(summary))
    return 1 if summary["n_failed"] and not (summary["n_done"] + summary["n_existing"]) else 0


def format_summary(s: dict[str, Any]) -> str:
    """The run summary of :func:`~m3bert.embed.folder.embed_files` as terminal lines."""
    lines = [f"embedded {s['n_done']} file(s) ({s['audio_seconds'] / 60:.1f} min of audio) in {s['seconds']:.1f} s"
             + (f", {s['realtime_factor']:.3g}x real time" if s["realtime_factor"] else "")
             + f"; {s['n_existing']} already done; {s['n_failed']} failed -> {s['out']}"]
    for f in s["failures"][:20]:
        lines.append(f"  skipped {f['path']}: {f['error']}")
    if len(s["failures"]) > 20:
        lines.append(f"  ... and {len(s['failures']) - 20} more (see the summary)")
    return "\n".join(lines)
