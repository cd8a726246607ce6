"""C++ CPU kernels under chatfleet/csrc, compiled once and cached by torch.

A cold build takes 30-50 s per kernel on 2 cores (about 2 minutes for all) and lands in
~/.cache/torch_extensions. `make up` and `make test` build them ahead (`python -m
chatfleet.model.kernels`), so a server never builds while starting. Without a compiler (or on
a CPU lacking the instructions) `load()` returns None and callers fall back to pure-torch
paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import logging
import os
from collections.abc import Iterator
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


def _headers_flag(csrc: str) -> str:
    """A define carrying the csrc headers' digest: torch rebuilds a JIT extension when its
    sources or flags change, and does not look at the headers they include."""
    digest = hashlib.sha1()
    for header in sorted(glob.glob(os.path.join(csrc, "*.h"))):
        with open(header, "rb") as f:
            digest.update(f.read())
    return f"-DCHATFLEET_HEADERS={digest.hexdigest()[:12]}"


# Every kernel under csrc/ and the CPU flags it needs; `load()` and `build_all()` read it.
KERNELS: dict[str, tuple[str, ...]] = {
    "qlinear": ("avx512_vnni",),
    "paged_attention": (),
    "decode_step": ("avx512_vnni",),
    "sampling": ("avx512f",),
}


@contextlib.contextmanager
def _build_lock(build_dir: str) -> Iterator[None]:
    """Hold an flock on the build directory for the whole (torch) build.

    NOTE: torch's JIT build marks a build in progress with a plain lock file and waits for it to
    go away, forever; a process killed while building (a server stopped during startup) leaves
    it, and every later load of the kernel hangs. An flock dies with its process, so once we
    hold it no other chatfleet build is running and any torch lock file left there is stale.
    """
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "chatfleet.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released by close, or by the kernel on death
        stale = os.path.join(build_dir, "lock")
        if os.path.exists(stale):
            logger.warning("removing a kernel build lock left by a killed build: %s", stale)
            with contextlib.suppress(OSError):
                os.remove(stale)
        yield


@functools.cache
def load(name: str) -> Any | None:
    """Build (once) and import chatfleet/csrc/{name}.cpp; None when it cannot run here."""
    missing = [flag for flag in KERNELS[name] if not cpu_has(flag)]
    if missing:
        logger.info("kernel %s needs %s; using the torch fallback", name, ", ".join(missing))
        return None
    try:
        from torch.utils.cpp_extension import _get_build_directory

        with _build_lock(_get_build_directory(f"chatfleet_{name}", verbose=False)):
            return build_from(_CSRC, name, f"chatfleet_{name}")
    except Exception as e:  # no compiler / headers
        logger.warning("kernel %s unavailable (%s); using the torch fallback", name, e)
        return None


def build_from(csrc: str, name: str, module: str) -> Any:
    """Build {csrc}/{name}.cpp as the extension `module` and import it (torch caches the build
    by module name, sources and flags). `load` builds this tree's kernels; a benchmark may build
    another tree's under another name to compare the two in one process."""
    from torch.utils.cpp_extension import load as build

    return build(
        name=module,
        sources=[os.path.abspath(os.path.join(csrc, f"{name}.cpp"))],
        # Vectorized for the build machine; AMX tiles are never emitted by the compiler.
        # NOTE: no -ffast-math and no FMA contraction: the kernels write their FMAs out, and
        # the compiler must not round the same inline function differently in two kernels
        # (the fused decode step has to match the per-layer ops bit for bit).
        extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", _headers_flag(csrc)],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def amx_tiles() -> bool:
    """Whether this process may run the int8 kernel on AMX tiles: the CPU has them and Linux
    granted them (asked once, by the kernel; see csrc/tiles.h)."""
    qlinear = load("qlinear")
    return qlinear is not None and bool(qlinear.tiles_ready())


def build_all() -> dict[str, bool]:
    """Build every kernel this CPU can run, so that no server has to build one while starting
    (`make up` and `make test` run this once; a cached build is a no-op)."""
    return {name: load(name) is not None for name in KERNELS}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for kernel, ok in build_all().items():
        print(f"kernel {kernel}: {'built' if ok else 'unavailable, torch fallback'}")
