"""The `tickprop` console script: one sub-command per module, each owning its arguments."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command -> module that defines `add_arguments(parser)` and `run(args) -> int`.
# Modules are imported only when their command runs, so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("service.main", "run the streaming worker (configured by TICKPROP_* settings)"),
    "produce": ("service.produce", "replay a CSV of ticks (or a synthetic series) into Kafka"),
    "backtest": ("service.backtest", "run the online learner offline over a CSV and report"),
    "inspect": ("service.inspect", "print each symbol's model_version and weights hash from Redis"),
    "repartition": (
        "service.repartition",
        "grow the ticks topic and move each symbol's state to its new partition",
    ),
    "dev": ("service.dev", "start a local broker and Redis for development"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickprop",
        description="Streaming trend prediction with an online FFBPN; state in Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
