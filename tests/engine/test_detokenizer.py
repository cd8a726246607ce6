"""IncrementalDetokenizer against the real SmolLM2 tokenizer, fed one token at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chatfleet.engine import detokenizer
from chatfleet.engine.detokenizer import IncrementalDetokenizer
from chatfleet.modelfile.tokenizer import Tokenizer

MULTI_BYTE = "Héllo 👋 世界! Ça va? 🎉🚀 日本語のテキスト — naïve café ∑∞ 🧑‍🚀 done"
STORY = "The answer is 42. END of story, the end."


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_model_path(None)


def make(
    tok: Tokenizer, stop: list[str] | None = None, include: bool = False, prompt: str = "Q: "
) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tok, tok.encode(prompt), stop or [], include, True)


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[list[str], str | None]:
    """Feeds ids one at a time until a stop matches; returns (deltas, matched stop)."""
    deltas = []
    for token_id in ids:
        delta, matched = detok.update([token_id])
        deltas.append(delta)
        if matched is not None:
            return deltas, matched
    return deltas, None


def test_multi_byte_one_token_at_a_time_equals_full_decode(tok: Tokenizer) -> None:
    ids = tok.encode(MULTI_BYTE)
    assert len(ids) > len(MULTI_BYTE.split())  # some characters span several tokens
    detok = make(tok)
    deltas, matched = stream(detok, ids)
    assert matched is None
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.flush() == tok.decode(ids) == MULTI_BYTE
    assert detok.output_text == MULTI_BYTE


def test_chat_prompt_context_and_special_tokens(tok: Tokenizer) -> None:
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    output_ids = [*tok.encode(" Sure 👍, here"), tok.eos_token_ids[0]]
    detok = IncrementalDetokenizer(tok, prompt_ids, [], False, True)
    deltas, _ = stream(detok, output_ids)
    assert "".join(deltas) + detok.flush() == tok.decode(output_ids) == " Sure 👍, here"
    keep = IncrementalDetokenizer(tok, prompt_ids, [], False, False)
    stream(keep, output_ids)
    keep.flush()
    assert keep.output_text == " Sure 👍, here<|im_end|>"


def test_incomplete_character_is_held_then_flushed(tok: Tokenizer) -> None:
    ids = tok.encode("ok 🎉")
    cut = next(n for n in range(len(ids), 0, -1) if tok.decode(ids[:n]).endswith("\ufffd"))
    detok = make(tok)
    deltas, _ = stream(detok, ids[:cut])
    assert "".join(deltas) == "ok"  # the partial emoji (and its space token) is not emitted
    tail = detok.flush()
    assert tail.endswith("\ufffd")
    assert detok.output_text == tok.decode(ids[:cut])


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("END of", "The answer is 42. "),  # spans the "ĠEND" and "Ġof" tokens
        ("swer", "The an"),  # inside one token
        ("42.", "The answer is "),  # one token per digit
        ("story, the", "The answer is 42. END of "),
    ],
)
def test_stop_string_truncates_and_never_leaks(tok: Tokenizer, stop: str, expected: str) -> None:
    detok = make(tok, [stop])
    deltas, matched = stream(detok, tok.encode(STORY))
    assert matched == stop and detok.matched_stop == stop
    assert "".join(deltas) == detok.output_text == expected
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert expected.startswith(emitted)  # no delta ever carries part of the stop string
    assert detok.flush() == ""
    assert detok.update(tok.encode(" more")) == ("", None)


def test_include_stop_str_in_output(tok: Tokenizer) -> None:
    detok = make(tok, ["END of"], include=True)
    deltas, matched = stream(detok, tok.encode(STORY))
    assert matched == "END of"
    assert "".join(deltas) == detok.output_text == "The answer is 42. END of"


def test_stop_inside_a_token_drops_the_rest_of_it(tok: Tokenizer) -> None:
    detok = make(tok, ["ns"], include=True)
    deltas, _ = stream(detok, tok.encode(STORY))
    assert detok.output_text == "The ans"


def test_earliest_completed_stop_wins_in_a_batch(tok: Tokenizer) -> None:
    detok = make(tok, ["story", "42", "answer is 42. END"])
    delta, matched = detok.update(tok.encode(STORY))
    assert (delta, matched) == ("The answer is ", "42")


def test_partial_stop_is_held_then_released(tok: Tokenizer) -> None:
    detok = make(tok, ["42!"])
    ids = tok.encode(STORY)
    deltas, matched = stream(detok, ids)
    assert matched is None
    four = tok.convert_ids_to_tokens(ids).index("4")
    assert deltas[four : four + 3] == ["", "", "42."]  # held until "." rules out "42!"
    assert "".join(deltas) + detok.flush() == STORY


def test_flush_returns_held_text(tok: Tokenizer) -> None:
    detok = make(tok, ["42!", "the end!!"])
    deltas, matched = stream(detok, tok.encode("answer 42"))
    assert matched is None and "".join(deltas) == "answer "
    assert detok.flush() == "42"
    assert detok.output_text == "answer 42"
    detok = make(tok, ["the end.!"])
    stream(detok, tok.encode(STORY))
    assert detok.output_text == "The answer is 42. END of story, "
    assert detok.flush() == "the end."
    assert detok.output_text == STORY


def test_module_does_not_import_torch() -> None:
    # Loaded by file path: the check is about this module, not whatever the package imports.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('detok', {detokenizer.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'torch' not in sys.modules and 'tokenizers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
