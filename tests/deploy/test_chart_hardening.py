"""The chart's side of hostile-client hardening (docs/security.md), with the real helm.

Authentication made explicit (``ferry.auth.mode``: its Secret, issuer and client token), /metrics on a
port of its own that only Prometheus reaches, per-path body limits at the ingress, the settings of the
connection, quota and hung-model protections rendered into the ConfigMap (and accepted by the
service's own Settings), and the cross-value rules ``templates/validate.yaml`` refuses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

from support import notes  # noqa: E402

CHART = kv.CHART
STREAM_PATH = "/api/v1/predict/stream"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(*args: str, values: str | None = None) -> tuple[dict, ...]:
    files = [CHART / "ci" / values] if values else None
    return tuple(kv.documents(kv.helm_template(files, (), *args)))


def refusal(*args: str) -> str:
    with pytest.raises(kv.Failure) as refused:
        render(*args)
    return str(refused.value)


def of_kind(docs: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def settings_of(docs: tuple[dict, ...]) -> dict[str, str]:
    return of_kind(docs, "ConfigMap")["ferry"]["data"]


def api_pods(docs: tuple[dict, ...]) -> dict[str, dict]:
    return {
        name: d["spec"]["template"]["spec"]
        for name, d in {**of_kind(docs, "Deployment"), **of_kind(docs, "Rollout")}.items()
        if d["metadata"]["labels"]["app.kubernetes.io/name"] == "ferry"
    }


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def service_settings(data: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's own Settings read from the rendered ConfigMap: it refuses what it would refuse at start."""
    from ferry.settings import Settings

    for name, value in data.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- settings in the ConfigMap -------------------------------------------------------------------
def test_hardening_settings_render_with_the_service_defaults_and_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.settings import Settings

    data = settings_of(render())
    assert data["FERRY_STREAM__MAX_BODY_BYTES"] == "33554432"
    assert data["FERRY_AUTH__MODE"] == "none"
    service = Settings()  # before the ConfigMap's variables are set
    chart = service_settings(data, monkeypatch)
    # What the chart chooses on purpose: docs off, /metrics on a port of its own.
    assert chart.api.docs_enabled is False and service.api.docs_enabled is True
    assert chart.metrics.port == 9100 and service.metrics.port is None
    # Everything else new is the service's own default.
    fields = {
        "inference": ("hang_s", "hang_exit_s"),
        "connections": (
            "max_header_bytes",
            "header_timeout_s",
            "body_timeout_s",
            "max_connections",
            "max_event_streams",
        ),
        "jobs": (
            "max_queued",
            "max_queued_per_principal",
            "max_store_bytes",
            "max_store_bytes_per_principal",
            "quota_retry_after_s",
        ),
        "callbacks": ("max_in_flight", "max_per_host", "allow_hosts"),
        "stream": ("max_body_bytes",),
    }
    for group, names in fields.items():
        for name in names:
            ours, theirs = getattr(getattr(chart, group), name), getattr(getattr(service, group), name)
            assert ours == theirs, f"{group}.{name}: chart {ours!r}, service {theirs!r}"


def test_every_new_value_reaches_its_variable() -> None:
    sets = {
        "ferry.inference.hangS=90": ("FERRY_INFERENCE__HANG_S", "90"),
        "ferry.inference.hangExitS=20": ("FERRY_INFERENCE__HANG_EXIT_S", "20"),
        "ferry.connections.maxHeaderBytes=65536": ("FERRY_CONNECTIONS__MAX_HEADER_BYTES", "65536"),
        "ferry.connections.headerTimeoutS=5": ("FERRY_CONNECTIONS__HEADER_TIMEOUT_S", "5"),
        "ferry.connections.bodyTimeoutS=15": ("FERRY_CONNECTIONS__BODY_TIMEOUT_S", "15"),
        "ferry.connections.maxConnections=8192": ("FERRY_CONNECTIONS__MAX_CONNECTIONS", "8192"),
        "ferry.connections.maxEventStreams=100": ("FERRY_CONNECTIONS__MAX_EVENT_STREAMS", "100"),
        "ferry.jobs.maxQueued=50": ("FERRY_JOBS__MAX_QUEUED", "50"),
        "ferry.jobs.maxQueuedPerPrincipal=5": ("FERRY_JOBS__MAX_QUEUED_PER_PRINCIPAL", "5"),
        "ferry.jobs.maxStoreBytes=10485760": ("FERRY_JOBS__MAX_STORE_BYTES", "10485760"),
        "ferry.jobs.maxStoreBytesPerPrincipal=1048576": ("FERRY_JOBS__MAX_STORE_BYTES_PER_PRINCIPAL", "1048576"),
        "ferry.jobs.quotaRetryAfterS=7": ("FERRY_JOBS__QUOTA_RETRY_AFTER_S", "7"),
        "ferry.callbacks.maxInFlight=8": ("FERRY_CALLBACKS__MAX_IN_FLIGHT", "8"),
        "ferry.callbacks.maxPerHost=1": ("FERRY_CALLBACKS__MAX_PER_HOST", "1"),
        "ferry.api.docsEnabled=true": ("FERRY_API__DOCS_ENABLED", "true"),
        "ferry.metrics.port=9200": ("FERRY_METRICS__PORT", "9200"),
    }
    args = [a for s in sets for a in ("--set", s)]
    data = settings_of(render(*args))
    assert {env: data[env] for env, _ in sets.values()} == dict(sets.values())


