"""The Helm chart, proven offline with the real helm binary (deploy/helm/ferry).

Every scenario of ``make helm-validate`` (scripts/k8s_validate.py, ci/*-values.yaml) is rendered once
per session; the tests assert what each must contain (CRD-gated objects render when their API is
offered, and only then), that the objects pass strict schemas, that broken values are refused with a
message naming them, and that the rendered numbers keep the timeout chain of docs/architecture.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402
from generate import load_slo  # noqa: E402

from support import notes  # noqa: E402
from support.helm import refusal  # noqa: E402

CHART = kv.CHART
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def objects(scenario: str, kind: str) -> list[dict]:
    return [d for d in kv.render_scenario(scenario) if d["kind"] == kind]


def one(scenario: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(scenario, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{scenario}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: tuple[dict, ...]) -> list[tuple[str, dict]]:
    """(workload name, pod template) of every ferry Deployment and Rollout (not the load-test gate's)."""
    return [
        (d["metadata"]["name"], d["spec"]["template"])
        for d in docs
        if d["kind"] in ("Deployment", "Rollout") and d["metadata"]["labels"]["app.kubernetes.io/name"] == "ferry"
    ]


def settings_of(docs: tuple[dict, ...]) -> dict[str, str]:
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ferry")["data"]


# --- scenarios -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", list(kv.SCENARIOS))
def test_scenario_renders_its_kinds(scenario: str) -> None:
    docs = kv.render_scenario(scenario)
    assert kv.check_kinds(scenario, docs) == [], kv.kinds(docs)


def test_every_ci_values_file_is_a_scenario() -> None:
    files = {p.name for p in (CHART / "ci").glob("*-values.yaml")}
    assert files == {s.values for s in kv.SCENARIOS.values()}
    assert {
        "default",
        "canary",
        "rollout",
        "autoscaling-keda",
        "monitoring",
        "ingress",
        "worker-redis",
        "minimal",
    } <= set(kv.SCENARIOS)


def test_crd_kinds_render_in_their_scenarios() -> None:
    """Each custom resource is really there when its scenario offers the API (offline, a template
    gated on an API renders nothing unless helm is told the API exists)."""
    where = {
        "ServiceMonitor": "monitoring",
        "PrometheusRule": "monitoring",
        "AlertmanagerConfig": "monitoring",
        "Rollout": "rollout",
        "AnalysisTemplate": "rollout",
        "ScaledObject": "autoscaling-keda",
    }
    for kind, scenario in where.items():
        assert objects(scenario, kind), f"{kind} missing from scenario {scenario}"


def test_monitoring_objects_need_their_api() -> None:
    """Offline without --api-versions, the CRD-gated objects are skipped (and only then)."""
    docs = kv.documents(kv.helm_template([CHART / "ci/monitoring-values.yaml"]))
    assert not {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"} & set(kv.kinds(docs))


@pytest.mark.parametrize("scenario", list(kv.SCENARIOS))
def test_core_objects_pass_kubernetes_validate_strict(scenario: str) -> None:
    docs = tuple(d for d in kv.render_scenario(scenario) if kv.is_core(d))
    problems, counted = kv.validate_docs(scenario, docs)
    assert problems == []
    assert counted["core"] == len(docs) > 0


def test_custom_resources_pass_strict_crd_schemas() -> None:
    """Against the schemas vendored in deploy/crds: no directory outside the repository, no skip."""
    checked: dict[str, int] = {}
    for scenario in kv.SCENARIOS:
        docs = tuple(d for d in kv.render_scenario(scenario) if not kv.is_core(d))
        problems, counted = kv.validate_docs(scenario, docs)
        assert problems == []
        assert counted["custom"] == len(docs)
        for kind, count in kv.kinds(docs).items():
            checked[kind] = checked.get(kind, 0) + count
    assert set(checked) == {
        "Rollout",
        "AnalysisTemplate",
        "ServiceMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "ScaledObject",
        "HTTPRoute",
    }


def test_a_kind_without_a_schema_fails() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    problems, counted = kv.validate_docs("x", (unknown,))
    assert counted["custom"] == 1 and len(problems) == 1 and "no schema example.com/widget_v1.json" in problems[0]
    # A known kind at a version with no schema fails the same way.
    monitor = {**one("monitoring", "ServiceMonitor"), "apiVersion": "monitoring.coreos.com/v2"}
    problems, _ = kv.validate_docs("x", (monitor,))
    assert len(problems) == 1 and "no schema monitoring.coreos.com/servicemonitor_v2.json" in problems[0]
    rollout = dict(one("rollout", "Rollout"))
    rollout["spec"] = {**rollout["spec"], "stratgy": {}}  # a misspelt field
    problems, _ = kv.validate_docs("x", (rollout,))
    assert problems and "stratgy" in problems[0]


# --- broken values -------------------------------------------------------------------------------
BROKEN = {
    "misspelt top-level key": (["--set", "servicemonitor.enabled=true"], r"additional properties 'servicemonitor'"),
    "misspelt nested key": (["--set", "ferry.deadline.maxSeconds=10"], r"additional properties 'maxSeconds'"),
    "wrong type": (["--set", "replicaCount=two"], r"/replicaCount'?: got string, want integer"),
    "wrong enum": (["--set", "image.pullPolicy=Sometimes"], r"/image/pullPolicy'?: value must be one of"),
    "out of range": (["--set", "autoscaling.targetCPUUtilizationPercentage=150"], r"maximum: got 150, want 100"),
    "bad digest": (["--set", "image.digest=sha256:nothex"], r"/image/digest"),
    "canary without an image": (
        ["--set", "canary.enabled=true"],
        r"canary.enabled requires canary.image.tag or canary.image.digest",
    ),
    "minReplicas > maxReplicas": (
        ["--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=3"],
        r"autoscaling.minReplicas \(5\) must not exceed autoscaling.maxReplicas \(3\)",
    ),
    "keda minReplicas > maxReplicas": (
        [
            "-f",
            str(CHART / "ci/autoscaling-keda-values.yaml"),
            "--set",
            "keda.minReplicas=9",
            "--set",
            "keda.maxReplicas=2",
        ],
        r"keda.minReplicas \(9\) must not exceed keda.maxReplicas \(2\)",
    ),
    "grace period shorter than the shutdown chain": (
        ["--set", "lifecycle.terminationGracePeriodSeconds=20"],
        r"terminationGracePeriodSeconds \(20\) must be at least .* = 50, or pods are killed while they still drain",
    ),
    "graceful timeout shorter than the longest request": (
        ["--set", "ferry.server.gracefulTimeoutS=30"],
        r"ferry.server.gracefulTimeoutS \(30\) must exceed ferry.deadline.maxS \(30\)",
    ),
    "deadline not below the gunicorn timeout": (
        ["--set", "ferry.server.timeoutS=30"],
        r"ferry.deadline.maxS \(30\) must be below ferry.server.timeoutS \(30\)",
    ),
    "keep-alive not above the LB idle timeout": (
        ["--set", "ferry.server.keepaliveS=60"],
        r"keepaliveS \(60\) must exceed loadBalancerIdleTimeoutSeconds \(60\), or .* reuses .*: random 502s",
    ),
    "ingress timeout not above the deadline": (
        ["--set", "ingress.enabled=true", "--set", "ingress.timeoutSeconds=30"],
        r"ingress.timeoutSeconds \(30\) must exceed ferry.deadline.maxS \(30\)",
    ),
    "worker without redis": (["--set", "worker.enabled=true"], r"worker.enabled needs ferry.jobs.store=redis"),
    "redis without a secret": (["--set", "ferry.jobs.store=redis"], r"needs ferry.jobs.redis.existingSecret"),
    "callbacks without a secret": (["--set", "ferry.callbacks.enabled=true"], r"needs ferry.callbacks.existingSecret"),
    "canary and rollout together": (
        ["--set", "canary.enabled=true", "--set", "canary.image.tag=v1", "--set", "rollout.enabled=true"],
        r"canary.enabled and rollout.enabled are exclusive",
    ),
    "a setting the chart owns in extraSettings": (
        ["--set", "ferry.extraSettings.FERRY_PORT=9000"],
        r"ferry.extraSettings.FERRY_PORT is set by the chart",
    ),
    "not a FERRY_ setting in extraSettings": (
        ["--set", "ferry.extraSettings.PATH=/x"],
        r"'PATH' does not match pattern '\^FERRY_",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_values_are_rejected_with_a_clear_message(case: str) -> None:
    args, message = BROKEN[case]
    stderr = refusal(kv.HELM, CHART, *args)
    assert re.search(message, stderr), stderr


def test_values_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path or "/")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    # `global` is shared with a parent chart, whose other globals (storageClass, ...) must not fail the install.
    assert loose == ["/properties/global"]

    def resolve(node: dict) -> dict:
        """Follow `$ref` (to definitions or properties) and `allOf` to the node that has the properties."""
        while True:
            if "$ref" in node:
                target: object = schema
                for key in node["$ref"].removeprefix("#/").split("/"):
                    target = target[key]  # type: ignore[index]
                node = target  # type: ignore[assignment]
            elif "allOf" in node:
                node = next(n for n in node["allOf"] if "$ref" in n or "properties" in n)
            else:
                return node

    def has(schema_node: dict, parts: list[str]) -> bool:
        for part in parts:
            schema_node = resolve(schema_node)
            props = schema_node.get("properties", {})
            if part not in props:
                return schema_node.get("type") == "object" and "properties" not in schema_node
            schema_node = props[part]
        return True

    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: object, prefix: list[str]) -> list[list[str]]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, [*prefix, k])]
        return [prefix]

    assert [".".join(p) for p in leaves(values, []) if not has(schema, p)] == []


