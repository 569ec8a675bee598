"""vLLM's ``/tokenize`` and ``/detokenize``: parsing, bodies, and ids back to text.

Both use the tokenizer the sim counts prompts with, so ``/tokenize`` reports exactly the
prompt length a completion of the same prompt is charged (``usage.prompt_tokens``). A
``messages`` body is rendered the way chat requests are (``add_generation_prompt``, on by
default as in vLLM, keeps the assistant turn opener; ``continue_final_message`` leaves the
last message open).

vLLM answers ``{"count", "max_model_len", "tokens", "token_strs"}``; ``token_strs`` is null
unless ``return_token_strs`` is true, and then holds each token's decoded text.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import orjson
import tiktoken

from gateway.tokenizer import Tokenizer, chat_segments
from loadtest.sim.protocol import (
    ApiError,
    bad_request,
    is_token_id,
    load_object,
    optional_bool,
    optional_tools,
    parse_messages,
    resolve_model,
)

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizeRequest:
    model: str
    text: str
    return_token_strs: bool


def parse_tokenize_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> TokenizeRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    if "messages" in fields:
        messages = parse_messages(fields)
        add_generation_prompt = optional_bool(fields, "add_generation_prompt", default=True)
        continue_final_message = optional_bool(fields, "continue_final_message")
        if add_generation_prompt and continue_final_message:
            raise bad_request(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        segments = chat_segments(messages, optional_tools(fields))
        if not add_generation_prompt:
            segments.pop()  # the assistant turn opener
            if continue_final_message:
                segments.pop()  # the last message's end marker
        text = "".join(segments)
    else:
        prompt = fields.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("prompt (a string) or messages is required", "prompt")
        text = prompt
    return TokenizeRequest(
        model=model, text=text, return_token_strs=optional_bool(fields, "return_token_strs")
    )


def tokenize_body(tokens: list[int], max_model_len: int, token_strs: list[str] | None) -> bytes:
    return orjson.dumps(
        {
            "count": len(tokens),
            "max_model_len": max_model_len,
            "tokens": tokens,
            "token_strs": token_strs,
        }
    )


def parse_detokenize_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> list[int]:
    """The token ids of a ``/detokenize`` body (its model is checked, then not needed)."""
    fields = load_object(body)
    resolve_model(fields, served_model, adapters)
    tokens = fields.get("tokens")
    if not isinstance(tokens, list) or not all(is_token_id(token) for token in tokens):
        raise bad_request("tokens must be a list of non-negative token ids", "tokens")
    return tokens


def detokenize_body(text: str) -> bytes:
    return orjson.dumps({"prompt": text})


class Detokenizer:
    """Token ids back to text with the sim's tokenizer (the gateway's ``Tokenizer`` only
    encodes, so decoding goes to the encoding its name gives)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._name = tokenizer.name
        self._decode = _decoder_for(tokenizer)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; 400 naming the first id outside the vocabulary."""
        decode = self._decode
        if decode is None:
            raise ApiError(
                501,
                f"the sim's tokenizer {self._name!r} cannot decode token ids",
                error_type="NotImplementedError",
            )
        try:
            return decode(ids)
        except (KeyError, OverflowError, ValueError):
            pass
        for token in ids:
            try:
                decode([token])
            except (KeyError, OverflowError, ValueError):
                raise bad_request(f"Token id {token} is out of vocabulary", "tokens") from None
        raise bad_request("tokens cannot be decoded", "tokens")  # pragma: no cover

    def token_strs(self, ids: Sequence[int]) -> list[str]:
        return [self.decode([token]) for token in ids]


def _decoder_for(tokenizer: Tokenizer) -> Decode | None:
    kind, _, arg = tokenizer.name.partition(":")
    if kind == "tiktoken" and arg:
        return tiktoken.get_encoding(arg).decode
    if kind == "estimate" and not arg:
        return _decode_estimate
    return None


def _decode_estimate(ids: Sequence[int]) -> str:
    """The inverse of the ``estimate`` tokenizer: each id is four UTF-8 bytes, little-endian,
    zero-padded at the end of the text."""
    raw = b"".join(token.to_bytes(4, "little") for token in ids)
    return raw.rstrip(b"\0").decode("utf-8", errors="replace")
