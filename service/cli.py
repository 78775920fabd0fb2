"""The `tickprop` console script: one sub-command per module, each owning its arguments.

Only the module of the command being run is imported (`tickprop --help` imports them all,
for their descriptions). A bad TICKPROP_* setting or flag stops every command the same
way: one line naming the variable or flag on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service.settings import ConfigError

# sub-command -> module that defines `add_arguments(parser)` and `run(args) -> int`.
# `service.main` is the worker's composition root; the rest are offline tools.
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("service.main", "run the streaming worker (configured by TICKPROP_* settings)"),
    "produce": (
        "service.tools.produce",
        "replay a CSV of ticks (or a synthetic series) into Kafka",
    ),
    "backtest": ("service.tools.backtest", "run the online learner offline over a CSV and report"),
    "inspect": (
        "service.tools.inspect",
        "print each symbol's model_version and weights hash from Redis",
    ),
    "repartition": (
        "service.tools.repartition",
        "grow the ticks topic and move each symbol's state to its new partition",
    ),
    "dev": ("service.tools.dev", "start a local broker and Redis for development"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported when it is given."""
    parser = argparse.ArgumentParser(
        prog="tickprop",
        description="Streaming trend prediction with an online FFBPN; state in Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            cmd.description = module.__doc__
            module.add_arguments(cmd)
            cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except ConfigError as exc:
        print(f"tickprop {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
