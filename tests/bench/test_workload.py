"""Workloads: multi-turn history, and seeded synthetic datasets."""

from __future__ import annotations

from chatfleet.bench.workload import (
    Session,
    TurnSpec,
    WorkloadParams,
    build_messages,
    build_workload,
    replay_lengths,
    request_for,
)


def _no_tokenizer():
    raise AssertionError("synthetic datasets must not load a tokenizer")


def test_turn_k_sends_the_whole_history_with_the_servers_answers():
    session = Session("c", (TurnSpec("q0", 5), TurnSpec("q1", 6), TurnSpec("q2", 7)), "sys")
    assert build_messages(session, 0, []) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q0"},
    ]
    request = request_for(session, 3, 2, ["a0", "a1"])
    assert request.messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "a0"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert (request.session_index, request.turn_index, request.max_tokens) == (3, 2, 7)
    assert request.conversation_id == "c"


def test_random_dataset_is_seeded_and_capped_by_max_tokens():
    params = WorkloadParams("random", 4, seed=1, max_tokens=8, input_len=12, output_len=50)
    sessions = build_workload(params, _no_tokenizer)
    assert sessions == build_workload(params, _no_tokenizer)
    assert len(sessions) == 4 and all(len(s.turns) == 1 for s in sessions)
    assert all(len(s.turns[0].user_text.split()) == 12 for s in sessions)
    assert all(s.turns[0].max_tokens == 8 for s in sessions)


def test_shared_prefix_groups_share_one_system_prompt_each():
    params = WorkloadParams("shared-prefix", 12, seed=0, input_len=5, prefix_len=40, num_groups=3)
    sessions = build_workload(params, _no_tokenizer)
    prefixes = {s.system_prompt for s in sessions}
    assert len(prefixes) == 3 and all(len(p.split()) == 40 for p in prefixes)
    assert len({s.turns[0].user_text for s in sessions}) == 12


def test_json_schema_requests_carry_their_schema_and_the_paired_prompts_do_not():
    schema = build_workload(WorkloadParams("json-schema", 12, max_tokens=64), _no_tokenizer)
    free = build_workload(WorkloadParams("json-prompts", 12, max_tokens=64), _no_tokenizer)
    # The same requests, but no prompt shared (the prefix cache would favour the second run).
    texts = [s.turns[0].user_text for s in schema]
    assert [t[1:] for t in texts] == [s.turns[0].user_text[1:] for s in free]
    assert not set(texts) & {s.turns[0].user_text for s in free}
    formats = [s.turns[0].response_format for s in schema]
    names = {f["json_schema"]["name"] for f in formats if f is not None}
    assert None not in formats and len(names) == 10
    assert all(s.turns[0].response_format is None for s in free)
    body = request_for(schema[3], 3, 0, [])
    assert body.response_format == formats[3]


def test_replayed_lengths_set_each_turns_max_tokens():
    sessions = build_workload(WorkloadParams("json-prompts", 3, max_tokens=64), _no_tokenizer)
    replayed = replay_lengths(sessions, {(0, 0): 17, (2, 0): 40})
    assert [s.turns[0].max_tokens for s in replayed] == [17, 64, 40]
