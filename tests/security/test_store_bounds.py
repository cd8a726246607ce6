"""What the gateway's database holds stays within its bounds under hostile input: a key
limit past the column's range is a 400, never a 500; parallel writes of one user cannot each
pass the storage quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gateway.conftest import auth, launch_gateway, make_key
from tests.server_process import ServerProcess, free_port


@pytest.fixture
def bare_gateway(tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    """A gateway whose upstream is a closed port: these routes never reach it."""
    started: list[ServerProcess] = []

    def make(db_url: str, *args: str) -> ServerProcess:
        gw = launch_gateway(tmp_path, f"http://127.0.0.1:{free_port()}", db_url, *args)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def test_key_limits_past_the_column_range_are_a_400(bare_gateway, db_url):
    admin = make_key(db_url, "root", admin=True)
    gw = bare_gateway(db_url)
    for field in ("rpm", "tpm", "max_streams"):
        for value in (2**31, 2**63, 10**30):
            r = httpx.post(
                f"{gw.base_url}/api/keys",
                json={"user": "dave", field: value},
                headers=auth(admin),
                timeout=10,
            )
            assert r.status_code == 400, (field, value, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == field
        largest = {"user": "dave", field: 2**31 - 1}
        r = httpx.post(f"{gw.base_url}/api/keys", json=largest, headers=auth(admin), timeout=10)
        assert r.status_code == 201 and r.json()[field] == 2**31 - 1, r.text


def test_parallel_writes_cannot_pass_the_storage_quota_together(bare_gateway, db_url):
    """Each conversation fits the quota alone; sent at once, only as many as fit are kept."""
    key = make_key(db_url, "mallory", rpm=10_000)
    gw = bare_gateway(db_url, "--max-stored-bytes-per-user", "5000B")
    url = f"{gw.base_url}/api/conversations"

    def create(_: int) -> int:
        body = {"system_prompt": "x" * 1000}
        return httpx.post(url, json=body, headers=auth(key), timeout=30).status_code

    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(create, range(24)))
    assert sorted(set(codes)) == [201, 413] and codes.count(201) == 5, codes
    listed = httpx.get(url, headers=auth(key), timeout=10).json()["data"]
    assert len(listed) == 5
