"""The image tier: the images `make image` built, run with podman the way the chart's pods run them.

The pod specs come from ``helm template`` of the chart's default scenario (plus the load-test Job),
translated into ``podman run`` options by tests/support/podspec.py, so these tests follow the chart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.podman import GATE_IMAGE, SERVICE_IMAGE, Container, image_inspect, remove_session_containers
from support.podspec import PodRun, container, pod_run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _images() -> Iterator[None]:
    """Both images must have been built (`make test-image` builds them first); leftovers are removed."""
    for ref in (SERVICE_IMAGE, GATE_IMAGE):
        image_inspect(ref)
    yield
    remove_session_containers()


@pytest.fixture(scope="session")
def chart() -> tuple[dict, ...]:
    """The default scenario with the SLO gate Job enabled (in-pod Locust, no workers), the gate image
    named as the chart requires (the tests run the locally built GATE_IMAGE in its place)."""
    kv.ensure_k8s_tools()
    gate = GATE_IMAGE.rsplit(":", 1)[0]
    return kv.render_scenario(
        "default", "--set", "loadtest.enabled=true", "--set", f"rollout.analysis.gate.image.repository={gate}"
    )


def _pod(docs: tuple[dict, ...], kind: str, name: str, container: str) -> PodRun:
    (workload,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap" and "data" in d}
    return pod_run(workload["spec"]["template"], configmaps, container)


@pytest.fixture(scope="session")
def service_pod(chart: tuple[dict, ...]) -> PodRun:
    """The stable Deployment's ferry container."""
    return _pod(chart, "Deployment", "ferry", "ferry")


@pytest.fixture(scope="session")
def gate_pod(chart: tuple[dict, ...]) -> PodRun:
    """The SLO gate Job's container."""
    return _pod(chart, "Job", "ferry-slo-gate", "gate")


@pytest.fixture
def start_service(service_pod: PodRun) -> Iterator[Callable[..., Container]]:
    """Start ``image`` (default: the service image) as the chart's pod runs it; removed after the test."""
    started: list[Container] = []

    def start(image: str = SERVICE_IMAGE, env: dict[str, str] | None = None) -> Container:
        started.append(container(service_pod, image, prefix="ferry-svc", env=env))
        return started[-1].start()

    yield start
    for each in started:
        each.remove()
