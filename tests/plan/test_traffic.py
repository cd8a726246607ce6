"""What the simulator is asked, taken from a real bench run (chatfleet/plan/traffic.py)."""

from __future__ import annotations

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.workload import WorkloadParams, build_messages, build_workload
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.plan.traffic import prompts_from_bench


def test_prompts_from_bench_are_the_runs_templated_prompts():
    """The bench's workload rebuilt from a result's config gives each session's real prompt
    tokens; a session whose count differs from the server's keeps made-up ones."""
    tok = Tokenizer.from_model_path(None)
    config = {"dataset": "sharegpt", "num_prompts": 3, "seed": 7, "max_tokens": 16}
    sessions = build_workload(WorkloadParams(**config), lambda: tok)
    ids = [tok.apply_chat_template(build_messages(s, 0, [])) for s in sessions]
    counted = [len(ids[0]), len(ids[1]), len(ids[2]) + 1]  # the server counted one more here
    records = [
        RequestRecord(i, 0, float(i), 1.0, (0.5,), 16, 200, prompt_tokens=n, completion_tokens=9)
        for i, n in enumerate(counted)
    ]
    shapes = prompts_from_bench(config, records, lambda: tok)
    assert [s[0].num_new_prompt_tokens for s in shapes] == counted
    assert [s[0].num_output_tokens for s in shapes] == [9, 9, 9]
    assert shapes[0][0].new_prompt_token_ids == tuple(ids[0])
    assert shapes[1][0].new_prompt_token_ids == tuple(ids[1])
    assert shapes[2][0].new_prompt_token_ids is None
