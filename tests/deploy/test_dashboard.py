"""The Grafana dashboards in deploy/grafana query only what the gateway exports.

The exported names come from a real gateway: built by ``create_app`` from the sim-fleet
overlay's gateway.yaml (the predicted-latency-slo preset) in front of a simulated pod, sent
streamed and non-streamed requests, with and without latency objectives (llm-d's headers and
the guide's), and then scraped on ``/metrics``. Every family counts, with its samples' names
by type (a counter's ``_total``, a histogram's ``_bucket``/``_sum``/``_count``), also those
that saw no event yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from config import EndpointConfig, from_yaml
from gateway.app import create_app
from loadtest.sim.config import SimConfig
from loadtest.sim.server import start_sim_server
from tests.deploy.manifests import DEPLOY, KUSTOMIZE_ROOT, gateway_config_text, overlay, rendered
from tests.deploy.promql import label_names, metric_names, variable_query_metrics

DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
MODEL = "Qwen/Qwen3-32B"
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
SCRAPE_TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
"""Labels the scrape adds to every series (ServiceMonitor and the plain scrape config)."""
OPERATOR_TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
)
"""Labels the Prometheus Operator gives every target of a ServiceMonitor."""
GUIDE_AND_ISSUE_VIEWS = {
    # The llm-d guide's verification: predictions produced, predicted vs actual, violations.
    "inference_objective_request_ttft_prediction_duration_seconds_count",
    "inference_objective_request_predicted_ttft_seconds_bucket",
    "inference_objective_request_ttft_seconds_bucket",
    "inference_objective_request_predicted_tpot_seconds_bucket",
    "inference_objective_request_tpot_seconds_bucket",
    "inference_objective_request_ttft_slo_violation_total",
    "inference_objective_request_tpot_slo_violation_total",
    # Shed rate, per-pod load, the predictor's live MAPE.
    "slogate_requests_shed_total",
    "slogate_endpoint_inflight_requests",
    "slogate_predictor_live_mape",
}


@dataclass
class Exposition:
    names: set[str] = field(default_factory=set)
    """Every sample name Prometheus can store from the gateway's /metrics."""
    labels: dict[str, set[str]] = field(default_factory=dict)
    """Label names per sample name, for the samples that were exposed."""


def exposition_of(text: str) -> Exposition:
    exposition = Exposition()
    for family in text_string_to_metric_families(text):
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            exposition.names.add(family.name + suffix)
        for sample in family.samples:
            exposition.names.add(sample.name)
            exposition.labels.setdefault(sample.name, set()).update(sample.labels)
    return exposition


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            for metric in variable_query_metrics(text):
                yield f"variable {variable['name']}", metric


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


@pytest.fixture
async def exposition(aiohttp_client: AiohttpClient, tmp_path: Path) -> AsyncIterator[Exposition]:
    sim = await start_sim_server(SimConfig(model=MODEL, time_scale=50.0))
    try:
        cfg = from_yaml(gateway_config_text(overlay("sim-fleet")))
        assert cfg.scheduling.preset == "predicted-latency-slo"
        cfg = dataclasses.replace(
            cfg,
            pool=dataclasses.replace(  # the pod the overlay would discover, as a static one
                cfg.pool,
                kubernetes=None,
                endpoints=(EndpointConfig(url=sim.url, name="slogate-sim-0"),),
            ),
            predictor=dataclasses.replace(cfg.predictor, state_dir=str(tmp_path)),
        )
        client = await aiohttp_client(create_app(cfg))
        await wait_ready(client)
        await send_requests(client)
        resp = await client.get("/metrics")
        assert resp.status == 200
        yield exposition_of(await resp.text())
    finally:
        await sim.close()


async def wait_ready(client: TestClient[web.Request, web.Application]) -> None:
    for _ in range(250):
        resp = await client.get("/ready")
        await resp.read()
        if resp.status == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the gateway never became ready")


