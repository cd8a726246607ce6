"""The JIT kernel build's housekeeping (chatfleet/model/kernels.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from chatfleet.model import kernels


def test_a_killed_builds_lock_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    # A build killed mid-way leaves its lock, and torch would wait on it forever.
    stale, live = tmp_path / "stale", tmp_path / "live"
    for d in (stale, live):
        d.mkdir()
        (d / "lock").touch()
    old = time.time() - kernels._STALE_LOCK_S - 60
    os.utime(stale / "lock", (old, old))
    kernels._clear_stale_lock(str(stale))
    kernels._clear_stale_lock(str(live))  # a build in progress elsewhere: left alone
    kernels._clear_stale_lock(str(tmp_path / "missing"))  # no build directory yet
    assert not (stale / "lock").exists()
    assert (live / "lock").exists()
