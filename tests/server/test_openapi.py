"""The server's OpenAPI document: valid, every $ref resolving, and a schema-driven fuzz run
over every operation finding no 5xx and no hang."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server_process import ServerProcess, start_server


@pytest.fixture(scope="module")
def small_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A short context bounds what any valid fuzzed request can make the engine do."""
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_server(tmp, "--max-model-len", "160", "--max-num-seqs", "8")
    yield srv
    srv.stop()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves_and_every_body_schema_is_valid(server):
    doc = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    refs = set(_refs(doc))
    assert "#/components/schemas/ToolDefinition" in refs  # the nested models are referenced
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        jsonschema.Draft202012Validator.check_schema(body["schema"])
    chat = _resolve(doc, "#/components/schemas/ChatMessage")
    assert {"tool_calls", "tool_call_id"} <= set(chat["properties"])
    fields = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    props = fields["application/json"]["schema"]["properties"]
    assert {"tools", "tool_choice", "parallel_tool_calls", "response_format", "logit_bias"} <= set(
        props
    )


def test_fuzzed_requests_never_get_a_5xx_or_hang(small_server):
    """Cases generated from the document for every operation (bodies that validate against
    it and bodies that do not); each must answer below 500 within the timeout."""
    schema = schemathesis.openapi.from_url(f"{small_server.base_url}/openapi.json")
    failures: list[str] = []
    num_cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=50,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case) -> None:
            nonlocal num_cases
            num_cases += 1
            response = case.call(timeout=60)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r}: {response.text}")

        run()
    assert num_cases >= 100, num_cases
    assert failures == []
