"""Every overlay of deploy/kubernetes, rendered: valid Kubernetes objects that fit together.

Rendering is kustomize's where it is installed, else tests/deploy/kustomize.py's (held to
kustomize by test_renderer.py). Objects are validated against the Kubernetes OpenAPI schemas
bundled in kubernetes-validate (offline, strict: unknown fields are errors), for the oldest
and the newest Kubernetes version checked; then what no schema sees: selectors, ports, probes,
RBAC, the gateway's own config validator, the shutdown budget and the simulated fleet.
"""

from __future__ import annotations

import re

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web

from config import ConfigError, GatewayConfig, from_yaml
from gateway.app import create_app
from gateway.cli import build_parser
from loadtest.sim.config import SimConfig
from loadtest.sim.server import create_sim_app
from tests.deploy.kustomize import Obj
from tests.deploy.manifests import (
    DEPLOY,
    KUSTOMIZE_ROOT,
    OVERLAYS,
    container,
    containers,
    gateway,
    gateway_config_text,
    gateway_container,
    of_kind,
    one,
    overlay,
    pod_labels,
    pod_spec,
    port_number,
    rendered,
    selects,
    workloads,
)

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests target, and the newest the schemas know."""
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
"""CRDs without a bundled schema: checked by hand below."""
SHUTDOWN_MARGIN_S = 5
"""Seconds left after the drain for cleanup (the trainer's worker) before the kubelet kills."""


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    return overlay(request.param)


def gateway_config(objects: list[Obj]) -> GatewayConfig:
    return from_yaml(gateway_config_text(objects))


def test_overlays_are_all_tested() -> None:
    on_disk = {
        p.name
        for p in (KUSTOMIZE_ROOT / "overlays").iterdir()
        if (p / "kustomization.yaml").is_file()
    }
    assert on_disk == set(OVERLAYS)


def test_every_object_validates_against_the_kubernetes_schemas() -> None:
    checked = 0
    directories = [KUSTOMIZE_ROOT / "overlays" / o for o in OVERLAYS]
    for directory in [*directories, KUSTOMIZE_ROOT / "monitoring"]:
        for obj in rendered(directory):
            if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    where = ".".join(str(p) for p in exc.path)
                    pytest.fail(
                        f"{directory.name}: {obj['kind']}/{obj['metadata']['name']} at {where}: "
                        f"{exc.message} (Kubernetes {version})"
                    )
            checked += 1
    assert checked >= 3 * 7


def test_each_overlay_has_the_gateway_pieces(objects: list[Obj]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PodDisruptionBudget",
    } <= kinds


def test_selectors_match_their_pods(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, pod_labels(workload)), workload["metadata"]["name"]
        # No other workload's pods fall under this selector (a rollout would adopt them).
        others = [w for w in workloads(objects) if w is not workload]
        assert not any(selects(selector, pod_labels(w)) for w in others)
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        selected = [w for w in workloads(objects) if selects(selector, pod_labels(w))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        for port in service["spec"]["ports"]:
            # The targetPort names a port of the selected pods' containers.
            assert any(
                port["targetPort"] in (p.get("name"), p["containerPort"])
                for c in pod_spec(selected[0])["containers"]
                for p in c.get("ports", [])
            ), f"Service {service['metadata']['name']}: no container port {port['targetPort']}"
    for budget in of_kind(objects, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        covered = [w for w in workloads(objects) if selects(selector, pod_labels(w))]
        assert [w["metadata"]["name"] for w in covered] == ["slogate"]
        # Never 0: a budget that allows no disruption blocks every node drain.
        assert budget["spec"]["maxUnavailable"] >= 1


def test_probes_hit_the_gateways_health_routes(objects: list[Obj]) -> None:
    c = gateway_container(objects)
    cfg = gateway_config(objects)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    routes = get_routes(create_app(cfg))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        http_get = c[probe]["httpGet"]
        assert port_number(c, http_get["port"]) == cfg.server.port
        assert http_get["path"] in routes
    assert port_number(c, "http") == cfg.server.port


def test_the_simulators_probes_hit_its_routes() -> None:
    objects = overlay("sim-fleet")
    sim = container(one(objects, "StatefulSet", "slogate-sim"), "sim")
    routes = get_routes(create_sim_app(SimConfig()))
    for probe in ("livenessProbe", "readinessProbe"):
        assert sim[probe]["httpGet"]["path"] in routes
        port_number(sim, sim[probe]["httpGet"]["port"])


def get_routes(app: web.Application) -> set[str]:
    return {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET" and r.resource is not None
    }


def test_every_container_runs_a_valid_slogate_command(objects: list[Obj]) -> None:
    parser = build_parser()
    for _, c in containers(objects):
        args = parser.parse_args(c["args"])
        if args.command == "serve":
            assert args.config == "/etc/slogate/gateway.yaml"
        else:
            assert args.command == "sim"
            assert args.host == "0.0.0.0"  # reachable from the gateway's pod
            assert port_number(c, "http") == args.port


def test_every_container_runs_the_projects_image_tag(objects: list[Obj]) -> None:
    version = project_version()
    assert {c["image"] for _, c in containers(objects)} == {f"slogate:{version}"}


def project_version() -> str:
    text = (DEPLOY.parent / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_pods_run_unprivileged(objects: list[Obj]) -> None:
    for workload, c in containers(objects):
        pod_context = pod_spec(workload)["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] != 0
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "memory" in c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_the_configmap_is_a_valid_gateway_config(objects: list[Obj]) -> None:
    """The gateway's own validator: unknown keys and bad values are errors. The pool is
    discovered from the Kubernetes API, never a list of addresses that goes stale."""
    cfg = gateway_config(objects)
    assert cfg.pool.kubernetes is not None
    assert cfg.pool.kubernetes.selector
    assert not cfg.pool.endpoints
    assert cfg.scheduling.preset is not None


def test_the_overlays_run_the_guides_presets() -> None:
    presets = {o: gateway_config(overlay(o)).scheduling.preset for o in OVERLAYS}
    assert presets["predicted-latency"] == "predicted-latency"
    assert presets["predicted-latency-slo"] == "predicted-latency-slo"
    slo = gateway_config(overlay("predicted-latency-slo")).slo
    assert any(o.priority < 0 for o in slo.resolved_objectives().values())


def test_the_base_config_is_valid_too() -> None:
    objects = rendered(KUSTOMIZE_ROOT / "base")
    assert gateway_config(objects).scheduling.preset == "predicted-latency"


def test_the_config_validator_would_catch_a_bad_key() -> None:
    text = gateway_config_text(overlay("sim-fleet"))
    with pytest.raises(ConfigError, match=r"pool\.discovery"):
        from_yaml(text.replace("pool:\n", "pool:\n  discovery: {}\n", 1))


def test_the_predictor_state_is_on_the_state_volume(objects: list[Obj]) -> None:
    cfg = gateway_config(objects)
    c = gateway_container(objects)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert cfg.predictor.state_dir in mounts
    volumes = {v["name"]: v for v in pod_spec(gateway(objects))["volumes"]}
    assert set(volumes[mounts[cfg.predictor.state_dir]]) - {"name"} in (
        {"emptyDir"},
        {"persistentVolumeClaim"},
    )
    # A read-only root filesystem: /tmp must be a volume (tempfiles, the trainer's worker).
    assert "/tmp" in mounts


def test_the_shutdown_budget_adds_up(objects: list[Obj]) -> None:
    """preStop sleep + the gateway's readiness delay + its drain + a margin fit in
    terminationGracePeriodSeconds; the sleep matches the readiness delay, within which the
    readiness probe notices the 503."""
    server = gateway_config(objects).server
    c = gateway_container(objects)
    spec = pod_spec(gateway(objects))
    sleep_s = prestop_sleep_s(c)
    assert sleep_s == server.readiness_delay_s
    readiness = c["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= server.readiness_delay_s
    budget_s = sleep_s + server.readiness_delay_s + server.shutdown_timeout_s + SHUTDOWN_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= budget_s


def prestop_sleep_s(c: Obj) -> float:
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


def test_rbac_allows_reading_pods_only(objects: list[Obj]) -> None:
    assert not of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "ClusterRoleBinding")
    (role,) = of_kind(objects, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = of_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = pod_spec(gateway(objects))["serviceAccountName"]
    one(objects, "ServiceAccount", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]


def test_the_sim_fleet_pool_discovers_every_simulated_pod() -> None:
    objects = overlay("sim-fleet")
    fleet = one(objects, "StatefulSet", "slogate-sim")
    service = one(objects, "Service", fleet["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    assert selects(service["spec"]["selector"], pod_labels(fleet))
    kube = gateway_config(objects).pool.kubernetes
    assert kube is not None
    assert selects(kube.selector, pod_labels(fleet))
    assert kube.port == port_number(container(fleet, "sim"), "http")
    # Nothing else the overlay deploys is taken for a model server.
    others = [w for w in workloads(objects) if w is not fleet]
    assert others
    assert not any(selects(kube.selector, pod_labels(w)) for w in others)
    # The simulators serve the guide's model name, so its requests work unchanged.
    args = build_parser().parse_args(container(fleet, "sim")["args"])
    assert args.model == "Qwen/Qwen3-32B"


def test_monitoring_scrapes_the_gateway_port() -> None:
    gateway_objects = overlay("predicted-latency")
    service = one(gateway_objects, "Service", "slogate")
    (monitor,) = rendered(KUSTOMIZE_ROOT / "monitoring")
    assert (monitor["apiVersion"], monitor["kind"]) in CUSTOM_KINDS
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "honorLabels",
            "authorization",
        }


def test_the_plain_scrape_config_keeps_the_gateway_pods() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "slogate"
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    objects = overlay("predicted-latency")
    labels, c = pod_labels(gateway(objects)), gateway_container(objects)
    meta = {
        "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
        for k, v in labels.items()
    }
    meta["__meta_kubernetes_pod_container_port_name"] = "http"
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keeps
    for rule in keeps:
        value = ";".join(meta.get(label, "") for label in rule["source_labels"])
        assert re.fullmatch(rule["regex"], value), rule
    port_number(c, "http")


def test_the_old_manifest_is_gone() -> None:
    assert not (DEPLOY / "k8s").exists()
    assert "deploy/k8s" not in (DEPLOY.parent / "README.md").read_text()


def test_every_kustomization_is_rendered_by_some_test() -> None:
    directories = {p.parent for p in KUSTOMIZE_ROOT.rglob("kustomization.yaml")}
    tested = {KUSTOMIZE_ROOT / "overlays" / o for o in OVERLAYS} | {
        KUSTOMIZE_ROOT / "base",
        KUSTOMIZE_ROOT / "monitoring",
    }
    assert directories == tested


def test_the_replicas_find_each_other(objects: list[Obj]) -> None:
    """pool.peers selects this Deployment's pods (and no other workload) on its http port, and
    each pod knows its own name to leave itself out."""
    peers = gateway_config(objects).pool.peers.kubernetes
    assert peers is not None
    deployment = gateway(objects)
    assert selects(peers.selector, pod_labels(deployment))
    assert peers.port == port_number(gateway_container(objects), "http")
    others = [w for w in workloads(objects) if w is not deployment]
    assert not any(selects(peers.selector, pod_labels(w)) for w in others)
    env = {e["name"]: e for e in gateway_container(objects).get("env", [])}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
