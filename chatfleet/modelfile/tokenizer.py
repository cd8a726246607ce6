"""Tokenizer and chat template, built from the model file.

Two sources: a GGUF file (vocabulary, merges and template live in its metadata) or a Hugging
Face directory with `tokenizer.json` (+ `tokenizer_config.json`). Either way the result wraps a
`tokenizers.Tokenizer`, so encoding runs in Rust.

Two encoders are kept, identical except for one flag: `_plain` treats special-token strings in
the input as ordinary text (everything a user typed), `_special` turns them into control ids
(text the chat template wrote). Keeping two objects avoids flipping a shared flag per call.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers
from tokenizers import AddedToken, processors

from chatfleet.errors import InvalidRequestError
from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.gguf_vocab import BUILDERS, CONTROL, NORMAL, USER_DEFINED
from chatfleet.modelfile.paths import resolve_model_path

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
# Tokens that chat templates use to close a turn; generation must stop on them as on EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_CHAR_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    # NOTE: jinja's own tojson HTML-escapes <>&, which would change what the model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    def fail(message: str) -> InvalidRequestError:
        return InvalidRequestError(message, param="messages")

    if not isinstance(messages, list) or not messages:
        raise fail("messages: must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise fail(f"messages[{i}]: must be an object with 'role' and 'content'")
        if message.get("role") not in CHAT_ROLES:
            raise fail(f"messages[{i}].role: must be one of {sorted(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise fail(f"messages[{i}].content: must be a string")
    return messages


class Tokenizer:
    """Text <-> token ids for one model, plus its chat template. Immutable after construction.

    The constructor takes ownership of `hf_tokenizer` (it sets its `encode_special_tokens`).
    """

    def __init__(
        self,
        hf_tokenizer: tokenizers.Tokenizer,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_id: int | None,
        end_token_ids: Sequence[int] = (),
    ) -> None:
        serialized = hf_tokenizer.to_str()
        self._plain = hf_tokenizer
        self._plain.encode_special_tokens = True
        self._special = tokenizers.Tokenizer.from_str(serialized)
        self._special.encode_special_tokens = False
        added = hf_tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, tok in added.items() if tok.special)
        self._special_texts = [added[i].content for i in sorted(self._special_ids)]
        self._control_ids = {added[i].content: i for i in self._special_ids}
        longest_first = sorted(self._special_texts, key=len, reverse=True)
        self._control_pattern = (
            re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
            if longest_first
            else None
        )
        decoder = json.loads(serialized).get("decoder")
        self._is_byte_level = "ByteLevel" in json.dumps(decoder)
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None
        self._names_developer = "developer" in (chat_template or "")
        self._bos_token_id = bos_token_id
        self._eos_token_id = eos_token_id
        # Other ids the model file names as ends of generation (generation_config.json's EOS
        # list, a GGUF's end-of-turn and end-of-message ids): the model may emit any of them.
        self._end_token_ids = tuple(end_token_ids)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_model_path(cls, path: str | None = None) -> Tokenizer:
        """Build from None (the default GGUF), a `.gguf` file, a dir with tokenizer.json, or
        a HF repo id in the hub's cache."""
        path = resolve_model_path(path)
        if os.path.isdir(path):
            return cls.from_hf_dir(path)
        if path.endswith(".gguf") and os.path.isfile(path):
            # NOTE: the in-repo reader, not gguf.GGUFReader: same metadata, parsed far faster.
            metadata, _ = read_gguf(path, with_tensors=False)
            return cls.from_gguf_metadata(metadata)
        raise FileNotFoundError(f"{path}: neither a .gguf file nor a directory")

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF key/value metadata (the loader can pass what it already read)."""
        meta = metadata.get
        tokens: list[str] = list(meta("tokenizer.ggml.tokens") or [])
        if not tokens:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        types: list[int] = meta("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
        kind = meta("tokenizer.ggml.model")
        if kind not in BUILDERS:
            raise ValueError(f"unsupported GGUF tokenizer model {kind!r}, known: {[*BUILDERS]}")
        hf = BUILDERS[kind](metadata, tokens, types)
        typed = list(zip(tokens, types, strict=True))
        # Control tokens become special added tokens so template text encodes them as one id.
        hf.add_special_tokens([AddedToken(t, special=True) for t, ty in typed if ty == CONTROL])
        hf.add_tokens([AddedToken(t, special=False) for t, ty in typed if ty == USER_DEFINED])
        bos_id, eos_id = meta("tokenizer.ggml.bos_token_id"), meta("tokenizer.ggml.eos_token_id")
        if bos_id is not None and meta("tokenizer.ggml.add_bos_token", False):
            bos = tokens[bos_id]
            hf.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
            )
        named = (meta(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom"))
        ends = [i for i in named if isinstance(i, int)]
        return cls(hf, meta("tokenizer.chat_template"), bos_id, eos_id, ends)

    @classmethod
    def from_hf_dir(cls, path: str) -> Tokenizer:
        """Build from `tokenizer.json`; template, BOS and EOS from `tokenizer_config.json`."""
        hf = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        config: dict[str, Any] = {}
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        jinja_path = os.path.join(path, "chat_template.jinja")
        if template is None and os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()

        def token_id(key: str) -> int | None:
            value = config.get(key)
            text = value.get("content") if isinstance(value, dict) else value
            return hf.token_to_id(text) if isinstance(text, str) else None

        ends: list[int] = []
        generation_path = os.path.join(path, "generation_config.json")
        if os.path.isfile(generation_path):
            with open(generation_path, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token_id")
            ends = [i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)]
        return cls(hf, template, token_id("bos_token"), token_id("eos_token"), ends)

    def save_hf(self, path: str) -> None:
        """Write tokenizer.json, tokenizer_config.json (template, BOS, EOS) and
        generation_config.json (every id generation stops at) into path."""
        self._special.save(os.path.join(path, "tokenizer.json"))

        def text(token_id: int | None) -> str | None:
            return None if token_id is None else self._special.id_to_token(token_id)

        config = {
            "chat_template": self.chat_template,
            "bos_token": text(self._bos_token_id),
            "eos_token": text(self._eos_token_id),
        }
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(path, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump({"eos_token_id": self.eos_token_ids}, f, indent=2)

    # ---- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._plain.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS, the other ends the model file names, and every end-of-turn token the chat
        template writes (generation stops at each)."""
        ids = [] if self._eos_token_id is None else [self._eos_token_id]
        ids += self._end_token_ids
        for text in END_OF_TURN_TOKENS:
            token_id = self._plain.token_to_id(text)
            if self.chat_template and text in self.chat_template and token_id is not None:
                ids.append(token_id)
        return list(dict.fromkeys(ids))

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Control tokens: template markup, never text a grammar may spell."""
        return self._special_ids

    def has_special_text(self, text: str) -> bool:
        """Whether `text` spells a control token (which template markup would turn into one)."""
        return any(s in text for s in self._special_texts)

    def to_json(self) -> str:
        """The `tokenizers` serialization (what grammar libraries build their token tries from)."""
        return self._special.to_str()

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """Vocabulary strings (byte-level form, e.g. "Ġworld"); ValueError for unknown ids."""
        return [self._piece(i) for i in ids]

    def _piece(self, token_id: int) -> str:
        piece = self._plain.id_to_token(token_id)
        if piece is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary")
        return piece

    def id_to_piece_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a UTF-8 character)."""
        piece = self._piece(token_id)
        if token_id in self._special_ids:
            return piece.encode()
        if self._is_byte_level:
            return b"".join(
                bytes([_CHAR_TO_BYTE[c]]) if c in _CHAR_TO_BYTE else c.encode() for c in piece
            )
        match = _BYTE_FALLBACK.fullmatch(piece)
        return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode()

    # ---- text <-> ids -------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids for `text`; special-token strings in it stay plain text, never control ids.

        `add_special_tokens` adds what the model's post-processor adds (e.g. BOS).
        """
        return self._plain.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a whole prompt: `text` as plain text, after what the model file says prompts
        start with (Llama's and Mistral's BOS), as llama.cpp and transformers encode it."""
        return self.encode(text, add_special_tokens=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._plain.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat template ------------------------------------------------------------------

    def render_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text the template produces; raises InvalidRequestError on bad input."""
        return self._render(_validate_messages(messages), add_generation_prompt, tools)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Prompt ids: the template's special tokens are control ids, message content never is.

        Renders once more with each content replaced by a unique sentinel, then encodes the
        template pieces between sentinels with special-token parsing and each content as plain
        text. `tools` (OpenAI tool objects) go to templates that read a `tools` variable.
        Raises InvalidRequestError for invalid messages or a template error.
        """
        messages = _validate_messages(messages)
        rendered = self._render(messages, add_generation_prompt, tools)
        # Digits and private-use characters only, so case or whitespace filters leave it alone.
        nonce = secrets.randbelow(10**12)
        masked = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(messages)]
        masked_text = self._render(masked, add_generation_prompt, tools)
        # re.split with one group: [template, index, template, index, ..., template]
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", masked_text)
        contents = [m["content"] for m in messages]
        rebuilt = "".join(p if k % 2 == 0 else contents[int(p)] for k, p in enumerate(pieces))
        has_special_text = any(s in c for c in contents for s in self._special_texts)
        if rebuilt != rendered and not has_special_text:
            # NOTE: the template transforms content (e.g. `| trim`); with no special-token text
            # in any content, encoding the real rendering with special parsing is safe. If there
            # is some, the pieces below win: content goes in untransformed but stays plain text.
            return self._special.encode(rendered, add_special_tokens=False).ids
        # Control tokens are taken from the template's text only; the text between two of them
        # (template and content alike) is encoded in one piece, as it would be in the rendered
        # prompt: a SentencePiece vocabulary prefixes a space to each such stretch, and BPE
        # merges do not stop where a message's content starts.
        ids: list[int] = []
        stretch: list[str] = []
        for k, piece in enumerate(pieces):
            parts = [contents[int(piece)]] if k % 2 else self._split_control(piece)
            for part in parts:
                if isinstance(part, int):
                    ids += self.encode("".join(stretch)) if stretch else []
                    ids.append(part)
                    stretch = []
                else:
                    stretch.append(part)
        return ids + (self.encode("".join(stretch)) if stretch else [])

    def _split_control(self, text: str) -> list[str | int]:
        """Template text as plain stretches and the ids of the control tokens it spells."""
        if self._control_pattern is None:
            return [text]
        parts = self._control_pattern.split(text)  # [text, control, text, ..., text]
        return [p if k % 2 == 0 else self._control_ids[p] for k, p in enumerate(parts) if p]

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        if self._template is None:
            raise InvalidRequestError("this model has no chat template", param="messages")
        if not self._names_developer:
            # NOTE: OpenAI's "developer" role is its new name for "system"; a template that
            # never names it would write a turn the model was never trained on, or drop it.
            messages = [
                {**m, "role": "system"} if m["role"] == "developer" else m for m in messages
            ]
        bos = self._bos_token_id
        eos = self._eos_token_id
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token="" if bos is None else self._piece(bos),
                eos_token="" if eos is None else self._piece(eos),
                **({} if tools is None else {"tools": tools}),
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template error: {exc}", param="messages") from exc
