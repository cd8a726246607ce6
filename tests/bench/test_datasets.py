"""ShareGPT parsing: complete records of a cut-off JSON array, and conversation shaping."""

from __future__ import annotations

import json

from chatfleet.bench.datasets import _parse_record, iter_json_array


def test_iter_json_array_stops_at_the_cut_off_record():
    records = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(3)]
    text = json.dumps(records)
    cut = text[: text.rindex('"q2"')]  # the last record is truncated mid-way
    assert [r["id"] for r in iter_json_array(cut)] == [0, 1]
    assert [r["id"] for r in iter_json_array(text)] == [0, 1, 2]


def test_parse_record_keeps_human_first_conversations():
    good = {
        "id": "a",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
    }
    bad = {"id": "b", "conversations": [{"from": "gpt", "value": "hello"}]}
    conv = _parse_record(good)
    assert conv is not None and [t.role for t in conv.turns] == ["human", "gpt"]
    assert _parse_record(bad) is None
