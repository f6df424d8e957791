"""The chart's escape hatches, Gateway API route and generated values schema, with the real helm.

Each escape hatch (Bitnami / ``helm create`` names) is set in ``ci/escape-hatches-values.yaml`` on a
release with every kind of pod the chart makes (API Rollout, worker, model fetch, the load-test gate's
Job, workers and analysis Job, the helm test pod); the tests look for each where a platform team
expects it. The scenarios render once per session (``scripts/k8s_validate.py``), a few extra renders
cover what one file cannot (``tests.enabled=false``, refusals).
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import chart_values  # noqa: E402
import k8s_validate as kv  # noqa: E402

from support.helm import refusal  # noqa: E402

CHART = kv.CHART
HATCHES = yaml.safe_load((CHART / "ci/escape-hatches-values.yaml").read_text())
MIRROR = HATCHES["global"]["imageRegistry"]


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(*args: str) -> tuple[dict, ...]:
    return tuple(kv.documents(kv.helm_template(None, (), *args)))


def pod_specs(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """(where, pod spec) of every pod the objects make: a dict with `containers` is a pod spec."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            yield from pod_specs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_specs(value, f"{where}/{i}")


def all_pods(docs: tuple[dict, ...]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}{w}", spec) for d in docs for w, spec in pod_specs(d)]


def image_refs(docs: tuple[dict, ...]) -> list[str]:
    """Every image reference rendered: containers, init containers and image volumes of every pod."""
    refs = []
    for _, spec in all_pods(docs):
        refs += [c["image"] for c in spec["containers"] + spec.get("initContainers", [])]
        refs += [v["image"]["reference"] for v in spec.get("volumes", []) if "image" in v]
    return refs


