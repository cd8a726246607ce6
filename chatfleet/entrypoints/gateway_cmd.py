"""`chatfleet gateway` (the product layer over an OpenAI-compatible upstream), `chatfleet keys`
(users and API keys, straight in the database) and `chatfleet stack` (`chatfleet up` plus a
gateway in front: what `make up` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from chatfleet.config import flags
from chatfleet.config.gateway_config import DEFAULT_DB, GatewayConfig, UpstreamConfig
from chatfleet.config.server_config import API_KEY_ENV
from chatfleet.entrypoints.access import is_loopback
from chatfleet.entrypoints.parsing import add_command
from chatfleet.http.uvicorn_server import setup_logging
from chatfleet.processes import die_with_parent, taken_ports

logger = logging.getLogger("chatfleet.gateway")
DEFAULT_ADMIN_KEY_FILE = ".chatfleet/admin-key"
# The key the gateway sends upstream, when not given as a flag (which `ps` shows).
UPSTREAM_KEY_ENV = "CHATFLEET_UPSTREAM_API_KEY"
_DB_ENV = "CHATFLEET_DB"


def _add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get(_DB_ENV, DEFAULT_DB),
        help=f"sqlite:///PATH or postgresql://... (default: ${_DB_ENV} or %(default)s)",
    )


def add_gateway_args(p: argparse.ArgumentParser, with_upstream: bool = True) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    _add_db_arg(p)
    skip = ("db",) if with_upstream else ("db", "upstream")
    flags.add_flags(p, GatewayConfig, skip=skip)
    p.add_argument(
        "--admin-key-file",
        default=DEFAULT_ADMIN_KEY_FILE,
        help="where the admin key is kept (made on first start); '' for none",
    )


def gateway_config(args: argparse.Namespace, upstream_url: str) -> GatewayConfig:
    """The flags' config; the upstream's key from the flag or the environment."""
    config = flags.from_args(GatewayConfig, args, skip=("upstream",))
    key = config.upstream.api_key or os.environ.get(UPSTREAM_KEY_ENV) or None
    upstream = dataclasses.replace(config.upstream, url=upstream_url, api_key=key)
    return dataclasses.replace(config, upstream=upstream)


def _serve(args: argparse.Namespace, upstream_url: str) -> None:
    from chatfleet.gateway.launch import serve_gateway

    config = gateway_config(args, upstream_url)
    asyncio.run(serve_gateway(config, args.host, args.port, args.admin_key_file or None))


def cmd_gateway(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        _serve(args, args.upstream or UpstreamConfig().url)
    except ValueError as e:  # a bad URL or limit (ConfigError included): say so, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def add_keys_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="make a key (and its user); printed once")
    create.add_argument("--user", required=True)
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--max-streams", type=int, default=None, help="concurrent streams")
    create.add_argument("--admin", action="store_true", help="a new user is an admin")
    list_ = sub.add_parser("list", help="keys (never their secrets)")
    list_.add_argument("--user", default=None)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    for q in (create, list_, revoke):
        _add_db_arg(q)


def cmd_keys(args: argparse.Namespace) -> int:
    from chatfleet.gateway.store import open_store
    from chatfleet.gateway.store.base import MAX_KEY_LIMIT

    store = open_store(args.db)
    try:
        if args.keys_command == "create":
            asked = (args.rpm, args.tpm, args.max_streams)
            if any(v is not None and not 1 <= v <= MAX_KEY_LIMIT for v in asked):
                print(
                    f"error: --rpm, --tpm and --max-streams must be in [1, {MAX_KEY_LIMIT}]",
                    file=sys.stderr,
                )
                return 2
            user = store.get_user_by_name(args.user) or store.create_user(args.user, args.admin)
            record, plain = store.create_key(
                user.user_id, args.name, args.rpm, args.tpm, args.max_streams
            )
            print(f"key {record.key_id} for user {user.name}; shown once:", file=sys.stderr)
            print(plain, flush=True)
            return 0
        if args.keys_command == "list":
            owner = store.get_user_by_name(args.user) if args.user else None
            if args.user and owner is None:
                print(f"error: no user {args.user!r}", file=sys.stderr)
                return 1
            for k in store.list_keys(owner.user_id if owner else None):
                state = "revoked" if k.is_revoked else "active"
                limits = f"rpm={k.rpm} tpm={k.tpm} max_streams={k.max_streams}"
                print(f"{k.key_id}  {k.user_name:<16} {state:<8} {limits}  {k.name}")
            return 0
        if not store.revoke_key(args.key_id):
            print(f"error: no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    finally:
        store.close()


def add_stack_args(p: argparse.ArgumentParser) -> None:
    add_gateway_args(p, with_upstream=False)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--router-port", type=int, default=8002)
    p.add_argument(
        "--internal-host",
        default="127.0.0.1",
        help="where the router and the replicas listen (not loopback: they demand a token "
        "the stack makes and hands them, and the gateway sends)",
    )
    p.add_argument("--up-args", default="", help="more `chatfleet up` flags")
    p.add_argument("--ready-timeout", type=float, default=600.0)


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether `url`/ready answered 200 while `proc` ran, within `timeout_s`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    return False


def cmd_stack(args: argparse.Namespace) -> int:
    """`chatfleet up` (router + replicas) as a child, then the gateway in this process; on
    exit the gateway stops first, then `up` drains and stops its replicas."""
    import secrets
    import shlex

    setup_logging()
    taken = taken_ports(args.host, [args.port]) + taken_ports(
        args.internal_host, [args.router_port]
    )
    if taken:
        print(f"error: port(s) {taken} already in use; stop what holds them", file=sys.stderr)
        return 1
    router_url = f"http://{args.internal_host}:{args.router_port}"
    cmd = [sys.executable, "-m", "chatfleet.entrypoints.cli", "up", "--host", args.internal_host]
    cmd += ["--port", str(args.router_port), "--replicas", str(args.replicas)]
    cmd += shlex.split(args.up_args)
    env = dict(os.environ)
    if not is_loopback(args.internal_host):
        # NOTE: in the environment, not on a command line `ps` shows to every user.
        env[API_KEY_ENV] = args.upstream_api_key = secrets.token_urlsafe(32)
    # NOTE: a session of its own: Ctrl-C reaches only this process, which then stops `up`;
    # and `up` is SIGTERMed by the kernel if this process is killed outright.
    up = subprocess.Popen(cmd, start_new_session=True, env=env, preexec_fn=die_with_parent())
    try:
        print(f"starting {args.replicas} replicas and a router on {router_url} ...", flush=True)
        if not _wait_ready(router_url, up, args.ready_timeout):
            print("error: the router never became ready", file=sys.stderr, flush=True)
            return 1
        _serve(args, router_url)
        return 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(120)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)


def register(sub: Any) -> None:
    about = "users, keys, limits, conversations, web chat"
    add_command(sub, "gateway", about, add_gateway_args, cmd_gateway)
    about = "create, list and revoke the gateway's API keys"
    add_command(sub, "keys", about, add_keys_args, cmd_keys)
    about = "the whole stack: replicas, router and gateway"
    add_command(sub, "stack", about, add_stack_args, cmd_stack)
