"""``m3bert features MUSIC_DIR --out STORE``: audio files -> chunked feature frames in a resumable store."""

from __future__ import annotations

import argparse
import dataclasses
import os

from m3bert.core.config import apply_overrides
from m3bert.features import get_feature_set
from m3bert.features.store import STORE_DTYPES, check_run_settings, extract_to_store

HELP = "extract a feature set (default: the 324-d M3BERT features) from audio files into a feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="MUSIC_DIR",
                        help="folder(s) searched recursively for .wav .flac .ogg .opus .mp3, or audio files")
    parser.add_argument("--out", required=True, metavar="STORE", help="feature store folder (created or resumed)")
    parser.add_argument("--feature-set", default="m3bert324", help="registered feature set name (default: m3bert324)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="feature-set option, e.g. --set cqt_variant=chroma1008 --set cmvn=corpus (repeatable)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes for decoding + features (default 1; 2 on a 2-core machine); "
                             "with 2 or more, a worker that crashes on a file makes it a reject and the run goes on")
    parser.add_argument("--shard-index", type=int, default=0, help="this process's partition of the file list")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="number of partitions; each fills its own store, FeatureStore.open([...]) merges them")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="longest example in seconds for the paper's chunking rule (default 30)")
    parser.add_argument("--files-per-shard", type=int, default=32,
                        help="files per committed shard: a killed run loses at most this many (default 32)")
    parser.add_argument("--dtype", choices=tuple(STORE_DTYPES), default="float32",
                        help="what the shards hold (default float32; float16 halves what a GPU run reads, "
                             "relative rounding <= 4.9e-4; readers return float32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    # the one override mechanism: defaults of the named set <- --set KEY=VALUE (unknown keys are errors)
    defaults = dataclasses.asdict(get_feature_set(args.feature_set).config)
    feature_set = get_feature_set(args.feature_set, **apply_overrides(defaults, args.overrides))
    # every argument is checked before any file or folder is touched (one error line, exit 1)
    check_run_settings(feature_set=feature_set, workers=args.workers, shard_index=args.shard_index,
                       num_shards=args.num_shards, max_seconds=args.max_seconds, files_per_shard=args.files_per_shard,
                       dtype=args.dtype)
    summary = extract_to_store(args.inputs, args.out, feature_set=feature_set, workers=args.workers,
                               shard_index=args.shard_index, num_shards=args.num_shards, strict=args.strict,
                               progress=not args.quiet, max_seconds=args.max_seconds,
                               files_per_shard=args.files_per_shard, dtype=args.dtype)
    print(printable(format_summary(summary)))
    return 0


def printable(text: str) -> str:
    """``text`` safe for any stdout: a file name that is not valid UTF-8 (its raw bytes kept as
    surrogate escapes by ``os.fsdecode``) is shown with ``\\xNN`` escapes instead of crashing print."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def format_summary(s: dict) -> str:
    """The closing report of a run: what was done, what was skipped and why, and how fast."""
    lines = [
        f"features: {s['files_done']} file(s) extracted, {s['files_already_in_store']} already in the store, "
        f"{s['files_skipped']} skipped (partition {s['partition']}, {s['files_in_partition']} of "
        f"{s['files_found']} files found)",
        f"  {s['chunks']} chunk(s), {s['frames']} frames, {s['audio_hours']:.3f} h of audio in {s['wall_s']:.1f} s "
        f"= {s['speed_x_realtime']:.0f}x real time "
        f"(decode {s['time_s']['decode']:.1f} s, features {s['time_s']['features']:.1f} s, "
        f"write {s['time_s']['write']:.1f} s, summed over workers)",
    ]
    for r in s["rejects"]:
        lines.append(f"  skipped {r['source']}: {r['reason']}")
    for d in s["duplicates"]:
        lines.append(f"  skipped {d['source']}: same bytes as {d['same_as']}")
    for w in s.get("warnings", []):
        lines.append(f"  warning {w['source']}: {w['warning']}")
    lines.append(f"  store {s['store']}: {s['store_files']} file(s), {s['store_chunks']} chunk(s), "
                 f"{s['store_hours']:.3f} h" + (f" -> {os.path.join(s['store'], 'manifest.json')}"))
    return "\n".join(lines)
