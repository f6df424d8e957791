"""The chart's tracing values become the service's FERRY_TRACING__* settings, which the service accepts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ferry.settings import TracingSettings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def settings_data(*args: str) -> dict[str, str]:
    docs = kv.documents(kv.helm_template(None, (), *args))
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == kv.RELEASE)["data"]


def test_tracing_values_reach_the_service_settings() -> None:
    data = settings_data(
        "--set",
        "ferry.tracing.enabled=true",
        "--set",
        "ferry.tracing.endpoint=http://otel-collector.monitoring:4318",
        "--set-json",  # --set would pass 0.25 as a string
        "ferry.tracing.sampleRatio=0.25",
    )
    tracing = {k: v for k, v in data.items() if k.startswith("FERRY_TRACING__")}
    assert tracing == {
        "FERRY_TRACING__ENABLED": "true",
        "FERRY_TRACING__ENDPOINT": "http://otel-collector.monitoring:4318",
        "FERRY_TRACING__SAMPLE_RATIO": "0.25",
    }
    assert unknown_variables(tracing) == []
    parsed = TracingSettings.model_validate({k.removeprefix("FERRY_TRACING__").lower(): v for k, v in tracing.items()})
    assert (parsed.enabled, parsed.endpoint, parsed.sample_ratio) == (True, tracing["FERRY_TRACING__ENDPOINT"], 0.25)


def test_tracing_off_renders_nothing_and_a_ratio_out_of_range_is_refused() -> None:
    assert not [k for k in settings_data() if k.startswith("FERRY_TRACING__")]  # the service's default: off
    with pytest.raises(kv.Failure, match="sampleRatio"):
        kv.helm_template(None, (), "--set-json", "ferry.tracing.sampleRatio=1.5")
