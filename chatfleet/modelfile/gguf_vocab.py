"""GGUF vocabularies as `tokenizers` models, one builder per `tokenizer.ggml.model`.

llama.cpp stores a vocabulary as pieces with types (and scores, or merges); these functions
turn that into the `tokenizers.Tokenizer` that would encode text the same way. Added tokens,
BOS and the chat template are the caller's (`Tokenizer.from_gguf_metadata`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

# llama.cpp token types (`tokenizer.ggml.token_type`)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split patterns for BPE pre-tokenizers that HF writes as Split(regex) + ByteLevel(no regex).
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = _LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def _gpt2_pre() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_gpt2_pre() -> pre_tokenizers.PreTokenizer:
    # NOTE: matches llama.cpp's regex list ["\p{N}", <gpt2 regex>]: every digit is its own word.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_pre()])


def _split_pre(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
    def build() -> pre_tokenizers.PreTokenizer:
        split = pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return pre_tokenizers.Sequence([split, byte_level])

    return build


# `tokenizer.ggml.pre` -> (pre-tokenizer factory, BPE ignore_merges).
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "default": (_gpt2_pre, False),
    "gpt2": (_gpt2_pre, False),
    "smollm": (_digits_gpt2_pre, False),
    "starcoder": (_digits_gpt2_pre, False),
    "refact": (_digits_gpt2_pre, False),
    "llama-bpe": (_split_pre(_LLAMA3_PATTERN), True),
    "qwen2": (_split_pre(_QWEN2_PATTERN), False),
}


def _byte_level_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tokenizers.Tokenizer:
    """`tokenizer.ggml.model = gpt2`: byte-level BPE with the file's merges."""
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}, known: {[*PRE_TOKENIZERS]}")
    build_pre, ignore_merges = PRE_TOKENIZERS[pre]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    hf = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges)
    )
    hf.pre_tokenizer = build_pre()
    hf.decoder = decoders.ByteLevel()
    return hf


def _sentencepiece_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tokenizers.Tokenizer:
    """`tokenizer.ggml.model = llama`: a SentencePiece BPE vocabulary (Llama 2, Mistral 7B,
    TinyLlama) stored as pieces with scores and no merges.

    SentencePiece merges the adjacent pair whose merged piece scores highest; a BPE model whose
    merges are every split of every piece, ranked by that piece's score, does the same. Spaces
    are "\u2581", characters outside the vocabulary fall back to their <0xNN> byte pieces, and,
    as llama.cpp does, a space is prefixed to the text and to the text after each control token
    (a normalizer, which runs on each stretch of text between added tokens).
    """
    scores: list[float] = list(metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    ranked = []
    for i, (piece, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], vocab[right]))
    ranked.sort()
    merges = [(tokens[left], tokens[right]) for _, _, left, right in ranked]
    unk_id = next((i for i, kind in enumerate(types) if kind == UNKNOWN), None)
    hf = tokenizers.Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=None if unk_id is None else tokens[unk_id],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
    decode_steps: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if metadata.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
        decode_steps.append(decoders.Strip(" ", 1, 0))
    hf.normalizer = normalizers.Sequence(steps)
    hf.decoder = decoders.Sequence(decode_steps)
    return hf


# `tokenizer.ggml.model` -> builder(metadata, pieces, piece types).
BUILDERS: dict[str, Callable[[Mapping[str, Any], list[str], list[int]], tokenizers.Tokenizer]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}
