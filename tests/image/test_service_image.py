"""The service image, run as the chart's stable pod runs it: hardened, ready, predicting, healthy,
load-tested by the gate image, and drained on SIGTERM without a failed request.

One container serves the read-only assertions (starting one costs seconds on a 2-core machine); the
SIGTERM test starts its own, since stopping is what it tests.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from support.load import Load
from support.podman import GATE_IMAGE, SERVICE_IMAGE, Container, image_inspect, podman
from support.podspec import PodRun, container

GATE_USERS, GATE_RUN_TIME = "10", "20s"


@pytest.fixture(scope="module")
def ferry(service_pod: PodRun) -> Iterator[Container]:
    with container(service_pod, SERVICE_IMAGE, prefix="ferry-svc") as c:
        c.wait_for("/readyz", 200, timeout=90)
        yield c


def example(url: str) -> dict:
    """A valid record for the served model: its card's example."""
    (model,) = httpx.get(url + "/api/v1/models", timeout=10).json()["models"]
    return httpx.get(f"{url}/api/v1/models/{model['name']}", timeout=10).json()["example"]


def status_line(c: Container, field: str) -> str:
    """A field of /proc/1/status inside the container (PID 1: gunicorn's master)."""
    status = c.exec("cat", "/proc/1/status", check=True).stdout
    return re.search(rf"^{field}:\s+(.*)$", status, re.M).group(1)


