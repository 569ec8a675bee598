"""The ``slogate`` command line: flags map onto config, and ``serve`` really serves."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from config import ConfigError
from gateway.cli import build_parser, main, serve_config
from loadtest.sim.config import SimConfig
from loadtest.sim.server import start_sim_server
from tests.gateway.conftest import server_url


def test_serve_flags_become_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("pool:\n  endpoints:\n    - url: http://10.0.0.1:8000\n      name: a\n")
    args = build_parser().parse_args(
        [
            "serve",
            "--config",
            str(path),
            "--endpoint",
            "http://10.0.0.2:8000",
            "--endpoint",
            "b=http://10.0.0.3:8000/",
            "--preset",
            "round-robin",
            "--host",
            "127.0.0.1",
            "--port",
            "9999",
            "--log-level",
            "debug",
        ]
    )
    cfg = serve_config(args)
    assert [(e.name, e.url) for e in cfg.pool.endpoints] == [
        ("a", "http://10.0.0.1:8000"),
        ("", "http://10.0.0.2:8000"),
        ("b", "http://10.0.0.3:8000/"),
    ]
    assert cfg.scheduling.preset == "round-robin"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9999)
    assert cfg.logging.level == "debug"


def test_serve_defaults_to_port_8080() -> None:
    cfg = serve_config(build_parser().parse_args(["serve", "--endpoint", "http://h:1"]))
    assert cfg.server.port == 8080


def test_serve_needs_endpoints() -> None:
    with pytest.raises(ConfigError, match=r"pool\.endpoints"):
        serve_config(build_parser().parse_args(["serve"]))
    assert main(["serve"]) == 2


def test_bad_endpoint_and_preset_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--endpoint", "not a url"])
    assert main(["serve", "--endpoint", "http://h:1", "--preset", "fastest"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_sim_and_demo_flags() -> None:
    args = build_parser().parse_args(
        ["sim", "--port", "9000", "--model", "m", "--speed", "2", "--max-num-seqs", "8",
         "--kv-blocks", "64", "--time-scale", "10"]
    )  # fmt: skip
    assert (args.port, args.model, args.speed, args.max_num_seqs) == (9000, "m", 2.0, 8)
    assert (args.kv_blocks, args.time_scale) == (64, 10.0)
    demo = build_parser().parse_args(["demo", "--pods", "2", "--duration", "5"])
    assert (demo.pods, demo.duration) == (2, 5.0)


async def test_serve_runs_and_stops_on_sigterm(
    instant_backend: TestServer, unused_tcp_port: int
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve",
        "--endpoint", server_url(instant_backend),
        "--host", "127.0.0.1", "--port", str(unused_tcp_port), "--log-level", "warning",
    )  # fmt: skip
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGHUP)  # a reload (nothing changed): never fatal
            await asyncio.sleep(0.2)
            async with session.post(
                f"{base}/v1/completions", json={"model": "sim-llm", "prompt": "hi"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["x-slogate-endpoint"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0


async def test_sigterm_turns_readiness_off_first_and_drains_streams(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    """SIGTERM: /ready says 503 at once while requests are still served for the readiness
    delay; then the listener closes, the stream in flight finishes whole, and the process
    exits 0."""
    pod = await start_sim_server(SimConfig(time_scale=1.0))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {unused_tcp_port}, readiness_delay_s: 1.0,"
        " shutdown_timeout_s: 20}\n"
        f"pool: {{endpoints: [{{url: '{pod.url}'}}]}}\n"
        "scheduling: {preset: least-request}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", "warning"
    )
    base = f"http://127.0.0.1:{unused_tcp_port}"
    body = {"model": "sim-llm", "prompt": "hi", "max_tokens": 150, "ignore_eos": True}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            long = await session.post(f"{base}/v1/completions", json={**body, "stream": True})
            assert long.status == 200
            first = await long.content.readany()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with session.get(f"{base}/ready") as resp:
                assert resp.status == 503  # out of the Service first ...
            async with session.post(f"{base}/v1/completions", json={**body, "max_tokens": 4}) as r:
                assert r.status == 200  # ... while still serving
            rest = await long.read()
            assert rest.rstrip().endswith(b"data: [DONE]")  # the stream in flight finished whole
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await pod.close()