async def send_requests(client: TestClient[web.Request, web.Application]) -> None:
    completion = {"model": MODEL, "prompt": "Explain prefill and decode.", "max_tokens": 6}
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "stream": True,
    }
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/v1/completions", {**completion, "stream": True}, {}),
        ("/v1/completions", completion, {}),
        (
            "/v1/chat/completions",
            chat,
            {
                "x-llm-d-slo-ttft-ms": "10000",
                "x-llm-d-slo-tpot-ms": "1000",
                "x-llm-d-inference-objective": "interactive",
            },
        ),
        # The guide's request: its header names, a tight objective, streamed with usage.
        (
            "/v1/completions",
            {**completion, "stream": True, "stream_options": {"include_usage": True}},
            {"x-slo-ttft-ms": "200", "x-slo-tpot-ms": "50"},
        ),
    ]
    for path, body, headers in requests:
        resp = await client.post(
            path, data=orjson.dumps(body), headers={"content-type": "application/json", **headers}
        )
        await resp.read()
        assert resp.status == 200, (path, headers, resp.status)


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ('sum(rate(a_total{job=~"$job"}[$__rate_interval]))', {"a_total"}, {"job"}),
        (
            "histogram_quantile(0.9, sum by (le) (rate(b_bucket[5m])))",
            {"b_bucket"},
            {"le"},
        ),
        (
            'sum by (x, y) (c{met="true", job!~"a|b"}) / on (x) group_left d offset 5m',
            {"c", "d"},
            {"x", "y", "met", "job"},
        ),
        ("1000 * max(e:rate5m) > bool 1e3", {"e:rate5m"}, set()),
        ('label_replace(f, "dst", "$1", "src", "(.*)")', {"f"}, set()),
    ],
)
def test_promql_names(expr: str, metrics: set[str], labels: set[str]) -> None:
    assert metric_names(expr) == metrics
    assert label_names(expr) == labels


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            # Every series is filtered to the chosen job(s): llm-d's EPP exports some of the
            # same names.
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_guides_and_the_issues_views(path: Path) -> None:
    queried = {m for _, expr in queries(load(path)) for m in metric_names(expr)}
    assert queried >= GUIDE_AND_ISSUE_VIEWS, GUIDE_AND_ISSUE_VIEWS - queried


async def test_every_dashboard_query_reads_exported_metrics(exposition: Exposition) -> None:
    missing = [
        f"{path.name}: {where}: {metric}"
        for path in DASHBOARDS
        for where, expr in queries(load(path))
        for metric in sorted(metric_names(expr))
        if metric not in exposition.names
    ]
    assert not missing, "not exported by the gateway:\n" + "\n".join(missing)
    # The requests went through the predictor's path and the objectives' accounting.
    assert exposition.labels.get("slogate_predictor_decisions_total")
    assert exposition.labels.get("slogate_slo_requests_total")


async def test_dashboard_labels_exist_on_their_metrics(exposition: Exposition) -> None:
    """Labels a query matches on or groups by are the metric's own or the scrape's; checked
    for every query whose metrics all had samples in this run."""
    checked, wrong = 0, []
    for path in DASHBOARDS:
        for where, expr in queries(load(path)):
            metrics = metric_names(expr)
            if not all(m in exposition.labels for m in metrics):
                continue
            known = set().union(*(exposition.labels[m] for m in metrics)) | SCRAPE_TARGET_LABELS
            unknown = label_names(expr) - known
            if unknown:
                wrong.append(f"{path.name}: {where}: {sorted(unknown)}")
            checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked >= 20


async def test_scrape_labels_never_rename_the_gateways_labels(exposition: Exposition) -> None:
    """A target label with the name of a metric label renames the metric's to exported_<name>
    (the per-pod `endpoint` would be lost) unless the scrape honors the gateway's labels."""
    exported_labels = set().union(*exposition.labels.values())
    (monitor,) = rendered(KUSTOMIZE_ROOT / "monitoring")
    if exported_labels & OPERATOR_TARGET_LABELS:
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint.get("honorLabels") is True, exported_labels & OPERATOR_TARGET_LABELS
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    for job in scrape["scrape_configs"]:
        added = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
        added |= {"job", "instance"}
        assert job.get("honor_labels") or not (added & exported_labels), added & exported_labels
