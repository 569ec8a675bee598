"""The SSE scanner finds the first token, counts tokens, reads usage, sees [DONE]."""

from __future__ import annotations

import pytest

from gateway.streaming import SseScanner, scan_json_body

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
TEXT = b'data: {"choices":[{"index":0,"text":" there","finish_reason":null}]}\n\n'
TRICKY = b'data: {"choices":[{"delta":{"content":"say \\"content\\":\\"x\\" [DONE]"}}]}\n\n'
SPACED = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
REASONING = b'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}\n\n'
TOOL = b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1"}]}}]}\n\n'
FINISH = b'data: {"choices":[{"delta":{"content":null},"finish_reason":"stop"}]}\n\n'
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":42,'
    b'"prompt_tokens_details":{"cached_tokens":3}}}\n\n'
)
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("events", "tokens"),
    [
        ([ROLE], 0),
        ([TOKEN], 1),
        ([TEXT], 1),
        ([TRICKY], 1),
        ([SPACED], 1),
        ([REASONING], 1),
        ([TOOL], 1),
        ([FINISH], 0),
        ([ROLE, TOKEN, TOKEN, FINISH, DONE], 2),
        ([b": keep-alive comment\n\n", TOKEN], 1),
    ],
    ids=[
        "role-only",
        "content",
        "text",
        "escaped-quotes",
        "spaced-json",
        "reasoning",
        "tool-call",
        "finish",
        "sequence",
        "comment",
    ],
)
def test_token_events(events: list[bytes], tokens: int) -> None:
    scanner = SseScanner()
    for event in events:
        scanner.feed(event, 1.0)
    assert scanner.token_events == tokens
    assert scanner.done is (DONE in events)
    assert (scanner.first_token_at is not None) is (tokens > 0)


def test_events_split_across_chunks_and_joined_in_one() -> None:
    stream = ROLE + TOKEN + TEXT + USAGE + DONE
    scanner = SseScanner()
    firsts = [scanner.feed(stream[i : i + 7], float(i)) for i in range(0, len(stream), 7)]
    assert firsts.count(True) == 1
    assert scanner.first_token_at == float(firsts.index(True) * 7)
    assert scanner.token_events == 2
    assert scanner.completion_tokens == 42
    assert scanner.prompt_tokens == 5
    assert scanner.cached_tokens == 3
    assert scanner.done

    whole = SseScanner()
    assert whole.feed(stream, 9.0)
    assert (whole.token_events, whole.completion_tokens, whole.done) == (2, 42, True)


def test_crlf_framing() -> None:
    scanner = SseScanner()
    scanner.feed(TOKEN.replace(b"\n", b"\r\n") + DONE.replace(b"\n", b"\r\n"), 2.0)
    assert scanner.token_events == 1
    assert scanner.done


def test_done_inside_text_is_not_the_end() -> None:
    scanner = SseScanner()
    scanner.feed(TRICKY, 1.0)
    assert not scanner.done


def test_counted_events_without_usage() -> None:
    scanner = SseScanner()
    scanner.feed(TOKEN * 5, 1.0)
    assert scanner.completion_tokens == 5
    assert scanner.usage_completion_tokens is None


def test_scan_json_body() -> None:
    scanner = SseScanner()
    scan_json_body(b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":9}}', scanner)
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (2, 9)
    scan_json_body(b"not json", scanner)
    scan_json_body(b"[1]", scanner)
    assert scanner.completion_tokens == 9


def test_expected_usage_skips_recognizing_tokens_but_usage_is_exact() -> None:
    scanner = SseScanner(expect_usage=True)
    scanner.feed(ROLE + TOKEN, 1.0)
    scanner.feed(TOKEN * 3 + FINISH, 2.0)
    assert scanner.first_token_at == 1.0
    scanner.feed(USAGE + DONE, 3.0)
    assert scanner.completion_tokens == 42
    assert scanner.done