def test_every_value_is_documented() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import chart_values
    import generate_deploy

    text = (CHART / "values.yaml").read_text()
    documented, _ = chart_values.comments(text)
    assert "autoscaling.minReplicas" in documented and "rollout.analysis.maxBurnRate" in documented
    readme = generate_deploy.chart_readme()  # raises on a value without `# --`
    assert "| `canary.image.tag` |" in readme


# --- the timeout chain, as rendered ----------------------------------------------------------------
@pytest.mark.parametrize("scenario", list(kv.SCENARIOS))
def test_timeout_chain_as_rendered(scenario: str) -> None:
    docs = kv.render_scenario(scenario)
    env = settings_of(docs)
    deadline_max = float(env["FERRY_DEADLINE__MAX_S"])
    assert deadline_max < float(env["FERRY_SERVER__TIMEOUT_S"]), "request deadline must stay below gunicorn timeout"
    assert float(env["FERRY_DEADLINE__DEFAULT_S"]) <= deadline_max
    drain, graceful = float(env["FERRY_SERVER__DRAIN_GRACE_S"]), float(env["FERRY_SERVER__GRACEFUL_TIMEOUT_S"])
    assert drain < graceful
    assert deadline_max + drain + 1 < graceful, "the longest request must finish within the graceful timeout"
    assert int(env["FERRY_SERVER__KEEPALIVE_S"]) > 60, "keep-alive above the LB idle timeout, or random 502s"
    for name, template in pod_specs(docs):
        spec = template["spec"]
        container = spec["containers"][0]
        pre_stop = container["lifecycle"]["preStop"]
        sleep = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
        grace = spec["terminationGracePeriodSeconds"]
        assert sleep + drain < grace, f"{name}: preStop {sleep} + drain {drain} >= grace {grace}"
        assert sleep + graceful < grace, f"{name}: preStop {sleep} + graceful {graceful} >= grace {grace}"
    for deployment in objects(scenario, "Deployment"):
        if deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "ferry":  # not the gate's workers
            assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for ingress in objects(scenario, "Ingress"):
        annotations = ingress["metadata"]["annotations"]
        assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > deadline_max
        # Each route's own limit: the stream route's Ingress carries only that path (test_chart_hardening.py).
        stream = ingress["metadata"]["name"].endswith("-stream")
        limit = env["FERRY_STREAM__MAX_BODY_BYTES" if stream else "FERRY_API__MAX_BODY_BYTES"]
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) == int(limit)


