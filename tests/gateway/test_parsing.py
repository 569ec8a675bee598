"""Request bodies of every kind, as the gateway reads them for routing: the prompt it counts,
the batch, ``n``, and errors that name the field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BadRequestError
from gateway.parsing import ParsedRequest, parse_request
from gateway.tokenizer import chat_segments
from scheduler.framework.types import Api


def parse(api: Api, **fields: Any) -> ParsedRequest:
    return parse_request(orjson.dumps({"model": "m", **fields}), api)


# -- completions and chat: batches and n -----------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "segments", "ids", "batch"),
    [
        ("hi", ["hi"], None, 1),
        (["a", "b c"], ["a", "b c"], None, 2),
        ([1, 2, 3], [], [1, 2, 3], 1),
        ([[1, 2], [3]], [], [1, 2, 3], 2),
    ],
    ids=["string", "strings", "ids", "id-lists"],
)
def test_completion_prompt_forms_and_batches(
    prompt: Any, segments: list[str], ids: list[int] | None, batch: int
) -> None:
    parsed = parse(Api.COMPLETIONS, prompt=prompt, n=3)
    assert (parsed.segments, parsed.prompt_ids, parsed.batch_size, parsed.n) == (
        segments,
        ids,
        batch,
        3,
    )


def test_chat_keeps_parts_tools_and_max_completion_tokens() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,xx"}},
                {"type": "text", "text": "this?"},
            ],
        },
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    parsed = parse(
        Api.CHAT, messages=messages, tools=tools, max_tokens=5, max_completion_tokens=9, n=2
    )
    assert parsed.segments == chat_segments(messages, tools)
    assert "what is this?" in parsed.segments
    assert (parsed.max_tokens, parsed.n, parsed.batch_size) == (9, 2, 1)


# -- the Responses API -------------------------------------------------------------------------
def test_responses_string_input_and_instructions_render_like_chat() -> None:
    parsed = parse(
        Api.RESPONSES,
        input="hello",
        instructions="be brief",
        max_output_tokens=7,
        stream=True,
        previous_response_id="resp_1",
    )
    assert parsed.segments == chat_segments(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    )
    assert (parsed.max_tokens, parsed.stream, parsed.previous_response_id) == (7, True, "resp_1")


def test_responses_items_of_every_kind() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "look: "}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "name": "f", "arguments": '{"x":1}', "call_id": "c"},
        {"type": "function_call_output", "call_id": "c", "output": "2"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
        {"type": "item_reference", "id": "msg_1"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
    ]
    tools = [{"type": "function", "name": "f"}]
    parsed = parse(Api.RESPONSES, input=items, tools=tools)
    assert parsed.segments == chat_segments(
        [
            {"role": "user", "content": [{"type": "input_text", "text": "look: "}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "assistant", "content": 'f{"x":1}'},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": "hmm"},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
        ],
        tools,
    )
    assert parsed.previous_response_id is None


# -- pooling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("api", [Api.EMBEDDINGS, Api.POOLING, Api.CLASSIFY])
def test_embedding_like_inputs(api: Api) -> None:
    assert parse(api, input="a").segments == ["a"]
    strings = parse(api, input=["a", "b", "c"])
    assert (strings.segments, strings.batch_size, strings.stream) == (["a", "b", "c"], 3, False)
    ids = parse(api, input=[[1, 2], [3, 4], [5]])
    assert (ids.prompt_ids, ids.batch_size) == ([1, 2, 3, 4, 5], 3)
    chat = parse(api, messages=[{"role": "user", "content": "hi"}])
    assert (chat.segments, chat.batch_size) == (
        chat_segments([{"role": "user", "content": "hi"}]),
        1,
    )


def test_a_pooling_plugin_request_without_a_prompt() -> None:
    parsed = parse(Api.POOLING, data={"anything": 1})
    assert (parsed.segments, parsed.prompt_ids) == ([], None)


@pytest.mark.parametrize(
    ("fields", "segments"),
    [
        ({"text_1": "q", "text_2": ["a", "b"]}, ["q", "a", "q", "b"]),
        ({"text_1": ["x", "y"], "text_2": ["a", "b"]}, ["x", "a", "y", "b"]),
        ({"text_1": ["x", "y"], "text_2": "a"}, ["x", "a", "y", "a"]),
        ({"data_1": "q", "data_2": "a"}, ["q", "a"]),
        ({"queries": "q", "documents": ["a", "b", "c"]}, ["q", "a", "q", "b", "q", "c"]),
        ({"query": "q", "items": ["a", [1, 2]], "label_token_ids": [1]}, ["q", "a", "q", ""]),
        (
            {"text_1": "q", "text_2": {"content": [{"type": "text", "text": "a"}, {"type": "x"}]}},
            ["q", "a", "q", ""],
        ),
    ],
    ids=[
        "one-to-many",
        "pairwise",
        "many-to-one",
        "data-names",
        "queries-documents",
        "sglang-query-items",
        "multimodal",
    ],
)
def test_score_pairs(fields: dict[str, Any], segments: list[str]) -> None:
    parsed = parse(Api.SCORE, **fields)
    assert parsed.segments == segments
    assert parsed.batch_size == len(segments) // 2


@pytest.mark.parametrize(
    "documents",
    [["a", "b"], [{"text": "a"}, "b"], {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}],
    ids=["strings", "objects", "multimodal"],
)
def test_rerank_pairs_the_query_with_each_document(documents: Any) -> None:
    parsed = parse(Api.RERANK, query="q", documents=documents, top_n=1)
    assert (parsed.segments, parsed.batch_size) == (["q", "a", "q", "b"], 2)


# -- errors ------------------------------------------------------------------------------------
ERRORS: list[tuple[Api, dict[str, Any], str]] = [
    (Api.COMPLETIONS, {"prompt": "x", "n": 0}, "n"),
    (Api.COMPLETIONS, {"prompt": "x", "n": "2"}, "n"),
    (Api.COMPLETIONS, {"prompt": []}, "prompt"),
    (Api.CHAT, {"messages": [{"role": "user"}], "n": True}, "n"),
    (Api.RESPONSES, {}, "input"),
    (Api.RESPONSES, {"input": 5}, "input"),
    (Api.RESPONSES, {"input": ["hi"]}, "input[0]"),
    (Api.RESPONSES, {"input": [{"content": "hi"}]}, "input[0].role"),
    (Api.RESPONSES, {"input": [{"role": "user", "content": 3}]}, "input[0].content"),
    (Api.RESPONSES, {"input": [{"type": 1}]}, "input[0].type"),
    (Api.RESPONSES, {"input": "x", "instructions": ["a"]}, "instructions"),
    (Api.RESPONSES, {"input": "x", "previous_response_id": 7}, "previous_response_id"),
    (Api.RESPONSES, {"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    (Api.RESPONSES, {"input": "x", "tools": {}}, "tools"),
    (Api.RESPONSES, {"input": "x", "stream": "no"}, "stream"),
    (Api.EMBEDDINGS, {}, "input"),
    (Api.EMBEDDINGS, {"input": []}, "input"),
    (Api.EMBEDDINGS, {"input": [1, "a"]}, "input"),
    (Api.EMBEDDINGS, {"messages": []}, "messages"),
    (Api.CLASSIFY, {"input": {"a": 1}}, "input"),
    (Api.SCORE, {"text_2": "a"}, "text_1"),
    (Api.SCORE, {"text_1": "q"}, "text_2"),
    (Api.SCORE, {"text_1": "q", "text_2": [1.5]}, "text_2[0]"),
    (Api.SCORE, {"text_1": "q", "text_2": ["a", 1]}, "text_2[1]"),
    (Api.SCORE, {"text_1": "q", "text_2": {"content": "x"}}, "text_2.content"),
    (Api.RERANK, {"documents": ["a"]}, "query"),
    (Api.RERANK, {"query": 1, "documents": ["a"]}, "query"),
    (Api.RERANK, {"query": "q"}, "documents"),
    (Api.RERANK, {"query": "q", "documents": []}, "documents"),
    (Api.RERANK, {"query": "q", "documents": [3]}, "documents[0]"),
    (Api.RERANK, {"query": "q", "documents": {"content": []}}, "documents"),
]


@pytest.mark.parametrize(
    ("api", "fields", "param"), ERRORS, ids=[f"{a.value}-{p}" for a, _, p in ERRORS]
)
def test_bad_fields_are_named(api: Api, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as info:
        parse(api, **fields)
    assert info.value.param == param
    assert param.split("[")[0].split(".")[0] in info.value.message


@pytest.mark.parametrize("api", list(Api))
def test_every_kind_needs_a_model(api: Api) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_request(b'{"input": "x", "prompt": "x"}', api)
    assert info.value.param == "model"
