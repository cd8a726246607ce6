"""Grammar sources, in llguidance's Lark dialect, for what a request may constrain.

    response_format json_object        -> any JSON object
    response_format json_schema        -> that schema (`strict`: unknown keywords are an error)
    tools + tool_choice                -> tool calls in the format of `tool_calls.py`:
        required / a named function       only calls (one, or several with parallel_tool_calls)
        auto                              free text, or text up to a call and then only calls

JSON is written with fixed separators (", " and ": ") and no free whitespace: a model cannot
loop on newlines inside an object, and the tool-call parser can rely on the layout.
"""

from __future__ import annotations

import json
from typing import Any

from chatfleet.structured.tool_calls import CALL_CLOSE, CALL_OPEN, FunctionTool, call_head

# llguidance's JSON options, carried inside each schema (it reads them from "x-guidance").
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ANY_TEXT = r"/(.|\n)*/"


def _inline(schema: dict[str, Any], strict: bool) -> str:
    options = {**_JSON_LAYOUT, "lenient": not strict}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def _literal(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Lark string literal


def json_object_grammar() -> str:
    return "start: json\njson: " + _inline({"type": "object"}, strict=False) + "\n"


def json_schema_grammar(schema: dict[str, Any], strict: bool) -> str:
    return "start: json\njson: " + _inline(schema, strict) + "\n"


def tool_call_grammar(tools: list[FunctionTool], choice: str, parallel: bool) -> str:
    """`choice`: "auto", "required", or the name of the one function to call."""
    named = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    lines = ["%llguidance {}"]
    bodies = []
    for i, tool in enumerate(named):
        head = call_head(tool.name)[len(CALL_OPEN) :]
        args = _inline(tool.parameters, tool.strict)
        lines.append(f"fn_{i}: {_literal(head)} {args} {_literal(CALL_CLOSE)}")
        bodies.append(f"fn_{i}")
    lines.append("body: " + " | ".join(bodies))
    lines.append(f"call: {_literal(CALL_OPEN)} body")
    more = ' ("\\n" call)*' if parallel and choice in ("auto", "required") else ""
    if choice == "auto":
        # Text that never spells the opening tag, or text up to the first tag, then calls.
        lines.append(f"start: TEXT | TEXT_THEN_CALL body{more}")
        lines.append(f"TEXT: {_ANY_TEXT} & ~/(.|\\n)*{CALL_OPEN}(.|\\n)*/")
        lines.append(f"TEXT_THEN_CALL: /(.|\\n)*{CALL_OPEN}/ & ~/(.|\\n)*{CALL_OPEN}(.|\\n)+/")
    else:
        lines.append(f"start: call{more}")
    return "\n".join(lines) + "\n"
