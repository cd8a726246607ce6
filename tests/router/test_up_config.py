"""`chatfleet up`'s settings: the replica flags it passes on, and bad counts refused."""

from __future__ import annotations

import argparse

from chatfleet.entrypoints.cli import main
from chatfleet.entrypoints.router_cmd import add_up_args, autoscale_config, replica_config


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_up_args(parser)
    return parser.parse_args(list(argv))


def test_replica_threads_come_from_the_replica_args_first():
    assert replica_config(_args("--replica-args=--num-threads 4"), 9, None).engine.num_threads == 4
    assert replica_config(_args("--replica-threads", "3"), 9, None).engine.num_threads == 3
    replica = replica_config(_args("--replica-args", "--kv-cache-memory 1GiB"), 9, None)
    assert replica.engine.num_threads == 9 and replica.engine.cache.kv_cache_memory_bytes == 1 << 30


def test_autoscale_bounds_default_from_the_replica_count():
    scale = autoscale_config(_args("--replicas", "3", "--max-replicas", "5"))
    assert (scale.min_replicas, scale.max_replicas) == (3, 5)


def test_bad_replica_counts_are_one_line_errors(capsys):
    for argv in (["--replicas", "0"], ["--min-replicas", "3", "--max-replicas", "2"]):
        assert main(["up", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    assert main(["up", "--replica-args", "--kv-cache-memory lots"]) == 2