def test_ingress_body_limit_follows_the_app_setting() -> None:
    """Raise the app's limits and the proxy's follows (ingress-nginx refuses bodies over 1 MiB by default)."""
    docs = kv.documents(
        kv.helm_template(
            [CHART / "ci/ingress-values.yaml"],
            (),
            "--set",
            "ferry.stream.maxBodyBytes=134217728",
        )
    )
    ingress = next(d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] == "ferry-stream")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "134217728"
    assert settings_of(tuple(docs))["FERRY_STREAM__MAX_BODY_BYTES"] == "134217728"


# --- pods -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", list(kv.SCENARIOS))
def test_pod_hardening(scenario: str) -> None:
    for name, template in pod_specs(kv.render_scenario(scenario)):
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        container = spec["containers"][0]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts and settings_of(kv.render_scenario(scenario))["FERRY_METRICS__DIR"] in mounts
        assert "checksum/config" in template["metadata"]["annotations"]
    for deployment in objects(scenario, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if labels["app.kubernetes.io/component"] == "api":
            track = labels["track"]
            assert deployment["spec"]["selector"]["matchLabels"]["track"] == track in ("stable", "canary")


def test_canary_runs_its_own_image_and_shares_the_main_service() -> None:
    stable, canary = one("canary", "Deployment", "ferry"), one("canary", "Deployment", "ferry-canary")
    stable_image = stable["spec"]["template"]["spec"]["containers"][0]["image"]
    canary_image = canary["spec"]["template"]["spec"]["containers"][0]["image"]
    assert canary_image.endswith(":0.2.0") and canary_image != stable_image
    main = one("canary", "Service", "ferry")
    assert "track" not in main["spec"]["selector"], "the main Service spans both tracks"
    assert one("canary", "Service", "ferry-canary")["spec"]["selector"]["track"] == "canary"
    # The two Deployments differ only where they must.
    a, b = stable["spec"]["template"]["spec"], canary["spec"]["template"]["spec"]
    assert {**a, "containers": None} == {**b, "containers": None}


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    docs = kv.documents(kv.helm_template(None, (), "--set", f"image.digest={digest}", "--set", "image.tag=9.9"))
    image = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/ferry-serving/ferry@{digest}"


def test_config_change_rolls_the_pods() -> None:
    def checksum(*extra: str) -> str:
        docs = kv.documents(kv.helm_template(None, (), *extra))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "ferry.logLevel=DEBUG")


