"""Run the gateway: open its store and limit store, keep the admin key, serve until a signal."""

from __future__ import annotations

import asyncio

from chatfleet.config.gateway_config import GatewayConfig
from chatfleet.gateway import keys
from chatfleet.gateway.components import Gateway
from chatfleet.gateway.gateway_app import build_gateway_app
from chatfleet.gateway.limits import open_limits
from chatfleet.gateway.private_files import private_file
from chatfleet.gateway.prompt import COUNTERS
from chatfleet.gateway.store import open_store
from chatfleet.gateway.store.base import GatewayStore
from chatfleet.gateway.upstream import Upstream
from chatfleet.http.uvicorn_server import UvicornServer


def ensure_admin_key(store: GatewayStore, path: str) -> str | None:
    """Keep a working admin key in `path` (mode 0600): a new one (user "admin") if the file
    is missing or its key is wrong, revoked or not an admin's. The new key, to be shown
    once; None when the kept one is still good."""
    is_new_file = private_file(path)
    if not is_new_file:
        with open(path) as f:
            plain = f.read().strip()
        parsed = keys.parse_key(plain)
        record = store.get_key(parsed[0]) if parsed else None
        if (
            parsed
            and record is not None
            and record.is_admin
            and not record.is_revoked
            and keys.verify_secret(parsed[1], record.salt, record.secret_hash)
        ):
            return None
    user = store.get_user_by_name("admin") or store.create_user("admin", is_admin=True)
    _, plain = store.create_key(user.user_id, name="admin (made by chatfleet gateway)")
    with open(path, "w") as f:  # 0600 already: private_file made or narrowed it
        f.write(plain + "\n")
    return plain


def build_gateway(config: GatewayConfig) -> Gateway:
    """Every component, connected (the store migrated); ValueError for a bad URL."""
    store = open_store(config.db_url)
    counter_kind = "chars" if config.tokenizer == "chars" else "template"
    counter = COUNTERS[counter_kind](config.tokenizer)
    limits = open_limits(config.limits.backend)
    return Gateway(config, store, limits, Upstream(config.upstream), counter)


async def serve_gateway(
    config: GatewayConfig, host: str, port: int, admin_key_file: str | None
) -> None:
    """Serve until SIGTERM / SIGINT; print the URL (and the admin key) once listening."""
    gateway = build_gateway(config)
    key = ensure_admin_key(gateway.store, admin_key_file) if admin_key_file else None
    server = UvicornServer(
        build_gateway_app(gateway), host, port, graceful_s=10, limits=config.http
    )
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"chatfleet gateway on http://{host}:{port} -> {config.upstream.url}", flush=True)
        if key is not None:
            print(f"new admin key: {key}  (kept in {admin_key_file}; shown once)", flush=True)
        elif admin_key_file:
            print(f"admin key: in {admin_key_file}", flush=True)
    await task
