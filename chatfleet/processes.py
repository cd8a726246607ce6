"""Child processes that die with their parent, and the port checks before a start.

A supervisor killed with SIGKILL (an operator's `kill -9`, the OOM killer) cannot stop its
children; Linux's PR_SET_PDEATHSIG has the kernel send each child a SIGTERM then, so replicas
and routers never outlive what started them and never hold its ports for the next start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# NOTE: looked up now, not in the forked child, where loading a library is not safe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGTERM the child when this process dies (None
    where the platform cannot)."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # NOTE: the parent may have died between fork and prctl: then nobody will signal.
        if os.getppid() != parent:
            os._exit(1)

    return arm


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def taken_ports(host: str, ports: list[int]) -> list[int]:
    """The ports of `ports` something already listens on (or that cannot be bound)."""
    return [p for p in ports if not port_is_free(host, p)]
