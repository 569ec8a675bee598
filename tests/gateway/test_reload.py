"""Configuration reload: SIGHUP and the file watch, applied to a gateway serving real pods."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config import load_config
from gateway.keys import gateway_key
from gateway.reload import ConfigReloader, ReloadResult, changed_paths, watched_files
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, served_by
from tests.gateway.test_membership import until

Client = TestClient[web.Request, web.Application]
PROMPT = [5, 6, 7]


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(time_scale=50.0)) for _ in range(2)]
    yield servers
    for server in servers:
        await server.close()


def yaml_config(*pods: SimServer, preset: str = "round-robin", extra: str = "") -> str:
    endpoints = ", ".join(f"{{url: '{p.url}', name: pod{i}}}" for i, p in enumerate(pods))
    return (
        f"pool: {{endpoints: [{endpoints}], scrape_interval_ms: 20}}\n"
        f"scheduling: {{preset: {preset}}}\n{extra}"
    )


async def gateway_from(
    path: Path, make_gateway: MakeGateway, *, environ: dict[str, str] | None = None
) -> tuple[Client, ConfigReloader]:
    gw = await make_gateway(load_config(path))
    reloader = ConfigReloader(
        gw.app[gateway_key],
        lambda: load_config(path),
        environ=environ or {},
        files=watched_files(str(path)),
        set_log_level=lambda level: None,
    )
    return gw, reloader


def counted(exposition: str, result: str) -> float:
    line = f'slogate_config_reloads_total{{result="{result}"}} '
    return next(float(x.removeprefix(line)) for x in exposition.splitlines() if x.startswith(line))


async def test_unchanged_configuration_is_counted_and_changes_nothing(
    sims: list[SimServer], make_gateway: MakeGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_config(*sims))
    gw, reloader = await gateway_from(path, make_gateway)
    policy = gw.app[gateway_key].director.policy

    assert reloader.reload("test") == ReloadResult("unchanged")

    assert gw.app[gateway_key].director.policy is policy
    exposition = (await (await gw.get("/metrics")).read()).decode()
    assert counted(exposition, "unchanged") == 1.0
    assert "slogate_config_last_reload_successful 1.0" in exposition


async def test_a_new_pool_and_preset_apply_while_a_stream_runs(
    sims: list[SimServer], make_gateway: MakeGateway, tmp_path: Path
) -> None:
    a, b = sims
    slow = await start_sim_server(SimConfig(time_scale=2.0))
    try:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml_config(slow))
        gw, reloader = await gateway_from(path, make_gateway)
        gateway = gw.app[gateway_key]
        old_scheduler = gateway.director.policy.scheduler
        stream = asyncio.create_task(served_by(gw, PROMPT, 200))
        await until(lambda: len(gateway.store.inflight) == 1, "the stream is running")

        path.write_text(yaml_config(a, b, preset="least-request"))
        result = reloader.reload("SIGHUP")

        assert result.result == "applied"
        assert set(result.applied) == {"pool.endpoints", "scheduling.preset"}
        assert gateway.director.policy.scheduler is not old_scheduler
        assert [e.name for e in gateway.store.endpoints] == ["pod0", "pod1"]
        assert await stream == "pod0"  # the old pod0 (slow) finished its stream whole
        assert len(gateway.store.inflight) == 0
        await until(lambda: gateway.store.serves("pod1", "sim-llm"), "pod1's models known")
        assert {await served_by(gw, PROMPT, 4) for _ in range(6)} <= {"pod0", "pod1"}
        assert gateway.cfg.scheduling.preset == "least-request"
    finally:
        await slow.close()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("pool: [", "invalid YAML"),
        ("pool: {endpoints: []}\nbogus: 1\n", "bogus: unknown key"),
        ("scheduling: {preset: no-such-preset}\n", "no-such-preset"),
        (
            "scheduling:\n"
            "  plugins: [{type: inflight-load-scorer, parameters: {signal: nope}},"
            " {type: max-score-picker}]\n"
            "  profiles: [{name: default, plugins: [{plugin_ref: inflight-load-scorer},"
            " {plugin_ref: max-score-picker}]}]\n",
            "nope",
        ),
    ],
    ids=["yaml", "unknown-key", "unknown-preset", "plugin-parameter"],
)
async def test_a_bad_configuration_is_rejected_and_the_running_one_stays(
    sims: list[SimServer],
    make_gateway: MakeGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    text: str,
    error: str,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_config(*sims))
    gw, reloader = await gateway_from(path, make_gateway)
    gateway = gw.app[gateway_key]
    policy, cfg = gateway.director.policy, gateway.cfg

    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="gateway.reload"):
        result = reloader.reload("SIGHUP")

    assert result.result == "rejected"
    assert result.error is not None
    assert error in result.error
    (record,) = [r for r in caplog.records if r.getMessage() == "config.reload_rejected"]
    assert error in record.__dict__["error"]
    assert gateway.director.policy is policy
    assert gateway.cfg is cfg
    assert await served_by(gw, PROMPT, 4) in {"pod0", "pod1"}
    exposition = (await (await gw.get("/metrics")).read()).decode()
    assert counted(exposition, "rejected") == 1.0
    assert "slogate_config_last_reload_successful 0.0" in exposition


async def test_a_change_that_needs_a_restart_is_named_and_the_rest_applied(
    sims: list[SimServer],
    make_gateway: MakeGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_config(*sims))
    gw, reloader = await gateway_from(path, make_gateway)
    gateway = gw.app[gateway_key]

    path.write_text(
        yaml_config(
            *sims,
            extra="server: {port: 9999}\nslo: {objectives: [{name: vip, priority: 10}]}\n",
        )
    )
    with caplog.at_level(logging.WARNING, logger="gateway.reload"):
        result = reloader.reload("SIGHUP")

    assert result.restart_required == ("server.port",)
    assert result.applied == ("slo.objectives",)
    (record,) = [r for r in caplog.records if r.getMessage() == "config.restart_required"]
    assert record.__dict__["paths"] == ["server.port"]
    assert gateway.cfg.server.port != 9999
    resp = await gw.post(
        "/v1/completions",
        data=orjson.dumps({"model": "sim-llm", "prompt": PROMPT, "max_tokens": 2}),
        headers={"x-llm-d-inference-objective": "vip"},
    )
    assert resp.status == 200  # an unknown objective before the reload (400)


async def test_a_rotated_api_key_applies_on_reload(
    sims: list[SimServer], make_gateway: MakeGateway, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_config(*sims, extra=f"server: {{api_keys_file: '{keys}'}}\n"))
    gw, reloader = await gateway_from(path, make_gateway)

    async def status(key: str) -> int:
        resp = await gw.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        await resp.read()
        return resp.status

    assert (await status("old-key"), await status("new-key")) == (200, 401)
    keys.write_text("new-key\n")
    assert reloader.reload("SIGHUP").result == "unchanged"  # the config is; the file is reread
    assert (await status("old-key"), await status("new-key")) == (401, 200)


async def test_the_file_watch_applies_a_changed_file(
    sims: list[SimServer], make_gateway: MakeGateway, tmp_path: Path
) -> None:
    a, b = sims
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_config(a))
    gw, reloader = await gateway_from(path, make_gateway)
    gateway = gw.app[gateway_key]
    watch = asyncio.create_task(reloader.watch(0.02))
    try:
        await asyncio.sleep(0.1)
        assert [e.name for e in gateway.store.endpoints] == ["pod0"]  # nothing changed yet
        path.write_text(yaml_config(a, b))
        await until(lambda: len(gateway.store.endpoints) == 2, "the watch applied the file")
    finally:
        watch.cancel()


def test_changed_paths_name_leaf_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("server: {port: 1}\npool: {endpoints: [{url: 'http://x:1'}]}\n")
    old = load_config(path)
    path.write_text("server: {port: 2}\npool: {endpoints: [{url: 'http://y:1'}]}\n")
    assert changed_paths(old, load_config(path)) == ["server.port", "pool.endpoints"]


async def test_sighup_reloads_a_running_gateway(
    sims: list[SimServer], tmp_path: Path, unused_tcp_port: int
) -> None:
    """The real process: SIGHUP with an edited file adds a pod, and the gateway lives on."""
    a, b = sims
    path = tmp_path / "gateway.yaml"
    server = f"server: {{host: 127.0.0.1, port: {unused_tcp_port}, config_watch_s: 0}}\n"
    path.write_text(yaml_config(a, extra=server))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(path), "--log-level", "warning"
    )
    base = f"http://127.0.0.1:{unused_tcp_port}"
    body = {"model": "sim-llm", "prompt": PROMPT, "max_tokens": 2}
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> list[str]:
                try:
                    async with session.get(f"{base}/ready") as resp:
                        return list(orjson.loads(await resp.read()).get("endpoints", []))
                except aiohttp.ClientConnectionError:
                    return []

            for _ in range(200):
                if await ready() == ["pod0"]:
                    break
                await asyncio.sleep(0.05)
            path.write_text(yaml_config(a, b, extra=server))
            proc.send_signal(signal.SIGHUP)
            for _ in range(200):
                if await ready() == ["pod0", "pod1"]:
                    break
                await asyncio.sleep(0.05)
            served = set()
            for _ in range(4):
                async with session.post(f"{base}/v1/completions", json=body) as resp:
                    assert resp.status == 200
                    served.add(resp.headers["x-slogate-endpoint"])
            assert served == {"pod0", "pod1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
