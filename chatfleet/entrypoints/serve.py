"""`chatfleet serve`: the OpenAI-compatible server on one engine, with graceful shutdown.

SIGTERM: /ready turns 503 and new requests get 503 at once; in-flight requests finish for up to
--shutdown-timeout; then the process exits 0. If the engine dies, in-flight requests get an
error, /health fails, and the process exits 1 so a supervisor restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time

from chatfleet.config import CacheConfig, EngineConfig, SchedulerConfig
from chatfleet.server.config import ServerConfig

logger = logging.getLogger("chatfleet.serve")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]i?B?)?$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'4GiB', '512MiB', '4' (GiB, like vLLM's VLLM_CPU_KVCACHE_SPACE) -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = (m.group(2) or "G")[0].upper()
    return int(float(m.group(1)) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit])


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--kv-cache-memory", type=parse_bytes, default=parse_bytes("2GiB"))
    p.add_argument("--no-enable-prefix-caching", action="store_true")
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-queue-len", type=int, default=256)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument(
        "--step-trace",
        default=None,
        metavar="PATH",
        help="append every engine step's timing and shape to PATH as JSON lines ({pid} is "
        "replaced by the process id; see chatfleet plan calibrate --trace)",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads (default: all this process may use)",
    )


def configs(args: argparse.Namespace) -> tuple[EngineConfig, ServerConfig]:
    threads = {} if args.num_threads is None else {"num_threads": args.num_threads}
    engine = EngineConfig(
        model=args.model,
        device=args.device,
        weight_format=args.weight_format,
        cache=CacheConfig(
            kv_cache_memory_bytes=args.kv_cache_memory,
            enable_prefix_caching=not args.no_enable_prefix_caching,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
        ),
        step_trace=args.step_trace,
        **threads,
    )
    names = tuple(args.served_model_name or ["SmolLM2-135M-Instruct"])
    server = ServerConfig(
        model_names=names,
        api_key=args.api_key,
        max_num_seqs=args.max_num_seqs,
        max_queue_len=args.max_queue_len,
        request_timeout_s=args.request_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    return engine, server


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chatfleet.engine.async_engine import AsyncEngine
    from chatfleet.server.app import build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine_config, server_config = configs(args)
    engine = AsyncEngine(engine_config)
    app = build_app(engine, server_config)
    state = app.state.chatfleet
    exit_code = 0

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if state.draining:  # a second signal: stop now
                super().handle_exit(sig, frame)
                return
            state.draining = True
            logger.info("signal %s: draining %d in-flight requests", sig, state.num_in_flight)
            loop.call_soon_threadsafe(lambda: loop.create_task(drain()))

    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = Server(config)

    async def drain() -> None:
        deadline = time.monotonic() + server_config.shutdown_timeout_s
        while state.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        server.should_exit = True

    async def watch_engine() -> None:
        nonlocal exit_code
        while not server.should_exit:
            if engine.is_dead:
                logger.error("engine died: %r; exiting", engine.dead_error)
                exit_code = 1
                await asyncio.sleep(0.5)  # let in-flight responses deliver their errors
                server.should_exit = True
            await asyncio.sleep(0.1)

    async def main() -> None:
        watcher = asyncio.create_task(watch_engine())
        await server.serve()
        watcher.cancel()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        engine.shutdown()
        loop.close()
    return exit_code
