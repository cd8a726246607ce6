"""What every command's `register` does: a subcommand with its flags and its function."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_command(
    sub: Any,
    name: str,
    help: str,  # noqa: A002 - argparse's word
    add_args: Callable[[argparse.ArgumentParser], None],
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """`sub`'s new parser `name`, with `add_args`' flags, running `func`."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    add_args(parser)
    parser.set_defaults(func=func)
    return parser
