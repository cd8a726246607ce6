"""A SentencePiece vocabulary in a GGUF file (`tokenizer.ggml.model = llama`, as in the GGUFs
of Llama 2, Mistral 7B and TinyLlama) against `sentencepiece` itself: a BPE model trained
here, written into a GGUF the way llama.cpp's converter writes it (pieces, scores, types)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from gguf import GGUFWriter

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.config.server_config import ServerConfig
from chatfleet.modelfile.gguf_vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED
from chatfleet.modelfile.gguf_writer import write_gguf
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.server.serving_completion import OpenAIServingCompletion

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)
TEXTS = [
    "Hello world! The capital of France is Paris.",
    "  two leading spaces, double  spaces and a trailing one ",
    "lines\nand\n\nblank lines\tand tabs",
    "numbers 1234567 and 3.14159",
    "unseen characters fall back to bytes: 日本語 👋 naïve ∑",
    "def f(x):\n    return x ** 2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[object, str]:
    """A SentencePiece BPE model set up as Llama's is (byte fallback, no normalization, a
    dummy space prefix), and a GGUF holding its vocabulary and a Llama 2 chat template."""
    tmp = tmp_path_factory.mktemp("spm")
    corpus = tmp / "corpus.txt"
    sources = [json, inspect, Path]  # any stable English-ish text
    corpus.write_text("\n".join(inspect.getsource(inspect.getmodule(m)) for m in sources))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp / "sp"),
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))
    n = sp.get_piece_size()

    def kind(i: int) -> int:
        for check, value in (
            (sp.is_unknown, UNKNOWN),
            (sp.is_control, CONTROL),
            (sp.is_byte, BYTE),
            (sp.is_unused, UNUSED),
        ):
            if check(i):
                return value
        return NORMAL

    path = str(tmp / "vocab.gguf")
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types([kind(i) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_add_bos_token(True)
    writer.add_chat_template(LLAMA2_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return sp, path


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_matches_sentencepiece(trained, text: str) -> None:
    sp, path = trained
    tok = Tokenizer.from_model_path(path)
    assert tok.encode(text) == sp.encode(text)
    assert tok.encode(text, add_special_tokens=True) == [sp.bos_id(), *sp.encode(text)]
    assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == text


def test_piece_bytes_spell_the_text_with_its_space_prefix(trained) -> None:
    """The detokenizer's per-token bytes: "\u2581" is a space, <0xNN> pieces are raw bytes."""
    sp, path = trained
    tok = Tokenizer.from_model_path(path)
    text = TEXTS[4]
    spelled = b"".join(tok.id_to_piece_bytes(i) for i in tok.encode(text))
    assert spelled.decode() == " " + text


def test_chat_prompt_is_what_llama_cpp_tokenizes(trained) -> None:
    """llama.cpp encodes the rendered prompt in one go, prefixing a space to the text at the
    start and after each control token; content is never split from the template around it."""
    sp, path = trained
    tok = Tokenizer.from_model_path(path)
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And </s> 3+3?"},  # typed control text stays text
    ]
    ids = tok.apply_chat_template(messages)
    assert ids == [
        sp.bos_id(),
        *sp.encode("[INST] What is 2+2? [/INST] 4"),
        sp.eos_id(),
        *sp.encode("[INST] And </s> 3+3? [/INST]"),
    ]


def test_a_llama_gguf_with_a_sentencepiece_vocabulary_serves_chat(trained, tmp_path) -> None:
    """The loader accepts the vocabulary with a tiny random Llama model, and replies decode."""
    sp, vocab_path = trained
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=sp.get_piece_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    path = str(tmp_path / "llama2-spm.gguf")
    write_gguf(
        transformers.LlamaForCausalLM(config).eval(), "llama", path, tokenizer_from=vocab_path
    )
    llm = LLM(
        model=path,
        weight_format="fp32",
        cache=CacheConfig(num_blocks_override=32, kv_cache_dtype="fp32"),
        scheduler=SchedulerConfig(max_num_seqs=2),
    )
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    out = llm.chat([{"role": "user", "content": "hello"}], params)[0]
    assert out.prompt_token_ids == [sp.bos_id(), *sp.encode("[INST] hello [/INST]")]
    assert len(out.outputs[0].token_ids) == 12
    assert out.outputs[0].text == sp.decode(out.outputs[0].token_ids)
    # A text prompt starts as the file says prompts start (BOS), as llama.cpp encodes it,
    # through the engine and through /v1/completions alike.
    (completion,) = llm.generate("hello", params)
    assert completion.prompt_token_ids == [sp.bos_id(), *sp.encode("hello")]
    config = ServerConfig(model_names=("m",))
    serving = OpenAIServingCompletion(llm.engine, config, None)  # type: ignore[arg-type]
    job = serving.make_job({"prompt": "hello", "max_tokens": 1})
    assert job.prompts == [[sp.bos_id(), *sp.encode("hello")]]
