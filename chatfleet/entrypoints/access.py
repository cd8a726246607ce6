"""Who may call a front started from the command line: its API key, and where it listens.

A key comes from `--api-key-file` (mode 0600 recommended) or the environment
(CHATFLEET_API_KEY), never needs to be on a command line, where `ps` shows it to every user.
A front bound to anything but loopback must demand a key: the gateway is the only port meant
to face a network; whatever stands behind it is on loopback or asks for a token.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from chatfleet.config.flags import ConfigError
from chatfleet.config.server_config import API_KEY_ENV


def add_access_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help=f"the API key clients must send as Bearer (or ${API_KEY_ENV})",
    )


def api_key_from(args: argparse.Namespace) -> str | None:
    """The key: `--api-key` where the command has it, else the file, else the environment."""
    flag = getattr(args, "api_key", None)
    if flag:
        return str(flag)
    if args.api_key_file:
        try:
            with open(args.api_key_file) as f:
                key = f.read().strip()
        except OSError as e:
            raise ConfigError(f"--api-key-file: {e}") from None
        if not key:
            raise ConfigError(f"--api-key-file: {args.api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, what: str) -> None:
    """ConfigError when `what` would listen beyond loopback without demanding a key."""
    if api_key is None and not is_loopback(host):
        raise ConfigError(
            f"{what} on {host} would answer anyone who can reach it: give it a key "
            f"(${API_KEY_ENV} or --api-key-file), or bind 127.0.0.1 and put the gateway in front"
        )
