"""Structured output: grammars that every sampled token must keep valid (JSON objects, JSON
schemas, tool calls), the text format of tool calls, and the engine-side matchers and masks."""
