"""Optional dependencies: each is a pip extra of chatfleet, imported only where it is used.

postgres  psycopg      the gateway's PostgreSQL store (several gateway processes)
redis     redis        rate limits shared by several gateways
plots     matplotlib   `chatfleet bench plot`, `chatfleet plan --report`
ray       ray, pyyaml  `chatfleet up --backend ray` (chatfleet/ray_serve)
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature's optional dependency is not installed; the message says which extra."""


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (plots are written, never shown)."""
    matplotlib = require("matplotlib", "plots", "plotting")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; MissingExtraError naming the pip extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{feature} needs the `{module}` package: pip install 'chatfleet[{extra}]'"
        ) from e