# --- authentication ------------------------------------------------------------------------------
def test_api_keys_are_mounted_read_only_and_named_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kv.render_scenario("auth-api-key")
    data = settings_of(docs)
    assert data["FERRY_AUTH__MODE"] == "api_key"
    keys_file = data["FERRY_AUTH__API_KEYS_FILE"]
    for name, pod in api_pods(docs).items():
        volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
        assert volume["secret"]["secretName"] == "ferry-api-keys", name
        assert volume["secret"]["items"] == [{"key": "api-keys.json", "path": "api-keys.json"}]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
        assert mount["readOnly"] is True
        assert keys_file == f"{mount['mountPath']}/api-keys.json"
    assert service_settings(data, monkeypatch).auth.mode == "api_key"
    test_pod = of_kind(docs, "Pod")["ferry-test-predict"]["spec"]["containers"][0]
    assert env_of(test_pod)["FERRY_TOKEN"] == {"secretKeyRef": {"name": "ferry-client-token", "key": "token"}}


def test_without_auth_nothing_is_mounted_and_no_token_is_sent() -> None:
    docs = kv.render_scenario("default")
    assert "FERRY_AUTH__API_KEYS_FILE" not in settings_of(docs)
    for pod in api_pods(docs).values():
        assert "api-keys" not in {v["name"] for v in pod["volumes"]}
    assert "FERRY_TOKEN" not in env_of(of_kind(docs, "Pod")["ferry-test-predict"]["spec"]["containers"][0])


def test_jwt_settings_issuer_egress_and_the_gate_token(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kv.render_scenario("auth-jwt")
    data = settings_of(docs)
    assert data["FERRY_AUTH__JWT_ISSUER"] == "https://idp.example.com/"
    assert data["FERRY_AUTH__JWT_AUDIENCE"] == "ferry"
    assert data["FERRY_AUTH__JWT_JWKS_URL"] == "https://idp.example.com/.well-known/jwks.json"
    auth = service_settings(data, monkeypatch).auth
    assert auth.mode == "jwt" and auth.jwt_algorithms == ["RS256", "ES256"] and auth.jwt_default_scopes == ["predict"]
    assert (auth.jwt_leeway_s, auth.jwks_min_refresh_s, auth.jwt_principal_claim) == (30, 60, "sub")
    egress = of_kind(docs, "NetworkPolicy")["ferry"]["spec"]["egress"]
    issuer = [r for r in egress if r["ports"] == [{"port": 443, "protocol": "TCP"}]]
    assert len(issuer) == 1, egress
    block = issuer[0]["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"]
    gate = of_kind(docs, "Job")["ferry-slo-gate"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(gate)["FERRY_TOKEN"] == {"secretKeyRef": {"name": "ferry-client-token", "key": "token"}}
    # Without jwt the issuer's egress is not there (the default opens DNS only).
    default_egress = of_kind(kv.render_scenario("default"), "NetworkPolicy")["ferry"]["spec"]["egress"]
    assert {p["port"] for r in default_egress for p in r["ports"]} == {53}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("ferry.auth.mode=api_key",), ("ferry.auth.apiKeys.existingSecret",)),
        (
            ("ferry.auth.mode=jwt", "ferry.auth.jwt.issuer=https://idp/", "ferry.auth.jwt.audience=ferry"),
            ("ferry.auth.jwt.jwksUrl",),
        ),
        (
            ("ferry.auth.mode=api_key", "ferry.auth.apiKeys.existingSecret=keys"),
            ("ferry.auth.clientToken.existingSecret", "tests.enabled"),
        ),
        (
            (
                "ferry.auth.mode=api_key",
                "ferry.auth.apiKeys.existingSecret=keys",
                "tests.enabled=false",
                "loadtest.enabled=true",
                "rollout.analysis.gate.image.repository=gate",
            ),
            ("ferry.auth.clientToken.existingSecret", "loadtest.enabled"),
        ),
    ],
)
def test_auth_without_its_values_is_refused(args: tuple[str, ...], names: tuple[str, ...]) -> None:
    message = refusal(*[a for s in args for a in ("--set", s)])
    for name in names:
        assert name in message, message


