"""``m3bert`` command line: one entry point, one module per subcommand under ``m3bert.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily so ``m3bert --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from m3bert import __version__
from m3bert.errors import M3bertError

# subcommand -> module under m3bert.commands
COMMANDS = {
    "features": "features",
    "corpus": "corpus",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "export": "export",
    "embed": "embed",
    "bench": "bench",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3bert", description="Music representations: features, "
                                     "M2BERT pre-training, M3BERT multi-task enrichment, embeddings, benchmarks.")
    parser.add_argument("--version", action="version", version=f"m3bert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"m3bert.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"m3bert.commands.{module_name}":
                raise
            continue  # command not built yet
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
