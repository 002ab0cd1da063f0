"""``m3bert multisource``: Kim et al. (2020) multi-source representation learning and its experiment.

    m3bert multisource train --strategy ms-cr@2 --source builtin-tempo:CORPUS --source builtin-tags:CORPUS \\
        --source builtin-key:CORPUS --model random:kim-cnn --out RUN      # Algorithm 1, the paper's settings
    m3bert multisource train --resume RUN                                   # exact resume (also after kill -9)
    m3bert export RUN --out MODEL --checkpoint last                         # the representation network
    m3bert multisource experiment --corpus CORPUS --out EXP                 # SS-R per source + strategies x 1..m sources,
                                                                            # probed on held-out tasks, the two findings

Strategies (Table 4): ``ss-r`` (one source), ``mss-cr``, ``ms-cr@2``, ``ms-cr@4``, ``ms-cr@6``,
``ms-sr@fc``. Any registered task is a source (multiclass -> one-hot, multilabel -> pLSA, regression ->
GMM; k = 50). A run is an enrich run (``m3bert enrich --resume RUN`` continues it too); see
:mod:`m3bert.enrich.multisource`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m3bert.app.commands.enrich import format_summary
from m3bert.app.multisource_experiment import add_experiment_arguments, run_experiment_command
from m3bert.core.errors import ConfigError
from m3bert.core.io import read_json
from m3bert.enrich import EnrichConfig, load_multisource_config, train_enrich
from m3bert.enrich.loop import RUN_KIND
from m3bert.models.kim import STRATEGIES

HELP = "Kim et al. 2020: multi-source representation learning (SS-R, MSS-CR, MS-CR@k, MS-SR@FC) and its experiment"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train one strategy on some learning sources (Algorithm 1 by default)",
                       description="train one strategy on some learning sources (Algorithm 1 by default)")
    t.add_argument("--strategy", default=None, choices=sorted(STRATEGIES), help="representation strategy (Table 4)")
    t.add_argument("--source", dest="sources", action="append", default=[], metavar="NAME[:PATH]",
                   help="a learning source: any registered task, e.g. builtin-tempo:CORPUS (repeatable)")
    t.add_argument("--model", default="random:kim-cnn", metavar="SPEC",
                   help="the kim-cnn config to train from scratch: random:kim-cnn (paper), random:kim-cnn-tiny, "
                        "random:kim-cnn-324 (on the 324-d features)")
    t.add_argument("--config", default=None, metavar="YAML", help="config file over the Algorithm 1 preset, e.g. configs/kim-corpus.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. epochs=20 or sampling=uniform (repeatable)")
    t.add_argument("--epochs", type=int, default=None, help="epochs N (paper: 200)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation, sampling, crops and dropout")
    t.add_argument("--out", default=None, metavar="RUN", help="run directory to create (rerun to resume)")
    t.add_argument("--cache", default=None, metavar="DIR", help="feature-frame cache shared between runs (default RUN/cache)")
    t.add_argument("--resume", default=None, metavar="RUN", help="continue RUN with its recorded model, sources and config")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = sub.add_parser("experiment", help="the paper's experiment on a corpus: both findings, measured, with CIs",
                       description="SS-R per source and the multi-source strategies with 1..m sources (a fractional "
                                   "design, several seeds), probed on held-out tasks; writes REPORT.md + REPORT.json")
    add_experiment_arguments(e)


def run(args: argparse.Namespace) -> int:
    if args.action == "experiment":
        return run_experiment_command(args)
    if args.resume:
        given = [flag for flag, v in (("--strategy", args.strategy), ("--source", args.sources), ("--config", args.config),
                                      ("--set", args.overrides), ("--out", args.out), ("--epochs", args.epochs),
                                      ("--seed", args.seed)) if v not in (None, [], "")]
        if given:
            raise ConfigError(f"--resume RUN continues RUN with its own model, sources and config; drop {' '.join(given)}")
        rec = read_json(Path(args.resume) / "run.json") if (Path(args.resume) / "run.json").is_file() else None
        if not isinstance(rec, dict) or rec.get("kind") != RUN_KIND or not rec.get("config", {}).get("multisource", {}).get("strategy"):
            raise ConfigError(f"--resume {args.resume}: no multisource run there (run.json of kind {RUN_KIND!r} with a strategy)")
        summary = train_enrich(EnrichConfig.from_dict(rec["config"]), model=rec["model"], tasks=rec["task_specs"],
                               out=args.resume, cache_dir=args.cache, progress=not args.no_progress)
    else:
        if not args.strategy or not args.sources or not args.out:
            raise ConfigError("expected --strategy NAME, at least one --source NAME[:PATH] and --out RUN (or --resume RUN)")
        overrides = list(args.overrides) + [f"multisource.strategy={args.strategy}"]
        overrides += [f"{k}={v}" for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None]
        cfg = load_multisource_config(args.config, overrides)
        summary = train_enrich(cfg, model=args.model, tasks=args.sources, out=args.out, cache_dir=args.cache,
                               progress=not args.no_progress)
    if summary.get("status") == "interrupted":
        print(f"interrupted at step {summary.get('global_step')}; rerun to resume")
        return 0
    ms = summary.get("multisource") or {}
    print(f"{ms.get('strategy')} on {ms.get('n_sources')} source(s) {ms.get('sources')}: representation of "
          f"{'d x m' if ms.get('concatenated') else 'd'} dimensions")
    print(format_summary(summary))
    return 0
