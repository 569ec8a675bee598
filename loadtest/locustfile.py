"""Locust users for an OpenAI-compatible endpoint: slogate, or a model server directly.

Each user sends streaming chat completions and reports, besides Locust's request time (the
whole stream), the time to first token and the time per output token as their own entries, so
the Locust UI and CSV show TTFT/TPOT percentiles. Requests are also grouped by the pod that
served them (``x-slogate-endpoint``) under the name ``TTFT <pod>``.

Install and run (the ``loadtest`` extra brings Locust)::

    .venv/bin/pip install -e '.[loadtest]'
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \\
        --users 50 --spawn-rate 10 --run-time 2m --headless

Environment: ``SLOGATE_MODEL`` (default ``sim-llm``), ``SLOGATE_MAX_TOKENS`` (default 64),
``SLOGATE_SHARED_PREFIX`` (0..1, share of requests starting with one of a few long system
prompts, default 0.5), and ``SLOGATE_TTFT_SLO_MS`` to send ``x-llm-d-slo-ttft-ms``.
"""

from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, task

MODEL = os.environ.get("SLOGATE_MODEL", "sim-llm")
MAX_TOKENS = int(os.environ.get("SLOGATE_MAX_TOKENS", "64"))
SHARED_PREFIX = float(os.environ.get("SLOGATE_SHARED_PREFIX", "0.5"))
TTFT_SLO_MS = os.environ.get("SLOGATE_TTFT_SLO_MS")
SYSTEM_PROMPTS = [
    f"You are assistant #{i}. " + "Answer carefully, cite sources and be concise. " * 60
    for i in range(8)
]
WORDS = ("route", "cache", "token", "latency", "queue", "batch", "prefill", "decode", "why")


class ChatUser(HttpUser):
    wait_time = between(0.0, 0.5)

    @task
    def chat(self) -> None:
        messages = [
            {"role": "user", "content": " ".join(random.choices(WORDS, k=random.randint(10, 300)))}
        ]
        if random.random() < SHARED_PREFIX:
            messages.insert(0, {"role": "system", "content": random.choice(SYSTEM_PROMPTS)})
        headers = {"content-type": "application/json"}
        if TTFT_SLO_MS:
            headers["x-llm-d-slo-ttft-ms"] = TTFT_SLO_MS
        body = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, stream=True, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            pod = resp.headers.get("x-slogate-endpoint", "direct")
            for line in resp.iter_lines():
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                if b'"content":"' in line and b'"content":""' not in line:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
            ended = time.perf_counter()
        if first is None:
            return
        ttft_ms = (first - started) * 1000
        self._report("TTFT", "all", ttft_ms)
        self._report("TTFT", pod, ttft_ms)
        if tokens > 1:
            self._report("TPOT", "all", (ended - first) * 1000 / (tokens - 1))

    def _report(self, kind: str, name: str, ms: float) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=f"{kind} {name}",
            response_time=ms,
            response_length=0,
            exception=None,
            context={},
        )
