"""``m3bert enrich`` (alias ``m3bert finetune``): M3BERT multi-task enrichment of a pre-trained M2BERT encoder.

    m3bert enrich --model PRETRAIN_RUN --task builtin-dance:CORPUS --task builtin-key:CORPUS \\
        --task builtin-tags:CORPUS --task builtin-tempo:CORPUS \\
        --scenario frozen --weighting uncertainty --sampling temperature:2 --out RUN2
    m3bert enrich ... --grid paper --out RUN2          # Table 4 grid, best by validation
    m3bert enrich --resume RUN2                        # continue exactly where it stopped
    m3bert export RUN2 --out MODEL_DIR                 # the M3BERT model for embed / bench

See :mod:`m3bert.enrich` for what is trained and how.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from m3bert.core.config import load_yaml
from m3bert.core.errors import ConfigError
from m3bert.core.io import read_json
from m3bert.enrich import EnrichConfig, load_config, run_enrich
from m3bert.enrich.loop import LEGACY_RUN_KIND, RUN_KIND

HELP = "M3BERT multi-task enrichment: several labelled tasks at once (frozen / finetune / scratch), with resume and the paper's grid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="pre-training run dir, checkpoint dir, model dir or random:CONFIG[:SEED]")
    parser.add_argument("--task", dest="tasks", action="append", default=[], metavar="NAME[:PATH]",
                        help="task to enrich on, e.g. builtin-dance:CORPUS (repeatable; one task is plain single-task training)")
    parser.add_argument("--scenario", default=None, choices=["frozen", "finetune", "scratch"],
                        help="frozen (paper: only enrichment + heads train), finetune (encoder too, lower lr), "
                             "scratch (random encoder of the same architecture)")
    parser.add_argument("--weighting", default=None, choices=["equal", "reweight", "uncertainty"],
                        help="loss balancing: equal, reweight (Wu et al.), uncertainty (Kendall et al.)")
    parser.add_argument("--sampling", default=None, metavar="SCHEME",
                        help="proportional | uniform | temperature:T (default: proportional)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (overrides the config)")
    parser.add_argument("--seed", type=int, default=None, help="seed of initialisation, sampling and dropout")
    parser.add_argument("--grid", default=None, metavar="NAME",
                        help="run a hyper-parameter grid and keep the best by validation: 'paper' (Table 4: batch "
                             "16/24/32, lr 2e-5/3e-5/4e-5, epochs 2/3/4, dropout .05/.1) or a YAML {key: [values]}")
    parser.add_argument("--config", default=None, metavar="YAML", help="config file, e.g. configs/multitask.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. optim.lr=5e-4 or weighting.reweight_epochs=3 (repeatable)")
    parser.add_argument("--out", default=None, metavar="RUN2", help="run directory to create (rerun to resume)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="input cache (features / frozen hidden states) to share between runs; default RUN2/cache")
    parser.add_argument("--resume", default=None, metavar="RUN2", help="continue RUN2 with its recorded model, tasks and config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [flag for flag, v in (("--model", args.model), ("--task", args.tasks), ("--config", args.config),
                                      ("--set", args.overrides), ("--grid", args.grid), ("--out", args.out),
                                      ("--scenario", args.scenario), ("--weighting", args.weighting),
                                      ("--sampling", args.sampling), ("--epochs", args.epochs), ("--seed", args.seed))
                 if v not in (None, [], "")]
        if given:
            raise ConfigError(f"--resume RUN2 continues RUN2 with its own model, tasks and config; drop {' '.join(given)}")
        run_json = Path(args.resume) / "run.json"
        if not run_json.is_file():
            raise ConfigError(f"--resume {args.resume}: no run.json there; not an enrich run directory")
        rec = read_json(run_json)
        if rec.get("kind") not in (RUN_KIND, LEGACY_RUN_KIND):
            raise ConfigError(f"--resume {args.resume}: run.json is a {rec.get('kind')!r} run, not {RUN_KIND!r}")
        if rec.get("model") == "<in memory>":
            raise ConfigError(f"--resume {args.resume}: the run was started from Python with an in-memory model; resume it there")
        cfg = EnrichConfig.from_dict(rec["config"])  # a legacy 'multitask' config is upgraded
        summary = run_enrich(cfg, model=rec["model"], tasks=rec["task_specs"], out=args.resume,
                               grid=rec.get("grid"), cache_dir=args.cache, progress=not args.no_progress)
    else:
        if not args.model or not args.tasks or not args.out:
            raise ConfigError("expected --model SPEC, at least one --task NAME[:PATH] and --out RUN2 (or --resume RUN2)")
        overrides = list(args.overrides)
        for key, value in (("scenario", args.scenario), ("weighting.name", args.weighting),
                           ("sampling", args.sampling), ("epochs", args.epochs), ("seed", args.seed)):
            if value is not None:
                overrides.append(f"{key}={value}")
        cfg = load_config(args.config, overrides)
        grid: Any = args.grid
        if grid is not None and grid.endswith((".yaml", ".yml")):
            grid = load_yaml(grid)  # {dotted.key: [values]}
        summary = run_enrich(cfg, model=args.model, tasks=args.tasks, out=args.out, grid=grid,
                               cache_dir=args.cache, progress=not args.no_progress)
    print(format_summary(summary))
    return 0


def _fmt(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The closing per-task table: primary metric and loss on valid and test, then the aggregate."""
    primary = summary.get("primary_metrics", {})
    rows = [("task", "metric", "valid", "test", "valid loss", "n valid", "n test")]
    for task, metric in primary.items():
        v = summary.get("valid", {}).get(task, {})
        t = summary.get("test", {}).get(task, {})
        rows.append((task, metric, _fmt(v.get(metric)), _fmt(t.get(metric)), _fmt(v.get("loss")),
                     str(v.get("n", 0)), str(t.get("n", 0))))
    rows.append(("aggregate", "mean primary", _fmt(summary.get("valid_aggregate")), _fmt(summary.get("test_aggregate")),
                 "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"enrich run {summary.get('out')}: scenario={summary.get('scenario')} weighting={summary.get('weighting')} "
            f"sampling={summary.get('sampling')} best epoch={summary.get('best_epoch')} of {summary.get('epochs_run')}"
            + (" (early stop)" if summary.get("stopped_early") else ""))
    if summary.get("best_point"):
        head += f"\ngrid: best point {summary['best_point']} {json.dumps(summary.get('best_params'))}"
    if summary.get("reweights"):
        head += "\nreweight weights: " + ", ".join(f"{k}={v:.3f}" for k, v in summary["reweights"].items())
    if summary.get("rejects"):
        head += f"\nskipped {summary['rejects']} unreadable excerpt(s); see run.json 'rejects'"
    return head + "\n" + "\n".join(lines)