# --- monitoring -----------------------------------------------------------------------------------
def test_service_monitor_scrapes_the_job_the_rules_use() -> None:
    monitor = one("monitoring", "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", "selector label"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "rollouts-pod-template-hash" in monitor["spec"]["podTargetLabels"]
    label = monitor["spec"]["jobLabel"]
    scraped = [s for s in objects("monitoring", "Service") if label in s["metadata"]["labels"]]
    # The job is the release's full name ("ferry" for the release "ferry"; tests/deploy/test_chart_releases.py).
    assert [s["metadata"]["labels"][label] for s in scraped] == ["ferry"]
    # Only the main Service is scraped: the stable/canary Services would scrape pods twice.
    assert [s["metadata"]["name"] for s in objects("rollout", "Service") if label in s["metadata"]["labels"]] == [
        "ferry"
    ]


def test_prometheus_rule_is_the_generated_rules_file() -> None:
    """The generated rules, scoped: deploy/rules/ferry.rules.yaml selects job="ferry" in any namespace,
    the release "ferry" in namespace "ferry" selects job="ferry",namespace="ferry", and its runbook links
    are pinned to the chart's version; nothing else differs (the release's labels by default are the
    SLO file's; tests/deploy/test_chart_alert_labels.py sets them from values)."""
    rule = one("monitoring", "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack", "selector label"
    generic = (ROOT / "deploy/rules/ferry.rules.yaml").read_text()
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    scoped = (
        generic.replace('job="ferry"', 'job="ferry",namespace="ferry"')
        .replace('job=~"ferry|ferry-worker"', 'job=~"ferry|ferry-worker",namespace="ferry"')
        .replace("/ferry/blob/main/docs/runbooks/", f"/ferry/blob/v{version}/docs/runbooks/")
    )
    assert rule["spec"] == yaml.safe_load(scoped)


def test_dashboards_configmap() -> None:
    configmap = one("monitoring", "ConfigMap", "ferry-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "ferry"}
    boards = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    rendered = {k.removeprefix("ferry-ferry-"): json.loads(v) for k, v in configmap["data"].items()}
    assert set(rendered) == set(boards), "one key per dashboard, prefixed by namespace and release"
    for name, board in boards.items():
        # The panels are the generated ones, their runbook links those of the chart's version; the
        # variables, uid and title name the release.
        pinned = f"https://github.com/ferry-serving/ferry/blob/v{CHART_VERSION}/docs/runbooks"
        generic = json.dumps(board["panels"]).replace(load_slo()["runbook_base_url"].rstrip("/"), pinned)
        assert rendered[name]["panels"] == json.loads(generic)
        assert rendered[name]["links"][1]["url"] == pinned
        variables = {v["name"]: v for v in rendered[name]["templating"]["list"]}
        assert variables["namespace"]["current"]["value"] == "ferry" and variables["job"]["current"]["value"] == "ferry"
        assert rendered[name]["uid"].startswith(board["uid"] + "-") and len(rendered[name]["uid"]) <= 40


# --- progressive delivery ----------------------------------------------------------------------------
def test_rollout_canary_steps_and_services() -> None:
    rollout = one("rollout", "Rollout")
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["stableService"] == "ferry-stable" and canary["canaryService"] == "ferry-canary"
    assert canary["canaryMetadata"]["labels"]["track"] == "canary"
    assert canary["maxUnavailable"] == 0
    analysis = [s["analysis"] for s in canary["steps"] if "analysis" in s]
    assert len(analysis) == 1
    args = {a["name"]: a for a in analysis[0]["args"]}
    assert args["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    assert analysis[0]["templates"] == [{"templateName": one("rollout", "AnalysisTemplate")["metadata"]["name"]}]
    assert any("setWeight" in s for s in canary["steps"]) and any("pause" in s for s in canary["steps"])
    hpa = one("rollout", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "ferry"}
    assert "track" not in rollout["spec"]["selector"]["matchLabels"]


def test_analysis_template_follows_the_slo_and_guards_no_data() -> None:
    """No-data policy: thresholds from deploy/slo.yaml; empty/NaN results are Inconclusive, never pass or fail."""
    slo = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())["rollout"]["analysis"]
    template = one("rollout", "AnalysisTemplate")
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    expected = {
        "error-ratio": values["maxBurnRate"] * (1 - slo["objectives"]["availability"]["target"]),
        "latency-slow-ratio": values["maxBurnRate"] * (1 - slo["objectives"]["latency"]["target"]),
    }
    for name, threshold in expected.items():
        metric = metrics[name]
        query = metric["provider"]["prometheus"]["query"]
        assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in query
        assert f'job="{slo["job"]}"' in query
        assert "or vector(0)" in query and ") > 0" in query, "no traffic must give an empty result, not NaN or 0"
        for condition in (metric["successCondition"], metric["failureCondition"]):
            assert condition.startswith("len(result) > 0 && !isNaN(result[0]) && ")
            assert abs(float(re.findall(r"[0-9.e-]+$", condition)[0]) - threshold) < 1e-12
        assert metric["failureLimit"] == 0 and metric["inconclusiveLimit"] == values["inconclusiveLimit"]
    assert (
        f'le="{slo["objectives"]["latency"]["threshold_s"]}"'
        in metrics["latency-slow-ratio"]["provider"]["prometheus"]["query"]
    )
    gate = metrics["slo-gate"]["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]
    assert gate["command"] == values["gate"]["command"] and gate["args"] == values["gate"]["args"]
    assert {"name": "LOCUST_HOST", "value": "http://ferry-canary.ferry.svc:80"} in gate["env"]
    assert gate["image"] == "ghcr.io/ferry-serving/ferry-loadtest:0.1.0"


def test_analysis_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make tools installs it)")
    template = one("rollout", "AnalysisTemplate")
    rules = []
    for metric in template["spec"]["metrics"]:
        if "prometheus" in metric["provider"]:
            query = metric["provider"]["prometheus"]["query"]
            query = query.replace("{{args.canary-hash}}", "abc123").replace("{{args.namespace}}", "ferry")
            rules.append({"record": f"test:{metric['name'].replace('-', '_')}", "expr": query})
    keda = one("autoscaling-keda", "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    rules.append({"record": "test:queue_depth", "expr": keda})
    path = tmp_path / "analysis.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "analysis", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keda_scales_the_worker_on_queue_depth() -> None:
    scaled = one("autoscaling-keda", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ferry-worker"
    assert scaled["spec"]["minReplicaCount"] == 0, "scale to zero"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"].startswith("max(ferry_jobs_queue_depth{")
    worker = one("autoscaling-keda", "Deployment", "ferry-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replicas"
    assert settings_of(kv.render_scenario("autoscaling-keda"))["FERRY_JOBS__RUNNERS"] == "0"
    hpa = one("autoscaling-keda", "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0


def test_worker_pods_and_secrets() -> None:
    worker = one("worker-redis", "Deployment", "ferry-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "ferry", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FERRY_JOBS__REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ferry-redis", "key": "redis-url"}
    assert env["FERRY_CALLBACKS__SIGNING_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "ferry-callbacks"
    assert env["FERRY_JOBS__RUNNERS"]["value"] == "2"
    assert settings_of(kv.render_scenario("worker-redis"))["FERRY_JOBS__STORE"] == "redis"
    assert "FERRY_JOBS__REDIS_URL" not in settings_of(kv.render_scenario("worker-redis")), (
        "secrets stay out of the ConfigMap"
    )


def test_network_policy_egress_follows_the_features() -> None:
    def egress_ports(scenario: str) -> set[int]:
        policy = one(scenario, "NetworkPolicy")
        return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}

    assert egress_ports("default") == {53}
    assert egress_ports("worker-redis") == {53, 6379, 443}
    callbacks = next(
        rule
        for rule in one("worker-redis", "NetworkPolicy")["spec"]["egress"]
        if any(p["port"] == 443 for p in rule["ports"])
    )
    block = callbacks["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])
    ingress = one("default", "NetworkPolicy")["spec"]["ingress"][0]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]


def render_notes(tmp_path: Path, *extra: str) -> str:
    return notes.render_notes(kv.HELM, CHART, tmp_path, *extra)


def test_notes_say_where_things_land(tmp_path: Path) -> None:
    api_versions = [a for v in kv.MONITORING for a in ("--api-versions", v)]
    offline = render_notes(tmp_path)
    assert "port-forward svc/ferry" in offline and "helm test ferry" in offline
    assert "ServiceMonitor NOT rendered" in offline, "say so when the API is missing"
    pinned = ["--set", "model.sha256=" + "a" * 64]  # an unpinned model is warned about too (test_chart_model.py)
    monitored = render_notes(tmp_path, "-f", str(CHART / "ci/monitoring-values.yaml"), *api_versions, *pinned)
    assert "ServiceMonitor ferry" in monitored and "grafana_dashboard" in monitored
    assert "WARNING" not in monitored
    unlabelled = render_notes(tmp_path, *api_versions)
    assert "release: <its release name>" in unlabelled, "warn when the selector label is missing"
    rollout = render_notes(tmp_path, "-f", str(CHART / "ci/rollout-values.yaml"))
    assert "kubectl argo rollouts promote ferry" in rollout and "abort" in rollout


def test_loadtest_job_runs_the_gate_distributed_over_workers() -> None:
    docs = kv.render_scenario("loadtest")
    job = one("loadtest", "Job")
    master = job["spec"]["template"]["spec"]["containers"][0]
    assert master["args"][-5:] == ["--master", "--expect-workers", "2", "--master-bind-port", "5557"]
    assert {"name": "LOCUST_HOST", "value": "http://ferry.ferry.svc:80"} in master["env"], "targets the stable Service"
    worker = one("loadtest", "Deployment", "ferry-slo-gate-worker")
    assert worker["spec"]["replicas"] == 2
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--master-host") + 1] == "ferry-slo-gate" and "--worker" in args
    for pod in (job["spec"]["template"]["spec"], worker["spec"]["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
        hardening = pod["containers"][0]["securityContext"]
        assert hardening["readOnlyRootFilesystem"] and hardening["capabilities"]["drop"] == ["ALL"]
    service = one("loadtest", "Service", "ferry-slo-gate")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "locust-master"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "locust-master"
    # The release's Services must never send user traffic to a gate pod.
    for svc in (d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "ferry-slo-gate"):
        selector = svc["spec"]["selector"].items()
        for pod in (job["spec"]["template"], worker["spec"]["template"]):
            assert not selector <= pod["metadata"]["labels"].items(), (svc["metadata"]["name"], pod["metadata"])
    single = kv.render_scenario("loadtest", "--set", "loadtest.workers=0")
    assert [d["kind"] for d in single if "slo-gate" in d["metadata"]["name"]] == ["Job"]
    alone = next(d for d in single if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    assert "--master" not in alone["args"] and "ports" not in alone
