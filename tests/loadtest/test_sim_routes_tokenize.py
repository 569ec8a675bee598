"""``/tokenize``, ``/detokenize`` and ``/version`` on a real sim server, and unknown routes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, SimServer, start_sim_server

MODEL = "sim-llm"
TOKENIZER = load_tokenizer()
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    async def post(self, path: str, body: object, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(self.server.url + path, json=body)
        assert response.status == status, await response.text()
        payload: dict[str, Any] = await response.json()
        return payload


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    config = SimConfig(time_scale=1000.0, max_model_len=4096, lora_adapters=("tuned",))
    server = await start_sim_server(config, tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


async def test_tokenize_a_prompt_with_the_counting_tokenizer(sim: Sim) -> None:
    prompt = "Hello, tokenizer world!"
    body = await sim.post("/tokenize", {"model": MODEL, "prompt": prompt})
    tokens = TOKENIZER.encode(prompt)
    assert body == {
        "count": len(tokens),
        "max_model_len": 4096,
        "tokens": tokens,
        "token_strs": None,
    }


async def test_tokenize_counts_what_a_completion_is_charged(sim: Sim) -> None:
    prompt = "Counting the same way everywhere " * 20
    tokenized = await sim.post("/tokenize", {"prompt": prompt})
    completion = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert tokenized["count"] == completion["usage"]["prompt_tokens"]


async def test_tokenize_messages_counts_what_a_chat_is_charged(sim: Sim) -> None:
    tokenized = await sim.post("/tokenize", {"model": "tuned", "messages": MESSAGES})
    chat = await sim.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1})
    assert tokenized["count"] == chat["usage"]["prompt_tokens"]
    without_opener = await sim.post(
        "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}
    )
    assert without_opener["count"] < tokenized["count"]
    assert without_opener["tokens"] == tokenized["tokens"][: without_opener["count"]]
    continued = await sim.post(
        "/tokenize",
        {"messages": MESSAGES, "add_generation_prompt": False, "continue_final_message": True},
    )
    assert continued["count"] < without_opener["count"]
    text = await sim.post("/detokenize", {"tokens": continued["tokens"]})
    assert text["prompt"].endswith("What is the capital of France?")


async def test_token_strs_spell_the_prompt(sim: Sim) -> None:
    prompt = "Spell it out, please."
    body = await sim.post("/tokenize", {"prompt": prompt, "return_token_strs": True})
    assert len(body["token_strs"]) == body["count"]
    assert "".join(body["token_strs"]) == prompt


async def test_detokenize_inverts_tokenize(sim: Sim) -> None:
    prompt = "Round trip: ids back to text."
    tokens = (await sim.post("/tokenize", {"prompt": prompt}))["tokens"]
    assert await sim.post("/detokenize", {"model": MODEL, "tokens": tokens}) == {"prompt": prompt}
    assert await sim.post("/detokenize", {"tokens": []}) == {"prompt": ""}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {}, 400, "prompt"),
        ("/tokenize", {"prompt": 12}, 400, "prompt"),
        ("/tokenize", {"messages": []}, 400, "messages"),
        ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, 400, None),
        ("/tokenize", {"prompt": "x", "model": "nope"}, 404, "model"),
        ("/detokenize", {}, 400, "tokens"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
        ("/detokenize", {"tokens": [1, -2]}, 400, "tokens"),
        ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "nope"}, 404, "model"),
    ],
    ids=[
        "tokenize-nothing",
        "prompt-number",
        "messages-empty",
        "both-prompt-flags",
        "tokenize-unknown-model",
        "detokenize-nothing",
        "tokens-string",
        "negative-id",
        "out-of-vocabulary",
        "detokenize-unknown-model",
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: Sim, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    error = (await sim.post(path, body, status))["error"]
    assert error["param"] == param
    assert error["code"] == status
    assert error["message"]


async def test_out_of_vocabulary_names_the_id(sim: Sim) -> None:
    error = (await sim.post("/detokenize", {"tokens": [1, 10**9]}, 400))["error"]
    assert error["message"] == f"Token id {10**9} is out of vocabulary"


async def test_version_is_a_vllm_release(sim: Sim) -> None:
    response = await sim.http.get(sim.server.url + "/version")
    assert response.status == 200
    version = (await response.json())["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/audio"),
        ("GET", "/v1/responses/a/b"),
        ("POST", "/v1/images/generations"),
        ("GET", "/v2/x"),
    ],
)
async def test_unknown_routes_stay_404(sim: Sim, method: str, path: str) -> None:
    response = await sim.http.request(method, sim.server.url + path, json={})
    assert response.status == 404
    assert await response.json() == {"detail": "Not Found"}  # FastAPI's, as vLLM answers
