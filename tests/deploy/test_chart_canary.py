"""Canary and release correctness of the chart, with the real helm (deploy/helm/ferry).

The worker stays on the stable image while a canary runs; the gate never runs without its image;
the track Services stay inside the cluster; only a settings change rolls the pods; the load-test Job
can run again on the next upgrade; clashing pod labels and a NetworkPolicy without sources are
refused; the proxies ferry trusts for X-Forwarded-For are loopback unless widened on purpose.
"""

from __future__ import annotations

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

from support import notes  # noqa: E402
from support.helm import refusal  # noqa: E402

CHART = kv.CHART
ROLLOUT = CHART / "ci/rollout-values.yaml"
WORKER = CHART / "ci/worker-redis-values.yaml"
ARGO = ("argoproj.io/v1alpha1",)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(values: list[Path], *extra: str, api_versions: tuple[str, ...] = (), chart: Path = CHART) -> list[dict]:
    argv = [kv.HELM, "template", "ferry", str(chart), "--namespace", "ferry"]
    argv += [arg for path in values for arg in ("--values", str(path))]
    argv += [arg for api in api_versions for arg in ("--api-versions", api)]
    result = subprocess.run([*argv, *extra], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return kv.documents(result.stdout)


def find(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def image_of(workload: dict) -> str:
    return str(workload["spec"]["template"]["spec"]["containers"][0]["image"])


# --- the worker follows the stable track ---------------------------------------------------------
def test_worker_stays_on_the_stable_image_beside_a_canary_deployment() -> None:
    docs = render([WORKER], "--set", "canary.enabled=true", "--set", "canary.image.tag=0.2.0")
    stable, canary = find(docs, "Deployment", "ferry"), find(docs, "Deployment", "ferry-canary")
    worker = find(docs, "Deployment", "ferry-worker")
    assert image_of(canary).endswith(":0.2.0")
    assert image_of(worker) == image_of(stable) != image_of(canary)


def test_worker_stays_on_the_stable_image_while_a_rollout_canaries() -> None:
    """With a Rollout, image.* is the canary: the worker runs worker.image (the stable one) until it is
    moved after promotion, so the new image never reaches every worker at once, nor stays after an abort."""
    docs = render([ROLLOUT, WORKER], "--set", "image.tag=0.2.0", "--set", "worker.image.tag=0.1.0", api_versions=ARGO)
    assert image_of(find(docs, "Rollout", "ferry")).endswith(":0.2.0")
    assert image_of(find(docs, "Deployment", "ferry-worker")) == "ghcr.io/ferry-serving/ferry:0.1.0"
    digest = "sha256:" + "b" * 64
    pinned = render([ROLLOUT, WORKER], "--set", f"worker.image.digest={digest}", api_versions=ARGO)
    assert image_of(find(pinned, "Deployment", "ferry-worker")) == f"ghcr.io/ferry-serving/ferry@{digest}"


def test_notes_say_when_to_move_the_worker(tmp_path: Path) -> None:
    text = notes.render_notes(
        kv.HELM, CHART, tmp_path, "-f", str(ROLLOUT), "-f", str(WORKER), "--set", "worker.image.tag=0.1.0"
    )
    assert "The worker stays on worker.image (0.1.0)" in text and "after promotion" in text
    assert "worker.image" not in notes.render_notes(kv.HELM, CHART, tmp_path, "-f", str(ROLLOUT))


# --- refused at render ---------------------------------------------------------------------------
REFUSED = {
    "rollout with a worker but no stable worker image": (
        ["-f", str(ROLLOUT), "-f", str(WORKER)],
        r"rollout.enabled with worker.enabled needs worker.image.tag or worker.image.digest",
    ),
    "rollout gate without a gate image": (
        ["--set", "rollout.enabled=true"],
        r"needs rollout.analysis.gate.image.repository: the load-test image .* The service image has no Locust",
    ),
    "load-test Job without a gate image": (
        ["--set", "loadtest.enabled=true"],
        r"needs rollout.analysis.gate.image.repository",
    ),
    **{
        f"podLabels clashing with {key}": (
            ["--set-string", "podLabels." + key.replace(".", "\\.") + "=x"],
            rf"podLabels.{re.escape(key)} clashes with a label the chart .* selects pods by",
        )
        for key in ("app.kubernetes.io/instance", "app.kubernetes.io/component", "track")
    },
    "a NetworkPolicy without sources": (
        [
            "--set",
            "networkPolicy.ingressFrom=null",
            "--set",
            "networkPolicy.ingressNamespaces=null",
            "--set",
            "networkPolicy.monitoringNamespaces=null",
        ],
        r"networkPolicy: no source may reach the http port .* admits every source",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_a_clear_message(case: str) -> None:
    args, message = REFUSED[case]
    stderr = refusal(kv.HELM, CHART, *args)
    assert re.search(message, stderr), stderr


def test_the_gate_off_needs_no_gate_image() -> None:
    docs = render([], "--set", "rollout.enabled=true", "--set", "rollout.analysis.gate.enabled=false")
    metrics = find(docs, "AnalysisTemplate", "ferry-slo")["spec"]["metrics"]
    assert "slo-gate" not in {m["name"] for m in metrics}


# --- Services -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["--set", "canary.enabled=true", "--set", "canary.image.tag=0.2.0"], id="canary"),
        pytest.param(["-f", str(ROLLOUT)], id="rollout"),
    ],
)
def test_track_services_are_cluster_ip_whatever_service_type(values: list[str]) -> None:
    docs = render([], *values, "--set", "service.type=LoadBalancer", api_versions=ARGO)
    types = {d["metadata"]["name"]: d["spec"]["type"] for d in docs if d["kind"] == "Service"}
    # -metrics: the scraped Service, so the load balancer never exposes /metrics.
    assert types == {
        "ferry": "LoadBalancer",
        "ferry-metrics": "ClusterIP",
        "ferry-stable": "ClusterIP",
        "ferry-canary": "ClusterIP",
    }


# --- what rolls the pods ----------------------------------------------------------------------------
def test_config_checksum_ignores_a_chart_version_bump(tmp_path: Path) -> None:
    bumped = tmp_path / "ferry"
    shutil.copytree(CHART, bumped)
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"] = "99.0.0"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))

    def checksum(chart: Path, *extra: str) -> str:
        deployment = find(render([], *extra, chart=chart), "Deployment", "ferry")
        assert deployment["metadata"]["labels"]["helm.sh/chart"].startswith("ferry-")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(CHART) == checksum(bumped), "a chart-version bump alone must not roll every pod"
    assert checksum(CHART) != checksum(bumped, "--set", "ferry.logLevel=DEBUG"), "a settings change still does"


# --- the load-test Job ----------------------------------------------------------------------------
def test_loadtest_job_runs_anew_after_every_install_and_upgrade() -> None:
    """A Job's pod template is immutable: a fixed-name Job fails the next upgrade that changes it. As a
    post-install/post-upgrade hook, helm deletes the previous run and creates it again each time."""
    job = find(render([CHART / "ci/loadtest-values.yaml"]), "Job", "ferry-slo-gate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"


# --- NetworkPolicy sources --------------------------------------------------------------------------
def _sources(docs: list[dict], port: str = "http") -> list[dict]:
    (rule,) = [r for r in find(docs, "NetworkPolicy", "ferry")["spec"]["ingress"] if r["ports"][0]["port"] == port]
    return list(rule["from"])


def _namespaces(peer: dict) -> list[str]:
    (expression,) = peer["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "In"
    return list(expression["values"])


def test_network_policy_never_opens_to_all_when_ingress_from_is_empty() -> None:
    sources = _sources(render([], "--set", "networkPolicy.ingressFrom=null"))
    assert sources, "a rule without `from` admits every source"
    assert [_namespaces(p) for p in sources] == [["ingress-nginx"]], "Prometheus reaches the metrics port only"


def test_network_policy_sources_for_any_gateway_and_prometheus() -> None:
    docs = render([CHART / "ci/rollout-worker-values.yaml"], api_versions=ARGO)
    sources = _sources(docs)
    assert sources[0] == {"podSelector": {}}, "the release namespace"
    (gateway,) = sources[1:]
    (prometheus,) = _sources(docs, "metrics")
    assert _namespaces(gateway) == ["envoy-gateway-system"]
    assert gateway["podSelector"] == {"matchLabels": {"gateway.envoyproxy.io/owning-gateway-name": "public"}}
    assert _namespaces(prometheus) == ["observability"]
    assert prometheus["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}


# --- trusted proxies ----------------------------------------------------------------------------------
def test_forwarded_headers_trust_loopback_only_by_default() -> None:
    def trusted(*extra: str) -> str:
        configmap = find(render([], *extra), "ConfigMap", "ferry")
        return str(configmap["data"]["FERRY_SERVER__FORWARDED_ALLOW_IPS"])

    assert trusted() == "127.0.0.1"
    widened = trusted("--set-string", "ferry.server.forwardedAllowIps=10.244.0.0/16\\,fd00::/8")
    assert widened == "10.244.0.0/16,fd00::/8"
    assert "forwardedAllowIps" in refusal(kv.HELM, CHART, "--set-string", "ferry.server.forwardedAllowIps=any proxy")
