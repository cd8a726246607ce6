"""The JIT kernel build's housekeeping (chatfleet/model/kernels.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

from chatfleet.model import kernels


def _build_and_die(build_dir: str, building) -> None:
    # What a server killed mid-build leaves: torch's lock file, and our flock held until death.
    with kernels._build_lock(build_dir):
        Path(build_dir, "lock").touch()
        building.set()
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_build_killed_midway_does_not_block_the_next(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    building = ctx.Event()
    child = ctx.Process(target=_build_and_die, args=(str(tmp_path), building))
    child.start()
    assert building.wait(60)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert (tmp_path / "lock").exists()  # torch would wait on this forever

    entered = threading.Event()

    def next_build() -> None:
        with kernels._build_lock(str(tmp_path)):
            entered.set()

    t = threading.Thread(target=next_build, daemon=True)
    t.start()
    assert entered.wait(30), "the next build waited on the killed build's lock"
    assert not (tmp_path / "lock").exists()


def test_a_live_build_is_waited_for(tmp_path: Path) -> None:
    order: list[str] = []
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with kernels._build_lock(str(tmp_path)):
            held.set()
            release.wait(30)
            order.append("first done")

    def second() -> None:
        with kernels._build_lock(str(tmp_path)):
            order.append("second in")

    a = threading.Thread(target=first, daemon=True)
    a.start()
    assert held.wait(30)
    b = threading.Thread(target=second, daemon=True)
    b.start()
    b.join(0.5)
    assert order == []  # flock is per open file: a second open in the same process waits too
    release.set()
    a.join(30)
    b.join(30)
    assert order == ["first done", "second in"]


def test_every_registered_kernel_has_a_source() -> None:
    for name in kernels.KERNELS:
        assert os.path.exists(os.path.join(kernels._CSRC, f"{name}.cpp"))


def test_the_headers_digest_is_of_the_tree_being_built(tmp_path: Path) -> None:
    # A benchmark builds another tree's kernel beside this one's: torch only rebuilds when the
    # flags change, so the digest must follow that tree's headers, not this one's.
    before, after = tmp_path / "before", tmp_path / "after"
    for tree, body in (
        (before, "constexpr int kAhead = 16;\n"),
        (after, "constexpr int kAhead = 32;\n"),
    ):
        tree.mkdir()
        (tree / "attention.h").write_text(body)
    assert kernels._headers_flag(str(before)) != kernels._headers_flag(str(after))
    (after / "attention.h").write_text("constexpr int kAhead = 16;\n")
    assert kernels._headers_flag(str(before)) == kernels._headers_flag(str(after))
    assert kernels._headers_flag(str(before)) != kernels._headers_flag(kernels._CSRC)
