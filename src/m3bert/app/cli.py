"""``m3bert`` command line: one entry point, one module per subcommand under ``m3bert.app.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from m3bert.app.commands import analyze, bench, corpus, demo, embed, enrich, export, features, multisource, pretrain, targets, wu
from m3bert.core.errors import M3bertError
from m3bert.core.version import __version__

# subcommand -> its module, in the order of `m3bert --help`
COMMANDS: dict[str, ModuleType] = {
    "features": features,
    "corpus": corpus,
    "targets": targets,
    "pretrain": pretrain,
    "enrich": enrich,
    "finetune": enrich,  # alias: the stage's earlier name
    "multisource": multisource,
    "export": export,
    "embed": embed,
    "bench": bench,
    "analyze": analyze,
    "demo": demo,
    "wu-ablation": wu,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3bert", description="Music representations: features, "
                                     "M2BERT pre-training, M3BERT multi-task enrichment, embeddings, benchmarks.")
    parser.add_argument("--version", action="version", version=f"m3bert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except M3bertError as exc:
        print(f"m3bert {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"m3bert {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
