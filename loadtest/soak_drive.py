"""The soak benchmark's client, in its own process: a closed loop of streamed completions.

    python -m loadtest.soak_drive --url URL --concurrency 1000 --duration-s 300 \\
        --hung-s 6 --start-at T --out tally.json

Each of ``--concurrency`` virtual users sends a streamed ``/v1/completions`` request
(``--prompt-tokens`` random token ids; ``max_tokens`` drawn uniformly from half to one and a
half times ``--max-tokens``, with ``ignore_eos``, so that the users do not move in lockstep;
usage included),
reads it to the end and sends the next, from ``--start-at`` (``time.monotonic()``, the users
spread over ``--ramp-s``) for ``--duration-s``; then no new request leaves, and what still
runs gets ``--drain-s`` to end. SIGTERM ends the loop early (no new requests, then the drain).

Every request is classified by :mod:`loadtest.soak_classify`; the client's read timeout is
``--hung-s``: no byte for that long, waiting for the answer or inside the stream, is a hung
request (it is abandoned). Written to ``--out`` as JSON (:class:`Tally`): counts and reasons
per class, per pod (``x-slogate-endpoint``) and per ``--bucket-s`` of end time, examples of
every class but completed, and the send time, TTFT and e2e of each completed request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.sim.config import DEFAULT_MODEL as MODEL
from loadtest.soak_classify import OUTCOMES, Observed, Outcome, StreamWatch, Verdict, classify

JSON_HEADERS = {"content-type": "application/json"}
CONNECT_TIMEOUT_S = 10.0
MAX_EXAMPLES = 25
_VOCAB = (1000, 100_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class DriveSettings:
    url: str
    """The full URL requests are POSTed to (``.../v1/completions``)."""
    concurrency: int
    duration_s: float
    start_at: float
    hung_s: float
    drain_s: float = 60.0
    ramp_s: float = 5.0
    prompt_tokens: int = 32
    max_tokens: int = 32
    bucket_s: float = 10.0
    seed: int = 0


@dataclass(slots=True)
class Tally:
    """What the driver saw, aggregated; times in seconds after ``start_at``."""

    counts: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    by_endpoint: dict[str, Counter[str]] = field(default_factory=dict)
    by_bucket: dict[int, Counter[str]] = field(default_factory=dict)
    """Per ``bucket_s`` of end time (the bucket's index)."""
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    short: int = 0
    """Completed with fewer tokens than asked for."""
    no_openai_body: int = 0
    """Non-2xx answers whose body was not an OpenAI error object."""
    completed: list[tuple[float, float, float]] = field(default_factory=list)
    """(sent, TTFT, e2e) of each completed request."""
    ended_s: float = 0.0

    def add(
        self,
        verdict: Verdict,
        *,
        sent_s: float,
        ended_s: float,
        endpoint: str,
        status: int,
        watch: StreamWatch,
        ttft_s: float | None,
        max_tokens: int,
        bucket_s: float,
    ) -> None:
        name = verdict.outcome.value
        self.counts[name] += 1
        self.reasons.setdefault(name, Counter())[verdict.reason] += 1
        self.by_endpoint.setdefault(endpoint or "-", Counter())[name] += 1
        self.by_bucket.setdefault(int(ended_s // bucket_s), Counter())[name] += 1
        if not verdict.openai_body:
            self.no_openai_body += 1
        if verdict.outcome is Outcome.COMPLETED:
            if watch.completion_tokens < max_tokens:
                self.short += 1
            self.completed.append(
                (
                    round(sent_s, 4),
                    round(ttft_s if ttft_s is not None else -1.0, 5),
                    round(ended_s - sent_s, 5),
                )
            )
            return
        examples = self.examples.setdefault(name, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(
                {
                    "sent_s": round(sent_s, 3),
                    "ended_s": round(ended_s, 3),
                    "endpoint": endpoint,
                    "status": status,
                    "reason": verdict.reason,
                    "bytes": watch.bytes_received,
                    "tokens": watch.completion_tokens,
                }
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {o.value: self.counts[o.value] for o in OUTCOMES},
            "reasons": {k: dict(v.most_common()) for k, v in self.reasons.items()},
            "by_endpoint": {k: dict(v) for k, v in sorted(self.by_endpoint.items())},
            "by_bucket": {str(k): dict(v) for k, v in sorted(self.by_bucket.items())},
            "examples": self.examples,
            "short": self.short,
            "no_openai_body": self.no_openai_body,
            "completed": self.completed,
            "ended_s": self.ended_s,
        }


def transport_reason(exc: BaseException) -> str:
    """A low-cardinality description of a failed connection."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: {type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno is not None:
        return f"{type(exc).__name__} errno {exc.errno}"
    return type(exc).__name__


class Driver:
    """The closed loop (module docstring)."""

    def __init__(self, settings: DriveSettings) -> None:
        self.settings = settings
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._rng = random.Random(settings.seed)

    def stop(self) -> None:
        """No new requests from now on."""
        self._stop.set()

    def _body(self) -> tuple[bytes, int]:
        """A request's body and its ``max_tokens``."""
        s = self.settings
        prompt = [self._rng.randrange(*_VOCAB) for _ in range(s.prompt_tokens)]
        max_tokens = self._rng.randint(max(1, s.max_tokens // 2), max(1, s.max_tokens * 3 // 2))
        body = orjson.dumps(
            {
                "model": MODEL,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        return body, max_tokens

    async def run(self) -> Tally:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=0)
        timeout = client_timeout(s.hung_s)
        end_at = s.start_at + s.duration_s
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            users = [
                asyncio.create_task(
                    self._user(session, s.start_at + s.ramp_s * i / s.concurrency, end_at)
                )
                for i in range(s.concurrency)
            ]
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait([stop], timeout=max(0.0, end_at - time.monotonic()))
            self._stop.set()
            stop.cancel()
            _, pending = await asyncio.wait(users, timeout=s.drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*users, return_exceptions=True)
        self.tally.ended_s = time.monotonic() - s.start_at
        return self.tally

    async def _user(self, session: aiohttp.ClientSession, begin_at: float, end_at: float) -> None:
        delay = begin_at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        while not self._stop.is_set() and time.monotonic() < end_at:
            await self._request(session)

    async def _request(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        body, max_tokens = self._body()

        def record(done: Exchange) -> None:
            first = done.watch.first_token_at
            self.tally.add(
                done.verdict,
                sent_s=done.sent - s.start_at,
                ended_s=done.ended - s.start_at,
                endpoint=done.endpoint,
                status=done.observed.status,
                watch=done.watch,
                ttft_s=None if first is None else first - done.sent,
                max_tokens=max_tokens,
                bucket_s=s.bucket_s,
            )

        await exchange(session, s.url, body, hung_s=s.hung_s, record=record)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as the client lived it."""

    sent: float
    ended: float
    endpoint: str
    """``x-slogate-endpoint`` of the answer, if any."""
    watch: StreamWatch
    observed: Observed

    @property
    def verdict(self) -> Verdict:
        return classify(self.observed)


async def exchange(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    hung_s: float,
    record: Callable[[Exchange], None],
) -> None:
    """POST ``body`` to ``url``, read the answer to its end and ``record`` what happened, also
    when cancelled (then as unfinished, and the cancellation goes on). ``session``'s read
    timeout must be ``hung_s``: it is what ends a silent request."""
    watch = StreamWatch()
    status, endpoint, error_body = 0, "", b""
    transport: str | None = None
    silent: float | None = None
    cancelled = False
    sent = time.monotonic()
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
            status = resp.status
            endpoint = resp.headers.get("x-slogate-endpoint", "")
            if status >= 300:
                error_body = await resp.read()
            else:
                async for chunk in resp.content.iter_any():
                    watch.feed(chunk, time.monotonic())
    except aiohttp.ConnectionTimeoutError as exc:  # connecting, not a silent answer
        transport = transport_reason(exc)
    except aiohttp.ServerTimeoutError:
        silent = hung_s
    except (aiohttp.ClientError, OSError) as exc:
        transport = transport_reason(exc)
    except asyncio.CancelledError:
        cancelled = True
    observed = Observed(
        status=status,
        body=error_body,
        done=watch.done,
        error_event=watch.error_code if watch.error_event else None,
        transport_error=transport,
        silent_for_s=silent,
        unfinished=cancelled,
    )
    record(Exchange(sent, time.monotonic(), endpoint, watch, observed))
    if cancelled:
        raise asyncio.CancelledError


def client_timeout(hung_s: float) -> aiohttp.ClientTimeout:
    """The driver's session timeouts: no total, a bounded connect, ``hung_s`` of silence."""
    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=hung_s)


async def drive(settings: DriveSettings) -> Tally:
    driver = Driver(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, driver.stop)
    try:
        return await driver.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak_drive", description=__doc__)
    p.add_argument("--url", required=True, help="POST target (e.g. http://h:p/v1/completions)")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--start-at", type=float, required=True, help="time.monotonic() of t=0")
    p.add_argument("--hung-s", type=float, required=True, help="no byte this long: hung")
    p.add_argument("--drain-s", type=float, default=60.0)
    p.add_argument("--ramp-s", type=float, default=5.0)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--bucket-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    return p


def settings_from_args(args: argparse.Namespace) -> DriveSettings:
    return DriveSettings(
        url=args.url,
        concurrency=args.concurrency,
        duration_s=args.duration_s,
        start_at=args.start_at,
        hung_s=args.hung_s,
        drain_s=args.drain_s,
        ramp_s=args.ramp_s,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        bucket_s=args.bucket_s,
        seed=args.seed,
    )


def driver_command(settings: DriveSettings, out: Path) -> list[str]:
    """The arguments (after ``python -m loadtest.soak_drive``) that run ``settings``."""
    s = settings
    return [
        "--url", s.url, "--concurrency", str(s.concurrency), "--duration-s", repr(s.duration_s),
        "--start-at", repr(s.start_at), "--hung-s", repr(s.hung_s), "--drain-s", repr(s.drain_s),
        "--ramp-s", repr(s.ramp_s), "--prompt-tokens", str(s.prompt_tokens),
        "--max-tokens", str(s.max_tokens), "--bucket-s", repr(s.bucket_s),
        "--seed", str(s.seed), "--out", str(out),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    from gateway.cli import new_event_loop

    args = build_parser().parse_args(argv)
    loop = new_event_loop()
    try:
        tally = loop.run_until_complete(drive(settings_from_args(args)))
    finally:
        loop.close()
    args.out.write_text(json.dumps(tally.to_json()))


if __name__ == "__main__":
    main()
