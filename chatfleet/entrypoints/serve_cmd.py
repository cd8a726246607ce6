"""`chatfleet serve`: the OpenAI-compatible server on one engine (server/launch.py).

Its flags are ServeConfig's settings (config/flags.py), plus where to listen.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from chatfleet.config import flags
from chatfleet.config.server_config import ServeConfig
from chatfleet.entrypoints.access import add_access_args, api_key_from, check_exposure
from chatfleet.entrypoints.parsing import add_command


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    flags.add_flags(p, ServeConfig)
    add_access_args(p)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The flags' config, its API key from the flag, the key file or the environment."""
    config = flags.from_args(ServeConfig, args)
    server = dataclasses.replace(config.server, api_key=api_key_from(args))
    return dataclasses.replace(config, server=server)


def cmd_serve(args: argparse.Namespace) -> int:
    from chatfleet.http.uvicorn_server import setup_logging
    from chatfleet.server.launch import run_server

    setup_logging()
    config = serve_config(args)
    check_exposure(args.host, config.server.api_key, "chatfleet serve")
    return run_server(config.engine, config.server, args.host, args.port)


def register(sub: Any) -> None:
    add_command(sub, "serve", "OpenAI-compatible HTTP server", add_serve_args, cmd_serve)
