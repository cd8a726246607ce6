"""C++ CPU kernels under chatfleet/csrc, compiled on first use and cached by torch.

The build takes about a minute per kernel on 2 cores and lands in ~/.cache/torch_extensions;
without a compiler (or on a CPU lacking the instructions) `load()` returns None and callers
fall back to pure-torch paths.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)
_CSRC = os.path.join(os.path.dirname(__file__), "..", "csrc")
_num_threads = 1


def set_num_threads(num_threads: int) -> None:
    """Threads the C++ kernels may use (they take it per call, like torch's own setting).

    NOTE: on the small VMs this runs on, waking a second core costs tens of microseconds, so
    each kernel uses one thread when its work is small (see kMin*PerThread in csrc/).
    """
    global _num_threads
    _num_threads = max(1, num_threads)


def num_threads() -> int:
    return _num_threads


def cpu_has(flag: str) -> bool:
    """True when /proc/cpuinfo lists the ISA flag (Linux); False elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def _headers_flag() -> str:
    """A define carrying the csrc headers' digest: torch rebuilds a JIT extension when its
    sources or flags change, and does not look at the headers they include."""
    digest = hashlib.sha1()
    for header in sorted(glob.glob(os.path.join(_CSRC, "*.h"))):
        with open(header, "rb") as f:
            digest.update(f.read())
    return f"-DCHATFLEET_HEADERS={digest.hexdigest()[:12]}"


# A build takes about a minute; a lock this old was left by a build that was killed.
_STALE_LOCK_S = 900.0


def _clear_stale_lock(build_dir: str) -> None:
    """Remove a build lock left behind by a killed build.

    NOTE: torch's JIT build takes a lock file in the build directory and waits for it to go
    away, forever; a process killed while building (a server stopped during startup) leaves
    it, and every later load of the kernel then hangs.
    """
    lock = os.path.join(build_dir, "lock")
    try:
        age_s = time.time() - os.path.getmtime(lock)
    except OSError:
        return
    if age_s > _STALE_LOCK_S:
        logger.warning("removing a stale kernel build lock (%.0f s old): %s", age_s, lock)
        with contextlib.suppress(OSError):
            os.remove(lock)


@functools.cache
def load(name: str, *, requires: tuple[str, ...] = ()) -> Any | None:
    """Build (once) and import chatfleet/csrc/{name}.cpp; None when it cannot run here."""
    missing = [flag for flag in requires if not cpu_has(flag)]
    if missing:
        logger.info("kernel %s needs %s; using the torch fallback", name, ", ".join(missing))
        return None
    try:
        from torch.utils.cpp_extension import _get_build_directory
        from torch.utils.cpp_extension import load as build

        _clear_stale_lock(_get_build_directory(f"chatfleet_{name}", verbose=False))
        return build(
            name=f"chatfleet_{name}",
            sources=[os.path.abspath(os.path.join(_CSRC, f"{name}.cpp"))],
            # Vectorized for the build machine; AMX tiles are never emitted by the compiler.
            # NOTE: no -ffast-math and no FMA contraction: the kernels write their FMAs out, and
            # the compiler must not round the same inline function differently in two kernels
            # (the fused decode step has to match the per-layer ops bit for bit).
            extra_cflags=[
                "-O3",
                "-march=native",
                "-ffp-contract=off",
                "-fopenmp",
                _headers_flag(),
            ],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler / headers
        logger.warning("kernel %s unavailable (%s); using the torch fallback", name, e)
        return None
