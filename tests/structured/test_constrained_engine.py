"""Grammar-constrained generation in the engine, on the real model: outputs validate through
preemption, n > 1 and seeds; a dead end fails only its own request; logit_bias moves tokens."""

from __future__ import annotations

import json

import jsonschema
import pytest

from chatfleet.bench.json_schemas import SCHEMAS
from chatfleet.config.engine_config import CacheConfig
from chatfleet.sampling_params import Grammar, SamplingParams
from chatfleet.structured.grammars import json_schema_grammar, tool_call_grammar
from chatfleet.structured.tool_calls import FunctionTool, parse_calls
from tests.conftest import make_llm


def _prompt(llm, text: str) -> list[int]:
    return llm.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def _schema_params(case, **kw) -> SamplingParams:
    kw.setdefault("max_tokens", 300)
    grammar = Grammar(json_schema_grammar(case.schema, strict=True), "response_format")
    return SamplingParams(grammar=grammar, **kw)


def _valid(case, text: str) -> None:
    jsonschema.validate(json.loads(text), case.schema)


def test_every_schema_validates_with_four_sampled_choices(llm):
    prompts = [_prompt(llm, c.prompt + " Reply in JSON.") for c in SCHEMAS]
    params = [_schema_params(c, temperature=0.8, n=4, seed=7) for c in SCHEMAS]
    for case, out in zip(SCHEMAS, llm.generate(prompts, params), strict=True):
        assert len(out.outputs) == 4
        for choice in out.outputs:
            assert choice.finish_reason == "stop", (case.name, choice.text)
            _valid(case, choice.text)


def test_a_preempted_constrained_request_resumes_its_grammar():
    # 16 blocks of 16 tokens for 6 requests of ~300 tokens: most get preempted and recomputed.
    tight = make_llm(cache=CacheConfig(num_blocks_override=16, enable_prefix_caching=False))
    cases = SCHEMAS[:6]
    prompts = [_prompt(tight, c.prompt + " Reply in JSON.") for c in cases]
    params = [_schema_params(c, temperature=0.8, seed=3, max_tokens=120) for c in cases]
    outs = tight.generate(prompts, params)
    assert tight.engine.scheduler.num_preemptions > 0
    for case, out in zip(cases, outs, strict=True):
        choice = out.outputs[0]
        if choice.finish_reason == "length":  # cut short: a prefix of a valid document
            continue
        _valid(case, choice.text)
    assert sum(o.outputs[0].finish_reason == "stop" for o in outs) >= 3


def test_a_seed_reproduces_a_constrained_sample(llm):
    case = SCHEMAS[2]
    prompt = _prompt(llm, case.prompt)
    params = _schema_params(case, temperature=1.0, seed=11)
    first, again = (llm.generate([prompt], [params])[0].outputs[0].text for _ in range(2))
    assert first == again
    _valid(case, first)


def test_a_grammar_dead_end_fails_its_request_and_the_batch_goes_on(llm):
    # The grammar allows exactly `"a"` then the end; min_tokens forbids ending that early,
    # so no token is left: a dead end.
    stuck = SamplingParams(
        grammar=Grammar('start: "\\"a\\""\n', "response_format"), min_tokens=10, max_tokens=20
    )
    normal = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = _prompt(llm, "Say something.")
    dead, alive = llm.generate([prompt, prompt], [stuck, normal])
    assert dead.outputs[0].finish_reason == "error"
    assert "grammar" in (dead.outputs[0].error or "")
    assert dead.outputs[0].text == '"a"'  # nothing after the refused token
    assert alive.outputs[0].finish_reason == "length" and len(alive.outputs[0].token_ids) == 12


def test_required_tool_calls_validate_against_their_function(llm):
    tools = [
        FunctionTool(
            "get_weather",
            "Weather in a city",
            {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            strict=True,
        ),
        FunctionTool(
            "add",
            "Add two numbers",
            {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
            strict=True,
        ),
    ]
    schemas = {t.name: t.parameters for t in tools}
    grammar = Grammar(tool_call_grammar(tools, "required", parallel=False), "tools")
    params = SamplingParams(grammar=grammar, temperature=0.9, n=8, seed=5, max_tokens=80)
    out = llm.generate([_prompt(llm, "What is 2 plus 3, and is it sunny in Oslo?")], [params])
    for choice in out[0].outputs:
        assert choice.finish_reason == "stop", choice.text
        content, calls = parse_calls(choice.text)
        assert content is None and len(calls) == 1
        jsonschema.validate(json.loads(calls[0].arguments), schemas[calls[0].name])


@pytest.mark.parametrize("bias", [100.0, -100.0])
def test_logit_bias_moves_the_greedy_token(llm, bias):
    prompt = _prompt(llm, "What is the capital of France?")
    greedy = llm.generate([prompt], [SamplingParams(temperature=0, max_tokens=1)])[0]
    top = greedy.outputs[0].token_ids[0]
    target = top if bias < 0 else llm.tokenizer.encode(" zebra")[0]
    params = SamplingParams(temperature=0, max_tokens=1, logit_bias={target: bias})
    token = llm.generate([prompt], [params])[0].outputs[0].token_ids[0]
    assert (token == target) if bias > 0 else (token != target)
