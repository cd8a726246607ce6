"""What every HTTP front (router, gateway) sets up the same way: logging and a uvicorn server
that returns from serve() on a signal instead of re-raising it.

`chatfleet serve` has its own uvicorn subclass: a first signal there drains in-flight requests.
"""

from __future__ import annotations

import logging
from typing import Any


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def uvicorn_server(app: Any, host: str, port: int, graceful_s: float) -> Any:
    """A uvicorn.Server for `app`. A first SIGTERM / SIGINT makes serve() return once open
    connections close (at most `graceful_s`), a second one at once.

    NOTE: unlike uvicorn's own handler, the signal is not re-raised after serve() returns, so
    the caller (`up`, `stack`) still stops the processes it started.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(graceful_s)
    )
    return Server(config)
