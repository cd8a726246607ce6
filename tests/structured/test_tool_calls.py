"""The tool-call text format, parsed whole and as a stream cut at every possible point."""

from __future__ import annotations

import json

import pytest

from chatfleet.structured.tool_calls import ToolCallStream, parse_calls, render_call

TWO_CALLS = (
    render_call("get_weather", '{"city": "Paris"}')
    + "\n"
    + render_call("add", '{"a": 1, "b": {"c": "}\\n</tool_call>"}}')
)


def _assemble(pieces: list[str]) -> tuple[str, list[dict]]:
    """What the `openai` SDK rebuilds from the deltas: content, and calls merged by index."""
    stream = ToolCallStream()
    content, calls = "", {}
    for k, piece in enumerate(pieces):
        delta = stream.feed(piece, is_last=k == len(pieces) - 1)
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            slot = calls.setdefault(call["index"], {"name": "", "arguments": "", "id": None})
            if "id" in call:
                assert slot["id"] is None, "a call's id is sent once"
                slot["id"], slot["name"] = call["id"], call["function"]["name"]
            slot["arguments"] += call["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


def test_parse_finds_each_call_and_the_text_before():
    content, calls = parse_calls("Let me check.\n" + TWO_CALLS)
    assert content == "Let me check."
    assert [c.name for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[1].arguments) == {"a": 1, "b": {"c": "}\n</tool_call>"}}
    assert len({c.call_id for c in calls}) == 2


def test_text_without_calls_is_content_and_a_cut_call_is_the_last_call():
    assert parse_calls("Just words.") == ("Just words.", [])
    cut = render_call("add", '{"a": 1, "b": 2}')[: -len("2}}\n</tool_call>")]
    content, calls = parse_calls(TWO_CALLS + "\n" + cut)
    assert content is None
    assert [(c.name, c.arguments) for c in calls[:2]] == [
        (c.name, c.arguments) for c in parse_calls(TWO_CALLS)[1]
    ]
    assert (calls[2].name, calls[2].arguments) == ("add", '{"a": 1, "b": ')
    # A cut opening tag is text: no call has begun.
    assert parse_calls("<tool_call>\n{") == ("<tool_call>\n{", [])


@pytest.mark.parametrize("args", ['{"a": 1}', '{"a": {"b": 2}}'])
@pytest.mark.parametrize("num_cut", range(1, len("}\n</tool_call>")))
def test_a_call_cut_in_its_closing_tag_keeps_its_whole_arguments(args, num_cut):
    """The markup after whole arguments is never part of them, however much of it came;
    a "}" that may close either the arguments or the call counts as what the JSON needs."""
    text = render_call("add", args)[:-num_cut]
    (call,) = parse_calls(text)[1]
    assert call.arguments == args
    _, (streamed,) = _assemble([text[:-3], text[-3:]])
    assert streamed["arguments"] == args


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_a_stream_in_any_pieces_reassembles_to_the_whole(size):
    text = "Checking.\n" + TWO_CALLS
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    content, calls = _assemble(pieces)
    expected_content, expected = parse_calls(text)
    assert content.strip() == expected_content
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.name, c.arguments) for c in expected]
    assert all(c["id"].startswith("call_") for c in calls)


def test_a_lone_angle_bracket_in_text_is_not_held_forever():
    content, calls = _assemble(["a < b and <tool", "s> are fine"])
    assert content == "a < b and <tools> are fine" and calls == []
