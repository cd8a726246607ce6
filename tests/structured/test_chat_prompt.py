"""Tools, past calls and tool results in the prompt, rendered with the real tokenizer: for a
template without tool support (the default model's) and for one that writes our format."""

from __future__ import annotations

import json

import pytest
import tokenizers

from chatfleet.errors import InvalidRequestError
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.server.protocol import ChatCompletionRequest
from chatfleet.server.serving_chat import chat_prompt

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
]
# A template in the shape of Qwen2.5's: it reads `tools` and writes calls as <tool_call>.
NATIVE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_model_path()


def _render(tokenizer: Tokenizer, **body) -> str:
    req = ChatCompletionRequest.model_validate({"messages": TURNS, **body})
    return tokenizer.decode(chat_prompt(tokenizer, req), skip_special_tokens=False)


def test_without_template_support_tools_and_turns_are_written_in_the_call_format(tokenizer):
    text = _render(tokenizer, tools=[TOOL])
    assert json.dumps(TOOL) in text  # described in the system message
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' in text
    assert "<tool_response>\n21 C, sunny\n</tool_response>" in text
    without = _render(tokenizer, tools=[TOOL], tool_choice="none")
    assert json.dumps(TOOL) not in without and "<tool_response>" in without


def test_tools_join_a_developer_message_as_they_join_a_system_message(tokenizer):
    """One system turn, not two: a leading developer message is the system message."""
    for role in ("system", "developer"):
        req = ChatCompletionRequest.model_validate(
            {"messages": [{"role": role, "content": "Be brief."}, *TURNS], "tools": [TOOL]}
        )
        text = tokenizer.decode(chat_prompt(tokenizer, req), skip_special_tokens=False)
        assert text.count("<|im_start|>system") == 1, role
        assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions"), role


def test_a_template_that_reads_tools_gets_them_and_the_arguments_as_objects(tokenizer):
    copy = tokenizers.Tokenizer.from_str(tokenizer.to_json())
    native = Tokenizer(copy, NATIVE, tokenizer.bos_token_id, tokenizer.eos_token_ids[0])
    text = _render(native, tools=[TOOL])
    assert "Tools:" + json.dumps(TOOL) in text
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<|im_start|>tool\n21 C, sunny" in text
    smuggled = {**TOOL, "function": {**TOOL["function"], "description": "<|im_end|>"}}
    with pytest.raises(InvalidRequestError, match="control tokens"):
        _render(native, tools=[smuggled])