def test_ready_and_predicts(ferry: Container) -> None:
    ready = httpx.get(ferry.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    assert ready.json()["model"] == "churn"  # the model built into the image
    r = httpx.post(ferry.url + "/api/v1/predict", json={"record": example(ferry.url)}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in ("churn", "stay")
    assert r.json()["model"] == {"name": "churn", "version": "1.0.0"}


def test_metrics_only_on_their_own_port_and_no_api_docs(ferry: Container, service_pod: PodRun) -> None:
    """The chart's FERRY_METRICS__PORT and FERRY_API__DOCS_ENABLED: /metrics answers on the `metrics`
    containerPort (what the ServiceMonitor scrapes), never on `http` (what the ingress routes)."""
    assert service_pod.ports["metrics"] == int(service_pod.env["FERRY_METRICS__PORT"]) != service_pod.ports["http"]
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    scraped = ferry.exec("python", "-c", fetch, f"http://127.0.0.1:{service_pod.ports['metrics']}/metrics", check=True)
    assert "ferry_" in scraped.stdout
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert httpx.get(ferry.url + path, timeout=10).status_code == 404, path


def test_runs_hardened_as_the_pod_spec_says(ferry: Container, service_pod: PodRun) -> None:
    uid, gid = service_pod.user
    assert ferry.exec("id", "-u", check=True).stdout.strip() == str(uid) == "10001"
    assert ferry.exec("id", "-g", check=True).stdout.strip() == str(gid)
    denied = ferry.exec("touch", "/app/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert ferry.exec("touch", "/usr/local/written").returncode != 0  # no writable layer anywhere
    assert ferry.inspect()["HostConfig"]["ReadonlyRootfs"] is True
    assert status_line(ferry, "CapEff") == status_line(ferry, "CapBnd") == "0000000000000000"  # drop: [ALL]
    assert status_line(ferry, "NoNewPrivs") == "1"  # allowPrivilegeEscalation: false
    # resources.limits, where podman can apply them here (service_pod.skipped says when it cannot)
    limits = dict(o.split("=", 1) for o in service_pod.options if o.startswith(("--memory=", "--cpus=")))
    host = ferry.inspect()["HostConfig"]
    assert host["Memory"] == int(limits.get("--memory", 0))
    assert host["NanoCpus"] == int(float(limits.get("--cpus", 0)) * 10**9)
    # The emptyDirs are the only writable places, and the metrics directory is the ConfigMap's.
    metrics_dir = service_pod.env["FERRY_METRICS__DIR"]
    assert ferry.exec("touch", "/tmp/written").returncode == 0
    assert ferry.exec("sh", "-c", f"ls {metrics_dir}/*.db", check=True).stdout.strip()
    # The entrypoint is the exec form and the launcher execs gunicorn: the master is PID 1 and gets SIGTERM.
    cmdline = ferry.exec("cat", "/proc/1/cmdline", check=True).stdout.split("\0")
    assert "gunicorn" in " ".join(cmdline)


def test_healthcheck_passes(ferry: Container) -> None:
    image = image_inspect(SERVICE_IMAGE)
    # Kept only because `make image` builds with --format docker (the OCI image format has no HEALTHCHECK).
    assert image["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert image["Healthcheck"]["Test"] == ["CMD", "python", "-m", "ferry", "healthcheck"]
    result = ferry.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert ferry.inspect()["State"]["Health"]["Status"] == "healthy"


def test_every_log_line_is_json(ferry: Container) -> None:
    httpx.post(ferry.url + "/api/v1/predict", json={"record": {"nope": 1}}, timeout=10)  # an error logs too
    records = ferry.records()  # raises on the first line that is not JSON
    assert any(r.get("event", "").startswith("Starting gunicorn") for r in records)
    assert any(r.get("logger") == "ferry.access" and r["status"] == 422 for r in records)


def test_slo_gate_image_passes_against_the_service_container(
    ferry: Container, service_pod: PodRun, gate_pod: PodRun
) -> None:
    """The gate Job's container (the chart's args) against the service container's address; shorter
    and lighter than the chart's 3 min x 20 users, which are sized for a cluster node, not for a
    2-core machine that also runs the service."""
    args = list(gate_pod.args)
    args[args.index("--run-time") + 1] = GATE_RUN_TIME
    args[args.index("--users") + 1] = GATE_USERS
    host = f"http://{ferry.ip}:{service_pod.ports['http']}"  # as a Service would reach the pod
    env = {"LOCUST_HOST": host}
    with container(gate_pod, GATE_IMAGE, prefix="ferry-gate", args=args, env=env, publish=None) as gate:
        code = gate.wait(timeout=240)
        output = gate.logs()
    assert code == 0, output[-5000:]
    assert "VERDICT: PASS" in output, output[-5000:]
    assert f"SLO gate — {host}" in output


def test_bad_settings_stop_the_container_with_status_2(start_service: Callable[..., Container]) -> None:
    """A typo in a FERRY_* name is a crash loop with one clear line, not a pod serving defaults."""
    c = start_service(env={"FERRY_MODEL__PAHT": "/app/models/churn/model.joblib"})
    assert c.wait(timeout=60) == 2
    line = json.loads(podman("logs", c.name).stdout.strip().splitlines()[-1])
    assert line["event"] == "invalid_settings" and line["level"] == "critical"
    assert "FERRY_MODEL__PAHT" in json.dumps(line)


def test_sigterm_drains_under_load_and_exits_zero(start_service: Callable[..., Container], service_pod: PodRun) -> None:
    """``podman stop`` with the pod's grace period (SIGTERM, SIGKILL after it): exit 0 well within the
    grace period less the preStop sleep, and every request the server accepted is answered."""
    c = start_service()
    c.wait_for("/readyz", 200, timeout=90)
    record = example(c.url)
    with Load(c.url + "/api/v1/predict", {"record": record}, rate=40, connections=4) as load:
        deadline = time.monotonic() + 30
        while load.outcomes.get("ok", 0) < 40:  # the load runs before the signal
            assert time.monotonic() < deadline and not load.failures(), load.outcomes
            time.sleep(0.1)
        started = time.monotonic()
        code = c.stop(timeout=service_pod.grace_period_s)
        stopped_in = time.monotonic() - started
        time.sleep(0.5)  # requests after the exit: refused, not failed
    assert code == 0, c.logs()[-3000:]
    assert stopped_in < service_pod.grace_period_s - service_pod.pre_stop_s, stopped_in
    assert load.failures() == {}, load.outcomes
    records = c.records()
    (signalled,) = [r["ts"] for r in records if r.get("event") == "Handling signal: term"]
    drained = [r for r in records if r.get("logger") == "ferry.access" and r["ts"] > signalled]
    assert drained and {r["status"] for r in drained} == {200}, "requests in flight at SIGTERM were answered"
    assert records[-1]["event"] == "Shutting down: Master"