def test_auth_on_without_tests_or_gate_needs_no_client_token() -> None:
    docs = render(
        "--set",
        "ferry.auth.mode=api_key",
        "--set",
        "ferry.auth.apiKeys.existingSecret=k",
        "--set",
        "tests.enabled=false",
    )
    assert settings_of(docs)["FERRY_AUTH__MODE"] == "api_key"


def test_notes_warn_loudly_when_an_exposed_service_has_no_auth(tmp_path: Path) -> None:
    exposed = notes.render_notes(kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/ingress-values.yaml"))
    assert "WARNING: ferry.auth.mode is none and the Ingress exposes the API" in exposed
    routed = notes.render_notes(kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/httproute-values.yaml"))
    assert "WARNING: ferry.auth.mode is none and the HTTPRoute exposes the API" in routed
    internal = notes.render_notes(kv.HELM, CHART, tmp_path)
    assert "ferry.auth.mode is none and" not in internal
    keyed = notes.render_notes(kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/auth-api-key-values.yaml"))
    assert "ferry.auth.mode is none and" not in keyed and "Authentication: ferry.auth.mode=api_key" in keyed


# --- metrics on their own port -------------------------------------------------------------------
def ports(service: dict) -> dict[str, dict]:
    return {p["name"]: p for p in service["spec"]["ports"]}


def test_metrics_port_on_pods_main_service_and_service_monitor_only() -> None:
    canary, worker = kv.render_scenario("canary"), kv.render_scenario("worker-redis")
    for name, pod in {**api_pods(canary), **api_pods(worker)}.items():
        container_ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert container_ports == {"http": 8000, "metrics": 9100}, name
    services = of_kind(canary, "Service")
    metrics = {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    assert ports(services["ferry"])["metrics"] == metrics
    for track in ("ferry-stable", "ferry-canary"):
        assert set(ports(services[track])) == {"http"}, track
    assert ports(of_kind(worker, "Service")["ferry-worker"])["metrics"] == metrics, "the worker serves it too"
    monitor = of_kind(kv.render_scenario("monitoring"), "ServiceMonitor")["ferry"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_ingress_and_route_never_reach_the_metrics_port() -> None:
    for name, ingress in of_kind(kv.render_scenario("escape-hatches"), "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] == {"name": "http"}, name
    route = of_kind(kv.render_scenario("httproute"), "HTTPRoute")["ferry"]
    for rule in route["spec"]["rules"]:
        assert [b["port"] for b in rule["backendRefs"]] == [80]


def test_network_policy_admits_metrics_from_monitoring_only() -> None:
    policy = of_kind(kv.render_scenario("default"), "NetworkPolicy")["ferry"]["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy}
    assert set(by_port) == {"http", "metrics"}

    def namespaces(peers: list[dict]) -> set[str]:
        return {
            ns
            for peer in peers
            for expr in peer.get("namespaceSelector", {}).get("matchExpressions", [])
            for ns in expr["values"]
        }

    assert namespaces(by_port["metrics"]) == {"monitoring"} and len(by_port["metrics"]) == 1
    assert "monitoring" not in namespaces(by_port["http"])
    assert namespaces(by_port["http"]) == {"ingress-nginx"}
    closed = render("--set", "networkPolicy.monitoringNamespaces=null")
    rules = of_kind(closed, "NetworkPolicy")["ferry"]["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == ["http"], "no monitoring namespace: the metrics port stays closed"


def test_a_load_balancer_never_exposes_the_metrics_port() -> None:
    services = of_kind(kv.render_scenario("auth-jwt"), "Service")
    main, metrics = services["ferry"], services["ferry-metrics"]
    assert main["spec"]["type"] == "LoadBalancer" and set(ports(main)) == {"http"}
    assert "ferry-serving.io/job" not in main["metadata"]["labels"]
    assert metrics["spec"]["type"] == "ClusterIP" and set(ports(metrics)) == {"metrics"}
    assert metrics["metadata"]["labels"]["ferry-serving.io/job"] == "ferry", "the ServiceMonitor scrapes this one"


# --- ingress body limits per path ----------------------------------------------------------------
def body_limit(ingress: dict) -> int:
    return int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"])


def test_stream_route_has_its_own_ingress_and_body_limit() -> None:
    docs = kv.render_scenario("ingress")
    data, ingresses = settings_of(docs), of_kind(docs, "Ingress")
    assert set(ingresses) == {"ferry", "ferry-stream"}
    assert body_limit(ingresses["ferry"]) == int(data["FERRY_API__MAX_BODY_BYTES"]) == 8388608
    assert body_limit(ingresses["ferry-stream"]) == int(data["FERRY_STREAM__MAX_BODY_BYTES"]) == 33554432
    paths = [p for r in ingresses["ferry-stream"]["spec"]["rules"] for p in r["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [(STREAM_PATH, "Exact")]
    assert ingresses["ferry-stream"]["spec"]["tls"] == ingresses["ferry"]["spec"]["tls"]
    hosts = {r["host"] for r in ingresses["ferry"]["spec"]["rules"]}
    assert {r["host"] for r in ingresses["ferry-stream"]["spec"]["rules"]} == hosts


def test_without_nginx_annotations_one_ingress_carries_every_path() -> None:
    ingresses = of_kind(render("--set", "ingress.nginxAnnotations=false", values="ingress-values.yaml"), "Ingress")
    assert set(ingresses) == {"ferry"}


# --- callbacks allowlist ports -------------------------------------------------------------------
def callback_allow_rule(docs: tuple[dict, ...]) -> dict:
    egress = of_kind(docs, "NetworkPolicy")["ferry"]["spec"]["egress"]
    found = [r for r in egress if r.get("to") == [{"namespaceSelector": {}}]]
    assert len(found) == 1, egress
    return found[0]


def test_allowlisted_callback_hosts_open_only_their_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kv.render_scenario("auth-api-key")
    data = settings_of(docs)
    assert json.loads(data["FERRY_CALLBACKS__ALLOW_HOSTS"]) == [
        "receiver.hooks.svc:8443",
        "https://audit.hooks.svc/ferry/",
    ]
    assert service_settings(data, monkeypatch).callbacks.allow_hosts == json.loads(data["FERRY_CALLBACKS__ALLOW_HOSTS"])
    assert {p["port"] for p in callback_allow_rule(docs)["ports"]} == {8443, 443}
    # Every form of an entry: host:port, [v6]:port, a plain host, URL prefixes with and without a port.
    forms = '["a.svc:9000","[fd00::1]:7443","b.svc","http://c.svc/x/","https://d.svc:8080/y/","https://e.svc:9000/"]'
    varied = render("--set-json", f"ferry.callbacks.allowHosts={forms}", values="auth-api-key-values.yaml")
    assert sorted(p["port"] for p in callback_allow_rule(varied)["ports"]) == [80, 443, 7443, 8080, 9000]
    # The public HTTPS rule stays as it was, private ranges excepted.
    public = [r for r in of_kind(docs, "NetworkPolicy")["ferry"]["spec"]["egress"] if "ipBlock" in r.get("to", [{}])[0]]
    assert public[0]["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert "10.0.0.0/8" in public[0]["to"][0]["ipBlock"]["except"]


def test_no_allowlist_no_extra_egress() -> None:
    docs = kv.render_scenario("worker-redis")
    egress = of_kind(docs, "NetworkPolicy")["ferry"]["spec"]["egress"]
    assert not [r for r in egress if r.get("to") == [{"namespaceSelector": {}}]]


# --- cross-value rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "names"),
    [
        (
            ("probes.readiness.periodSeconds=5", "probes.readiness.failureThreshold=3"),
            ("probes.readiness", "hangExitS"),
        ),
        (("ferry.inference.hangS=30",), ("ferry.inference.hangS", "ferry.deadline.maxS")),
        (("ferry.connections.maxEventStreams=4096",), ("maxEventStreams", "maxConnections")),
        (("ferry.metrics.port=8000",), ("ferry.metrics.port", "containerPort")),
        (("volumes.tmpSizeLimit=255Mi",), ("volumes.tmpSizeLimit", "ferry.jobs.maxStoreBytes")),
        (("ferry.jobs.maxStoreBytes=268435456",), ("volumes.tmpSizeLimit", "ferry.jobs.maxStoreBytes")),
    ],
)
def test_hardening_rules_are_refused_with_the_values_named(sets: tuple[str, ...], names: tuple[str, ...]) -> None:
    message = refusal(*[a for s in sets for a in ("--set", s)])
    for name in names:
        assert name in message, message


def test_hardening_rules_hold_at_their_boundaries() -> None:
    # 14 s of readiness failures < 15 s hang exit; 31 s > 30 s deadline; 4095 < 4096; 256Mi = 4/3 of 192 MiB.
    render(
        "--set", "probes.readiness.periodSeconds=7",
        "--set", "ferry.inference.hangS=31",
        "--set", "ferry.connections.maxEventStreams=4095",
        "--set", "volumes.tmpSizeLimit=256Mi",
    )  # fmt: skip
    # The volume rule is the SQLite store's: with Redis the store is not in the pod.
    render(
        "--set", "ferry.jobs.maxStoreBytes=1073741824",
        "--set", "ferry.jobs.store=redis",
        "--set", "ferry.jobs.redis.existingSecret=redis",
    )  # fmt: skip
    render("--set", "volumes.tmpSizeLimit=1Gi", "--set", "ferry.jobs.maxStoreBytes=805306368")
