"""The SSE scanner finds the first token, counts tokens, reads usage, sees [DONE]."""

from __future__ import annotations

import pytest

from gateway.streaming import ResponsesScanner, SseScanner, scan_json_body, scan_usage_only

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


# -- the Responses API's named events ------------------------------------------------------------
def named(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()


RESPONSE = '{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}'
CREATED = named(
    "response.created", f'{{"response":{RESPONSE},"sequence_number":0,"type":"response.created"}}'
)
IN_PROGRESS = named(
    "response.in_progress",
    f'{{"response":{RESPONSE},"sequence_number":1,"type":"response.in_progress"}}',
)
PART_ADDED = named(
    "response.content_part.added",
    '{"part":{"annotations":[],"text":"","type":"output_text"},"type":"response.content_part.added"}',
)


def delta(text: str, kind: str = "response.output_text.delta") -> bytes:
    return named(kind, f'{{"content_index":0,"delta":"{text}","output_index":0,"type":"{kind}"}}')


TEXT_DONE = named(
    "response.output_text.done", '{"text":" there can","type":"response.output_text.done"}'
)
COMPLETED = named(
    "response.completed",
    '{"response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":'
    '"message","content":[{"type":"output_text","text":" there can"}]}],"usage":{"input_tokens":'
    '24,"input_tokens_details":{"cached_tokens":16},"output_tokens":2,"total_tokens":26}},'
    '"type":"response.completed"}',
)
RESPONSES_STREAM = (
    CREATED + IN_PROGRESS + PART_ADDED + delta(" there") + delta(" can") + TEXT_DONE + COMPLETED
)


def test_responses_stream_counts_output_deltas_and_reads_usage_and_id() -> None:
    scanner = ResponsesScanner()
    assert not scanner.feed(CREATED + IN_PROGRESS + PART_ADDED, 1.0)
    assert scanner.response_id == "resp_1"
    assert scanner.feed(delta(" there"), 2.0)
    assert not scanner.feed(delta(" can") + TEXT_DONE, 3.0)
    assert scanner.token_events == 2  # output_text.done carries the text again: not a token
    done_before_the_end = scanner.done
    scanner.feed(COMPLETED, 4.0)
    assert scanner.first_token_at == 2.0
    assert (scanner.completion_tokens, scanner.prompt_tokens, scanner.cached_tokens) == (2, 24, 16)
    assert (done_before_the_end, scanner.done) == (False, True)


@pytest.mark.parametrize("size", [1, 5, 64, 10_000])
def test_responses_stream_split_anywhere(size: int) -> None:
    scanner = ResponsesScanner()
    firsts = [
        scanner.feed(RESPONSES_STREAM[i : i + size], float(i))
        for i in range(0, len(RESPONSES_STREAM), size)
    ]
    assert firsts.count(True) == 1
    assert scanner.response_id == "resp_1"
    assert (scanner.token_events, scanner.completion_tokens, scanner.done) == (2, 2, True)


@pytest.mark.parametrize(
    "kind",
    [
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
    ],
)
def test_any_output_delta_is_a_first_token(kind: str) -> None:
    scanner = ResponsesScanner()
    scanner.feed(CREATED, 1.0)
    assert scanner.feed(delta("x", kind), 2.0)
    assert scanner.token_events == 1


def test_responses_delta_text_that_looks_like_an_event_is_one_token() -> None:
    scanner = ResponsesScanner()
    scanner.feed(delta('say \\"type\\":\\"response.output_text.delta\\" usage'), 1.0)
    assert scanner.token_events == 1


@pytest.mark.parametrize("end", ["response.incomplete", "response.failed"])
def test_responses_stream_ends_incomplete_or_failed(end: str) -> None:
    scanner = ResponsesScanner()
    scanner.feed(CREATED + named(end, f'{{"response":{RESPONSE},"type":"{end}"}}'), 1.0)
    assert scanner.done
    assert scanner.token_events == 0


def test_non_streamed_response_body() -> None:
    scanner = SseScanner()
    scan_json_body(
        b'{"id":"resp_9","object":"response","output":[],"usage":{"input_tokens":7,'
        b'"output_tokens":3,"input_tokens_details":{"cached_tokens":4}}}',
        scanner,
    )
    assert (scanner.response_id, scanner.prompt_tokens, scanner.completion_tokens) == (
        "resp_9",
        7,
        3,
    )
    assert scanner.cached_tokens == 4
    chat = SseScanner()
    scan_json_body(b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}', chat)
    assert chat.response_id is None


@pytest.mark.parametrize(
    ("body", "prompt_tokens"),
    [
        (
            b'{"object":"list","data":[{"embedding":[0.1,-0.2]}],"usage":{"prompt_tokens":7,'
            b'"total_tokens":7,"completion_tokens":0,"prompt_tokens_details":null}}',
            7,
        ),
        (b'{"data":[],"usage" : {"prompt_tokens": 3, "details": {"cached_tokens": 1}}}', 3),
        (b'{"data":[],"usage":null}', None),
        (b'{"data":[]}', None),
        (b'{"data":[],"usage":{"prompt_tokens":', None),
        (b"not json at all", None),
    ],
    ids=["embeddings", "nested-and-spaced", "null", "absent", "truncated", "garbage"],
)
def test_pooling_usage_is_read_without_decoding_the_vectors(
    body: bytes, prompt_tokens: int | None
) -> None:
    scanner = SseScanner()
    scan_usage_only(body, scanner)
    assert scanner.prompt_tokens == prompt_tokens
