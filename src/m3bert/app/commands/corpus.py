"""``m3bert corpus build|info|real-music``: the built-in labelled corpus (real compositions rendered to
audio), and real recorded music for pre-training (game soundtracks from Debian's data packages)."""

from __future__ import annotations

import argparse
import json

from m3bert.corpus import build_corpus, corpus_info
from m3bert.corpus.real_music import MUSIC_PACKAGES, PACKAGE_SETS, RealMusicConfig, gather_real_music, package_list

HELP = "build or describe the built-in labelled corpus (music21 scores rendered to audio)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="render a preset into a dataset folder (resumes if interrupted)")
    b.add_argument("--preset", default="small", help="tiny | small | full (default: small)")
    b.add_argument("--out", required=True, help="output folder (CORPUS)")
    b.add_argument("--seed", type=int, default=0, help="seed of every choice: pieces, splits, programs, tempi, transpositions")
    b.add_argument("--renderer", default="auto", choices=["auto", "fluidsynth", "numpy"],
                   help="auto: FluidSynth when pyfluidsynth + a soundfont are found, else the numpy synthesizer")
    b.add_argument("--soundfont", default=None, help="General MIDI .sf2 for FluidSynth (default: usual system paths)")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs for large presets)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("real-music", help="gather real recorded music (free game soundtracks) from Debian packages "
                                          "with apt-get download; resumable; writes OUT/manifest.json")
    r.add_argument("--out", required=True, help="output folder (MUSIC); then: m3bert features MUSIC/audio --out STORE")
    r.add_argument("--packages", default="demo",
                   help=f"a set ({', '.join(sorted(PACKAGE_SETS))}) or comma-separated names of: {', '.join(MUSIC_PACKAGES)}")
    r.add_argument("--min-seconds", type=float, default=30.0, help="skip shorter files (jingles, effects); default 30")
    r.add_argument("--keep-debs", action="store_true", help="keep the downloaded .deb files in OUT/debs")
    i = sub.add_parser("info", help="summarise a built corpus")
    i.add_argument("corpus", help="corpus folder")
    i.add_argument("--json", action="store_true", help="print corpus.json as is")


def _print_summary(info: dict) -> None:
    print(f"preset {info['preset']} (seed {info['seed']}), renderer {info['renderer']}"
          + (f" with {info['soundfont']}" if info.get("soundfont") else ""))
    print(f"{info['n_clips']} clips, {info['audio_seconds'] / 60:.1f} min of audio, "
          f"{info['size_bytes'] / 2**20:.1f} MiB; built in {info['build_seconds']:.1f} s")
    if info.get("n_failed"):
        print(f"{info['n_failed']} planned clips failed (pieces: {', '.join(info['failed_pieces'][:10])}"
              f"{' ...' if len(info['failed_pieces']) > 10 else ''})")
    print("clips per task (train / valid / test):")
    for task, counts in info["clips_per_task"].items():
        print(f"  {task:20s} {counts['train']:5d} {counts['valid']:5d} {counts['test']:5d}")


def run(args: argparse.Namespace) -> int:

    if args.corpus_command == "real-music":
        cfg = RealMusicConfig(packages=package_list(args.packages), min_seconds=args.min_seconds, keep_debs=args.keep_debs)
        manifest = gather_real_music(args.out, config=cfg)
        print(f"{manifest['n_files']} music files, {manifest['seconds'] / 3600:.2f} h from "
              f"{len(manifest['packages'])} package(s); {len(manifest['rejects'])} file(s) skipped, "
              f"{len(manifest['failed'])} package(s) failed; manifest: {args.out}/manifest.json")
        return 0 if manifest["n_files"] else 1
    if args.corpus_command == "build":
        info = build_corpus(args.preset, args.out, seed=args.seed, renderer=args.renderer,
                            progress=not args.no_progress, soundfont=args.soundfont, workers=args.workers)
        _print_summary(info)
        return 0
    info = corpus_info(args.corpus)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0
