"""`chatfleet` command line: each command's module registers its parser and function.

Exit status: the command's own; 2 for bad arguments or settings, or a model that cannot be
found or served (the message says why, without a traceback).
"""

from __future__ import annotations

import argparse
import sys

from chatfleet.config.flags import ConfigError
from chatfleet.entrypoints import (
    bench_cmd,
    gateway_cmd,
    offline_cmd,
    plan_cmd,
    router_cmd,
    serve_cmd,
)
from chatfleet.errors import InvalidRequestError, UnsupportedModelError
from chatfleet.extras import MissingExtraError

COMMANDS = (offline_cmd, serve_cmd, router_cmd, gateway_cmd, bench_cmd, plan_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatfleet")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        InvalidRequestError,
        ConfigError,
        MissingExtraError,
        UnsupportedModelError,
        FileNotFoundError,
    ) as e:
        message = e.message if isinstance(e, InvalidRequestError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
