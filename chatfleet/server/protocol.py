"""OpenAI request schemas and their translation into engine SamplingParams.

Pydantic checks types (a string where a number belongs is a 400 naming the field) and
refuses fields this server does not implement; SamplingParams checks values, so the limits
live in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from chatfleet.errors import InvalidRequestError
from chatfleet.sampling_params import MAX_PROMPTS, Grammar, SamplingParams
from chatfleet.structured.grammars import (
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from chatfleet.structured.tool_calls import FunctionTool

Number = StrictInt | float


class _Base(BaseModel):
    # NOTE: a field this server does not implement is a 400 naming it, never silently
    # dropped (a client relying on it would get a wrong answer); types are strict.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class StreamOptions(_Base):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Base):
    name: Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Base):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextPart(_Base):
    type: Literal["text"]
    text: StrictStr


FunctionName = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(_Base):
    name: FunctionName
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(_Base):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionCall(_Base):
    name: FunctionName
    arguments: StrictStr  # JSON text


class ToolCallItem(_Base):
    id: StrictStr
    type: Literal["function"]
    function: FunctionCall


class NamedFunction(_Base):
    name: FunctionName


class NamedToolChoice(_Base):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(_Base):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallItem] | None = None  # an assistant's past calls
    tool_call_id: StrictStr | None = None  # a tool message: the call it answers
    refusal: StrictStr | None = None  # echoed back by clients that resend a reply

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ContinueFrom(_Base):
    """A reply begun on another replica (the router resuming a stream whose replica died):
    its tokens so far, and how many characters of its text the client already has."""

    token_ids: Annotated[list[StrictInt], Field(min_length=1)]
    sent_chars: Annotated[StrictInt, Field(ge=0)] = 0


class SamplingFields(_Base):
    model: StrictStr | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    repetition_penalty: Number | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    n: StrictInt = 1
    user: StrictStr | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = 0
    response_format: ResponseFormat | None = None
    logit_bias: dict[StrictStr, Number] | None = None  # token id (as a string) -> bias
    cache_salt: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    # The router's extensions (it strips them from what its clients send): every chunk of a
    # stream carries the token ids it adds; the reply continues one begun elsewhere.
    chatfleet_token_ids: StrictBool = False
    chatfleet_continue: ContinueFrom | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_common(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed with stream=true", param="stream_options"
            )

    def grammar(self) -> Grammar | None:
        """The grammar response_format asks for (None: free text)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return Grammar(json_object_grammar(), "response_format")
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise InvalidRequestError(
                "response_format.json_schema.schema is required with type json_schema",
                param="response_format.json_schema",
            )
        schema = json_schema_grammar(fmt.json_schema.schema_, bool(fmt.json_schema.strict))
        return Grammar(schema, "response_format.json_schema.schema")

    def token_bias(self) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        bias = {}
        for key, value in self.logit_bias.items():
            if not key.isdigit():
                raise InvalidRequestError(
                    f"logit_bias: keys are token ids, got {key!r}", param="logit_bias"
                )
            bias[int(key)] = float(value)
        return bias

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Engine parameters; OpenAI defaults where a field is absent. Raises on bad values."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        values: dict[str, Any] = {
            "n": self.n,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": self.top_k or 0,
            "min_p": self.min_p or 0.0,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "repetition_penalty": 1.0
            if self.repetition_penalty is None
            else self.repetition_penalty,
            "seed": self.seed,
            "stop": stop,
            "stop_token_ids": self.stop_token_ids or [],
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "logprobs": logprobs,
            "cache_salt": self.cache_salt,
            "logit_bias": self.token_bias(),
            "grammar": self.grammar(),
            "continue_token_ids": self.chatfleet_continue.token_ids
            if self.chatfleet_continue
            else [],
        }
        if max_tokens is not None:
            values["max_tokens"] = max_tokens
        return SamplingParams(**values)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    def function_tools(self) -> list[FunctionTool]:
        return [
            FunctionTool(
                t.function.name,
                t.function.description or "",
                t.function.parameters or {"type": "object", "properties": {}},
                bool(t.function.strict),
            )
            for t in self.tools or []
        ]

    def tool_mode(self) -> str | None:
        """How tools constrain the reply: None (they do not), "auto", "required", or the
        name of the function that must be called."""
        choice = self.tool_choice
        if not self.tools or choice == "none":
            return None
        if isinstance(choice, NamedToolChoice):
            return choice.function.name
        return choice or "auto"

    def check_common(self) -> None:
        super().check_common()
        names = [t.function.name for t in self.tools or []]
        if self.tool_choice not in (None, "none") and not names:
            raise InvalidRequestError("tool_choice requires tools", param="tool_choice")
        if len(set(names)) != len(names):
            raise InvalidRequestError("tools: function names must be unique", param="tools")
        mode = self.tool_mode()
        if mode not in (None, "auto", "required") and mode not in names:
            raise InvalidRequestError(
                f"tool_choice: no tool named {mode!r} in tools", param="tool_choice"
            )
        fmt = self.response_format
        if mode is not None and fmt is not None and fmt.type != "text":
            raise InvalidRequestError(
                "response_format other than text cannot be combined with tools that may be "
                "called; use tool_choice none, or one of the two",
                param="response_format",
            )

    def grammar(self) -> Grammar | None:
        mode = self.tool_mode()
        if mode is None:
            return super().grammar()
        parallel = self.parallel_tool_calls is not False
        return Grammar(tool_call_grammar(self.function_tools(), mode, parallel), "tools")

    def field_names(self) -> dict[str, str]:
        """The request field each engine parameter came from, for errors the engine raises."""
        names = {"prompt": "messages", "logprobs": "top_logprobs"}
        if self.max_completion_tokens is not None:
            names["max_tokens"] = "max_completion_tokens"
        return names

    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: StrictInt | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each one engine request per choice; at most MAX_PROMPTS."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        if len(p) > MAX_PROMPTS:
            raise InvalidRequestError(
                f"at most {MAX_PROMPTS} prompts per request, got {len(p)}", param="prompt"
            )
        return list(p)  # type: ignore[arg-type]