def one(docs: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- images and registries -------------------------------------------------------------------------
def test_global_image_registry_changes_every_image_reference() -> None:
    with_mirror = ("--set", f"global.imageRegistry={MIRROR}")
    docs = {
        "escape-hatches": kv.render_scenario("escape-hatches"),
        "canary": tuple(kv.documents(kv.helm_template([CHART / "ci/canary-values.yaml"], (), *with_mirror))),
        "model-image-volume": tuple(
            kv.documents(kv.helm_template([CHART / "ci/model-image-volume-values.yaml"], (), *with_mirror))
        ),
    }
    for name, rendered in docs.items():
        refs = image_refs(rendered)
        assert refs, name
        assert [r for r in refs if not r.startswith(f"{MIRROR}/")] == [], name
    # Every kind of image is among them: service, gate, test, model fetch, model image volume, the user's.
    refs = {r for rendered in docs.values() for r in image_refs(rendered)}
    for expected in (
        f"{MIRROR}/ferry-serving/ferry:0.1.0",  # service, worker, model-fetch init container
        f"{MIRROR}/ferry-serving/ferry-loadtest:0.1.0",  # gate Job, its workers, the analysis Job
        f"{MIRROR}/ferry-serving/ferry-test:0.1.0",  # helm test pod
        f"{MIRROR}/library/busybox:1.37",  # an initContainer's docker.io/library/busybox: host replaced
        f"{MIRROR}/fluent/fluent-bit:4.0",  # a sidecar's short name
    ):
        assert expected in refs, sorted(refs)
    volume = yaml.safe_load((CHART / "ci/model-image-volume-values.yaml").read_text())["model"]["imageVolume"]
    reference = volume["reference"].split("/", 1)[1]
    assert f"{MIRROR}/{reference}" in refs, "the model's image volume goes through the mirror too"


def test_image_registry_and_repositories_with_a_host() -> None:
    default = image_refs(kv.render_scenario("default"))
    assert set(default) == {"ghcr.io/ferry-serving/ferry:0.1.0"}  # image.registry + image.repository
    docs = render(
        "--set",
        "image.registry=registry.internal:5000",
        "--set",
        "tests.image.repository=registry.example/ferry-test",
    )
    refs = set(image_refs(docs))
    # A repository that names its host keeps it (values written before image.registry existed).
    assert refs == {"registry.internal:5000/ferry-serving/ferry:0.1.0", "registry.example/ferry-test:0.1.0"}


# --- pods ----------------------------------------------------------------------------------------------
def test_pull_secrets_scheduling_and_security_on_every_pod() -> None:
    pods = all_pods(kv.render_scenario("escape-hatches"))
    names = {where.split("/")[0] + "/" + where.split("/")[1] for where, _ in pods}
    # API (Rollout), worker, gate Job and its workers, the Rollout's analysis Job, the helm test pod.
    assert names == {
        "Rollout/ferry",
        "Deployment/ferry-worker",
        "Job/ferry-slo-gate",
        "Deployment/ferry-slo-gate-worker",
        "AnalysisTemplate/ferry-slo",
        "Pod/ferry-test-predict",
    }
    for where, spec in pods:
        assert [s["name"] for s in spec["imagePullSecrets"]] == ["mirror-pull", "team-pull", "legacy-pull"], where
        assert spec["nodeSelector"] == HATCHES["nodeSelector"], where
        assert spec["tolerations"] == HATCHES["tolerations"], where
        assert spec["affinity"] == HATCHES["affinity"], where
        assert spec["securityContext"] == HATCHES["podSecurityContext"], where
        for container in spec["containers"] + spec.get("initContainers", []):
            if container["name"] in ("wait-for-proxy", "log-shipper"):
                continue  # the user's own containers keep their own securityContext
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, (where, container["name"])


def test_ferry_pods_get_extra_env_volumes_and_containers() -> None:
    docs = kv.render_scenario("escape-hatches")
    for name in ("Rollout/ferry", "Deployment/ferry-worker"):
        kind, _, object_name = name.partition("/")
        template = one(docs, kind, object_name)["spec"]["template"]
        spec, ferry = template["spec"], template["spec"]["containers"][0]
        assert [c["name"] for c in spec["containers"]] == [ferry["name"], "log-shipper"], name
        assert [c["name"] for c in spec["initContainers"]] == ["model-fetch", "wait-for-proxy"], name
        assert ferry["env"][-1] == HATCHES["extraEnv"][0], "extraEnv comes after the chart's variables"
        assert ferry["envFrom"][0]["configMapRef"]["name"] == "ferry"
        assert ferry["envFrom"][1:] == HATCHES["extraEnvFrom"]
        assert HATCHES["extraVolumes"][0] in spec["volumes"]
        assert HATCHES["extraVolumeMounts"][0] in ferry["volumeMounts"]
        labels, annotations = template["metadata"]["labels"], template["metadata"]["annotations"]
        assert labels["sidecar.istio.io/inject"] == "false" and labels["cost-center"] == "ml-1234", name
        assert annotations["example.com/scrape"] == "true" and "checksum/config" in annotations, name


def test_common_labels_and_annotations_on_every_object() -> None:
    docs = kv.render_scenario("escape-hatches")
    assert len(docs) > 15
    for doc in docs:
        meta = doc["metadata"]
        assert meta["labels"]["cost-center"] == "ml-1234", f"{doc['kind']}/{meta['name']}"
        assert meta["annotations"]["example.com/owner"] == "ml-platform", f"{doc['kind']}/{meta['name']}"
    # And on every pod, the gate's and the test's included.
    for where, _ in all_pods(docs):
        kind, name = where.split("/")[:2]
        doc = one(docs, kind, name)
        template = (
            doc
            if kind == "Pod"
            else doc["spec"].get("template") or doc["spec"]["metrics"][-1]["provider"]["job"]["spec"]["template"]
        )
        assert template["metadata"]["labels"]["cost-center"] == "ml-1234", where
    # An object's own annotations stay beside them.
    assert one(docs, "Pod")["metadata"]["annotations"]["helm.sh/hook"] == "test"
    ingress = one(docs, "Ingress", "ferry")["metadata"]["annotations"]
    assert "nginx.ingress.kubernetes.io/proxy-read-timeout" in ingress


def test_tests_enabled_false_renders_no_test_pod() -> None:
    assert [d for d in kv.render_scenario("default") if d["kind"] == "Pod"]
    assert [d for d in render("--set", "tests.enabled=false") if d["kind"] == "Pod"] == []


def test_openshift_scenario_leaves_uid_and_fs_group_to_the_platform() -> None:
    pods = all_pods(kv.render_scenario("openshift"))
    assert {where.split("/")[0] for where, _ in pods} == {"Deployment", "Job", "Pod"}  # API, gate, helm test
    for where, spec in pods:
        security = spec["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(security), (where, security)
        assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            assert "runAsUser" not in container["securityContext"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


# --- services, routing, scaling, monitoring ---------------------------------------------------------------
def test_service_ingress_pdb_and_hpa_hatches() -> None:
    docs = kv.render_scenario("escape-hatches")
    service = one(docs, "Service", "ferry")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    assert service["metadata"]["labels"]["example.com/exposure"] == "internal"
    paths = one(docs, "Ingress", "ferry")["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1", "Prefix"), ("/readyz", "Exact")]
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == "50%" and "maxUnavailable" not in pdb
    assert one(kv.render_scenario("default"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m.get("resource", {}).get("name", m["type"]) for m in metrics] == ["cpu", "memory", "External"]
    assert metrics[1]["resource"]["target"]["averageUtilization"] == 80
    assert metrics[2] == HATCHES["autoscaling"]["metrics"][0]
    # A plain host name (the older shape) still means path / Prefix.
    legacy = one(kv.render_scenario("ingress"), "Ingress", "ferry")["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in legacy] == [("/", "Prefix")]


def test_monitoring_and_keda_hatches() -> None:
    docs = kv.render_scenario("escape-hatches")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [kv.NAMESPACE], "still scrapes the release"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["interval"] == "15s"
    assert endpoint["relabelings"] == HATCHES["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == HATCHES["serviceMonitor"]["metricRelabelings"]
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    assert groups[-1] == {"name": "ferry-additional", "rules": HATCHES["prometheusRule"]["additionalRules"]}
    assert len(groups) > 1, "the chart's own groups stay"
    dashboards = one(docs, "ConfigMap", "ferry-dashboards")["metadata"]
    assert dashboards["namespace"] == "grafana" and dashboards["labels"]["team"] == "ml"
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": "prometheus-auth"}


def test_http_route_follows_the_timeout_chain_and_the_crd_schema() -> None:
    docs = kv.render_scenario("httproute")
    route = one(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert kv.validate_cr(route) == []
    values = yaml.safe_load((CHART / "ci/httproute-values.yaml").read_text())["httpRoute"]
    spec = route["spec"]
    assert spec["parentRefs"] == values["parentRefs"] and spec["hostnames"] == values["hostnames"]
    assert route["metadata"]["annotations"] == values["annotations"]
    deadline = float(one(docs, "ConfigMap", "ferry")["data"]["FERRY_DEADLINE__MAX_S"])
    assert len(spec["rules"]) == 2
    for rule, given in zip(spec["rules"], values["rules"], strict=True):
        assert rule["matches"] == given["matches"] and rule.get("filters") == given.get("filters")
        assert rule["backendRefs"] == [{"name": "ferry", "port": 80}]
        request = int(rule["timeouts"]["request"].removesuffix("s"))
        assert request == int(rule["timeouts"]["backendRequest"].removesuffix("s")) == 40 > deadline
    # The schema is the strict one: a misspelt field of the route fails.
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["timeout"] = broken["spec"]["rules"][0].pop("timeouts")
    assert any("'timeout' was unexpected" in p for p in kv.validate_cr(broken))


# --- refusals -------------------------------------------------------------------------------------------
REFUSED = {
    # Kubernetes objects passed through take the strict Kubernetes / CRD schemas: a typo fails at install.
    "misspelt pod security field": (["--set", "podSecurityContext.runAsUsr=1"], r"'/podSecurityContext'.*'runAsUsr'"),
    "misspelt sidecar field": (
        ["--set", "sidecars[0].name=x", "--set", "sidecars[0].imag=y"],
        r"'/sidecars/0'.*'imag'",
    ),
    "misspelt volume mount field": (
        ["--set", "extraVolumeMounts[0].mountPth=/x"],
        r"'/extraVolumeMounts/0'.*'mountPth'",
    ),
    "misspelt toleration field": (["--set", "tolerations[0].efect=NoSchedule"], r"'/tolerations/0'.*'efect'"),
    "misspelt route parent field": (
        ["--set", "httpRoute.parentRefs[0].name=gw", "--set", "httpRoute.parentRefs[0].sectionNme=x"],
        r"'/httpRoute/parentRefs/0'.*'sectionNme'",
    ),
    "misspelt relabeling field": (
        ["--set", "serviceMonitor.relabelings[0].sourcelabels={a}"],
        r"'/serviceMonitor/relabelings/0'.*'sourcelabels'",
    ),
    "empty image repository": (["--set", "image.repository="], r"'/image/repository'.*minLength"),
    "misspelt escape hatch": (
        ["--set", "serviceMonitor.relabeling[0].action=drop"],
        r"at '/serviceMonitor'.*'relabeling'",
    ),
    "misspelt nested key": (
        ["--set", "httpRoute.parentRefs[0].name=x", "--set", "httpRoute.hostname=x"],
        r"'/httpRoute'.*'hostname'",
    ),
    "misspelt keda key": (["--set", "keda.authenticationRef.nam=x"], r"'/keda/authenticationRef'.*'nam'"),
    "misspelt test key": (["--set", "tests.enabeld=false"], r"'/tests'.*'enabeld'"),
    "pull secret object without a name": (["--set", "imagePullSecrets[0].nme=x"], r"/imagePullSecrets/0"),
    "pdb with both bounds": (
        ["--set", "pdb.minAvailable=1", "--set", "pdb.maxUnavailable=1"],
        r"pdb.minAvailable \(1\) and pdb.maxUnavailable \(1\) are exclusive",
    ),
    "common label the chart owns": (
        ["--set", "commonLabels.track=x"],
        r"commonLabels.track is a label the chart sets itself",
    ),
    "route timeout not above the deadline": (
        ["--set", "httpRoute.enabled=true", "--set", "httpRoute.timeoutSeconds=30"],
        r"httpRoute.timeoutSeconds \(30\) must exceed ferry.deadline.maxS \(30\)",
    ),
    "ferry value out of the service's range": (
        ["--set", "ferry.workers=257"],
        r"/ferry/workers.*maximum: got 257, want 256",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_the_value_named(case: str) -> None:
    args, message = REFUSED[case]
    stderr = refusal(kv.HELM, CHART, *args)
    assert re.search(message, stderr.replace("\n", " ")), stderr


# --- the generated schema -----------------------------------------------------------------------------
def test_schema_is_generated_from_values_yaml() -> None:
    committed = (CHART / "values.schema.json").read_text()
    assert committed == chart_values.schema_json((CHART / "values.yaml").read_text()), "run `make generate`"


def test_ferry_values_take_their_bounds_from_the_settings() -> None:
    from typing import get_args

    from ferry.settings import Settings

    text = (CHART / "values.yaml").read_text()
    mapped = chart_values.ferry_settings(text)
    # Every ferry.* value is a service setting, except the names of the Secrets the chart mounts.
    assert {path for path, env in mapped.items() if env is None} == {
        "ferry.jobs.redis.existingSecret",
        "ferry.jobs.redis.key",
        "ferry.callbacks.enabled",
        "ferry.callbacks.existingSecret",
        "ferry.callbacks.key",
        "ferry.auth.apiKeys.existingSecret",
        "ferry.auth.apiKeys.key",
        "ferry.auth.clientToken.existingSecret",
        "ferry.auth.clientToken.key",
    }
    assert mapped["ferry.jobs.apiRunners"] == "FERRY_JOBS__RUNNERS"
    # The generated bounds are the Settings' own (read here from the fields, not their JSON Schema).
    schema = chart_values.schema(text)["properties"]["ferry"]["properties"]
    workers = Settings.model_fields["workers"].metadata
    assert schema["workers"]["minimum"] == next(m.ge for m in workers if hasattr(m, "ge"))
    assert schema["workers"]["maximum"] == next(m.le for m in workers if hasattr(m, "le"))
    deadline = Settings.model_fields["deadline"].annotation.model_fields["max_s"]  # type: ignore[union-attr]
    maximum = schema["deadline"]["properties"]["maxS"]
    assert maximum["type"] == "number" and maximum["maximum"] == next(
        m.le for m in deadline.metadata if hasattr(m, "le")
    )
    level = Settings.model_fields["logging"].annotation.model_fields["level"]  # type: ignore[union-attr]
    assert schema["logLevel"]["enum"] == list(get_args(level.annotation))


def test_annotations_naming_nothing_are_refused() -> None:
    text = "ferry:\n  # -- A value.\n  # @schema {setting: FERRY_NO_SUCH}\n  workers: 2\n"
    with pytest.raises(chart_values.ValuesError, match=r"FERRY_NO_SUCH.*names no field"):
        chart_values.schema(text)
    with pytest.raises(chart_values.ValuesError, match="quantty"):
        chart_values.schema("# -- A value.\n# @schema {$ref: quantty}\ncpu: 1\n")
    # Without an annotation, a ferry.* value still takes the bounds of the variable its comment names.
    generated = chart_values.schema("ferry:\n  # -- Workers (FERRY_WORKERS).\n  workers: 2\n")
    assert generated["properties"]["ferry"]["properties"]["workers"]["maximum"] == 256
