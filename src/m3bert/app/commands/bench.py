"""``m3bert bench``: probe representations on downstream tasks and write a report.

    m3bert bench --model RUN --model random:m2bert-small --baseline mfcc --baseline raw \\
        --task builtin-dance:CORPUS --task gtzan-genre:/data/gtzan --protocol marble --seeds 3 \\
        --report REPORT_DIR [--skip-missing] [--cache DIR]

Like-for-like settings in one run, on the same features, seeds and splits (issue 17)::

    m3bert bench ... --setting paper --setting marble --setting marble-meanstd \
        --split kfold --folds 5 --pair "M2BERT::random:m2bert-small"

``--setting`` NAME (``paper`` = output layer, mean; ``marble`` = every layer + weighted sum,
best on validation, mean; ``paper-meanstd``, ``marble-meanstd``) or ``NAME=LAYERS[:POOLING]``;
``--split kfold`` = grouped k-fold cross-validation by piece (every clip tested once per seed);
``--pair A::B`` = a paired bootstrap of A minus B per task. The report states which layer won
and the minimum detectable difference of every task.

Features are cached (default ``REPORT_DIR/cache``), so rerunning with another protocol or more
seeds only trains probes; an interrupted extraction resumes. ``--task folder:DIR`` (one
sub-folder per class) and ``--task csv:FILE`` (``path,label[,split][,group]``; also ``.jsonl``)
benchmark your own labelled audio.

Argument errors (an unknown protocol, baseline or task, ``--seeds``/``--max-epochs``/``--threads``
below 1) are one ``m3bert bench: error: ...`` line, before any model is loaded; leaving an option
out means its default (0 never does).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from m3bert.core.errors import ConfigError
from m3bert.evaluate.baselines import available_baselines, get_baseline
from m3bert.evaluate.probes import SETTINGS, SPLITS, available_protocols, get_protocol, parse_setting
from m3bert.evaluate.report import summary_lines
from m3bert.evaluate.representations import EmbeddingsDirRepresentation, HearRepresentation, ModelRepresentation, Representation
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks.registry import available_task_schemes, parse_task_spec

HELP = "Benchmark representations on downstream tasks (MARBLE / Kim / linear probes) and write a report."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=[], metavar="DIR|RUN|random:CONFIG",
                   help="an m3bert model directory, run directory or random:CONFIG (repeatable)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME",
                   help=f"{' | '.join(available_baselines())} (repeatable)")
    p.add_argument("--embeddings", action="append", default=[], metavar="NAME:DIR",
                   help="precomputed .npy per audio file mirroring the dataset tree (repeatable)")
    p.add_argument("--hear", action="append", default=[], metavar="MODULE[:WEIGHTS]",
                   help="a HEAR 2021 module (load_model, get_scene_embeddings) (repeatable)")
    p.add_argument("--task", action="append", default=[], required=True, metavar="NAME[:PATH]",
                   help="a registered task, with its dataset path, or your own data: "
                        + ", ".join(f"{s}:PATH" for s in available_task_schemes()) + " (repeatable)")
    p.add_argument("--protocol", default="marble", metavar="NAME",
                   help=f"probing protocol: {' | '.join(available_protocols())} (default marble)")
    p.add_argument("--seeds", type=int, default=None, help="repeats, >= 1 (default: the protocol's: marble 3, kim 5)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="processes for the probe fits (one torch thread each; scores do not depend on it; default 1)")
    p.add_argument("--setting", action="append", default=[], metavar="NAME|NAME=LAYERS[:POOLING]",
                   help=f"probe setting, repeatable, compared side by side: {' | '.join(sorted(SETTINGS))} or e.g. "
                        "out=last:meanstd (default: the protocol's layers and pooling)")
    p.add_argument("--split", default=None, choices=SPLITS, help="split for every task (default: the protocol's)")
    p.add_argument("--folds", type=int, default=None, help="folds of --split kfold, >= 3 (default 5)")
    p.add_argument("--pair", action="append", default=[], metavar="A::B",
                   help="compare representation A with B per task by a paired bootstrap over test pieces (repeatable)")
    p.add_argument("--no-power", action="store_true", help="skip the minimum-detectable-difference bootstrap")
    p.add_argument("--report", required=True, type=Path, metavar="REPORT_DIR", help="where results and reports go")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default REPORT_DIR/cache)")
    p.add_argument("--no-cache", action="store_true", help="do not keep features on disk")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip (and record) missing or unreadable audio instead of stopping")
    p.add_argument("--max-epochs", type=int, default=None, help="probe epochs, >= 1 (default: the protocol's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads, >= 1 (default: min(2, CPUs))")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_representations(args: argparse.Namespace) -> list[Representation]:
    reps = [ModelRepresentation(spec) for spec in args.model]
    reps += [get_baseline(name) for name in args.baseline]
    for spec in args.embeddings:
        name, sep, directory = spec.partition(":")
        if not sep or not name or not directory:
            raise ConfigError(f"--embeddings {spec!r}: expected NAME:DIR")
        reps.append(EmbeddingsDirRepresentation(name, directory))
    for spec in args.hear:
        module, _, weights = spec.partition(":")
        reps.append(HearRepresentation(module, weights or None))
    return reps


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad arguments with a ConfigError naming the flag and value, before anything is loaded."""
    for flag, value in (("--seeds", args.seeds), ("--max-epochs", args.max_epochs), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected an integer >= 1 (leave {flag} out for the default)")
    get_protocol(args.protocol)  # unknown: "unknown protocol 'x'; registered: [...]"
    for spec in args.setting:
        parse_setting(spec)
    if args.folds is not None and args.folds < 3:
        raise ConfigError(f"--folds {args.folds}: expected an integer >= 3 (leave --folds out for 5)")
    for spec in args.pair:
        if "::" not in spec or not all(spec.split("::", 1)):
            raise ConfigError(f"--pair {spec!r}: expected A::B, two representation names")
    for name in args.baseline:
        if name not in available_baselines():
            raise ConfigError(f"--baseline {name!r}: unknown baseline; expected one of {available_baselines()}")
    for spec in args.task:
        parse_task_spec(spec)  # unknown task names fail here, before any model is loaded


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    threads = args.threads if args.threads is not None else min(2, os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reps = build_representations(args)
        cache = None if args.no_cache else (args.cache or args.report / "cache")
        overrides = {"max_epochs": args.max_epochs} if args.max_epochs is not None else None
        echo = (lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None
        res = run_benchmark(reps, args.task, protocol=args.protocol, seeds=args.seeds, out_dir=args.report,
                            cache_dir=cache, skip_missing=args.skip_missing, progress=not args.quiet,
                            probe_overrides=overrides, echo=echo, settings=args.setting or None, split=args.split,
                            n_folds=args.folds, pairs=[tuple(p.split("::", 1)) for p in args.pair],
                            power=not args.no_power, workers=args.jobs)
    finally:
        torch.set_num_threads(old_threads)
    print("\n".join(summary_lines(res)))
    n_fail = sum(len(r["failures"]) for r in res["results"])
    n_skip = sum(len(t["skipped"]) for t in res["tasks"])
    print(f"\n{len(res['results'])} (representation, task) pairs x {len(res['seeds'])} seed(s) in {res['elapsed_s']} s; "
          f"{n_skip} item(s) skipped, {n_fail} clip(s) failed; report: {args.report}/report.html")
    return 0
