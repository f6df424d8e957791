"""Dashboards as code: every panel documented, typed by unit, and bound to the template variables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "dashboards/src"))
sys.path.insert(0, str(ROOT / "service"))

from builder import Panel, Query  # noqa: E402


def boards() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((ROOT / "dashboards").glob("*.json"))]


# Series recorded per service (namespace, job): the pod and track filters cannot apply to them.
PER_SERVICE = (":ratio_rate", "slo:")
SCOPED = ('namespace="$namespace",job="$job"', 'namespace="$namespace",job=~"$job|$job-worker"')
PODS = 'pod=~"$pod",track=~"$track"'


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def panel(title: str) -> dict:
    (found,) = [p for b in boards() for p in panels(b) if p["title"] == title]
    return found


def test_dashboards_exist_and_are_complete() -> None:
    loaded = boards()
    assert {b["uid"] for b in loaded} == {"ferry-service", "ferry-model"}
    for board in loaded:
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables) == ["datasource", "namespace", "job", "track", "pod"], board["uid"]
        for name in ("pod", "track"):
            assert variables[name]["multi"] and variables[name]["includeAll"], name
            assert variables[name]["allValue"] == ".*", "All also matches series without the label"
            assert SCOPED[0] in variables[name]["definition"]
        for panel in panels(board):
            assert panel["description"], panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                expr = target["expr"]
                if "up{" in expr or "ferry_" in expr or "slo:" in expr:
                    assert any(s in expr for s in SCOPED), expr
                if "ferry_" in expr or "up{" in expr:
                    # Every selector of a pod's series carries the pod and track filters.
                    assert expr.count("ferry_") + expr.count("up{") == expr.count(PODS), expr
                else:
                    assert any(k in expr for k in PER_SERVICE), expr


def test_canary_and_stable_side_by_side() -> None:
    """One row compares the tracks: error ratio, p99 and throughput, each split by track."""
    (board,) = [b for b in boards() if b["uid"] == "ferry-service"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert "Canary vs stable" in [r["title"] for r in rows]
    side_by_side = [p for p in panels(board) if p["gridPos"]["y"] == panel("Error ratio by track")["gridPos"]["y"]]
    assert [p["title"] for p in side_by_side] == ["Error ratio by track", "Predict p99 by track", "Throughput by track"]
    for found in side_by_side:
        (target,) = found["targets"]
        assert "by (track" in target["expr"] and target["legendFormat"] == "{{track}}", found["title"]


def test_per_pod_resources_and_batching() -> None:
    for title, metrics in (
        ("CPU by pod vs limit", ("ferry_container_cpu_usage_seconds_total", "ferry_container_cpu_limit_cores")),
        ("CPU throttling by pod", ("ferry_container_cpu_throttled_periods_total", "ferry_container_cpu_periods_total")),
        (
            "Memory by pod vs limit",
            ("ferry_container_memory_working_set_bytes", "ferry_container_memory_limit_bytes"),
        ),
        ("In flight vs capacity by pod", ("ferry_inference_in_flight", "ferry_inference_capacity")),
        ("Rows per model call", ("ferry_inference_batch_size_sum", "ferry_inference_batch_size_bucket")),
    ):
        exprs = " ".join(t["expr"] for t in panel(title)["targets"])
        assert all(m in exprs for m in metrics) and "by (pod" in exprs, title


def steps(found: dict) -> list[tuple[float | None, str]]:
    return [(s["value"], s["color"]) for s in found["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_error_budget_is_red_when_overspent() -> None:
    """Green base thresholds showed an overspent budget green: below 0 is red, then orange, yellow, green."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.prometheus import threshold_color

    for objective in ("Availability", "Latency"):
        found = panel(f"{objective} error budget remaining")
        assert steps(found) == [(None, "red"), (0.0, "orange"), (0.25, "yellow"), (0.5, "green")]
        colors = [threshold_color(found, v) for v in (-3.0, -0.01, 0.0, 0.1, 0.3, 0.9, 1.0)]
        assert colors == ["red", "red", "orange", "orange", "yellow", "green", "green"]
        (target,) = found["targets"]
        assert f'slo="{objective.lower()}"' in target["expr"]
        assert "slo:period_error_budget_remaining:ratio" in target["expr"], "the recording rule, not a 30d query"


def test_threshold_lines_are_drawn_on_ratio_and_latency_panels() -> None:
    for title in ("5xx ratio by route", "Error ratio by track", "Predict p99 by track", "Predict latency percentiles"):
        found = panel(title)
        assert found["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line", title
        assert len(steps(found)) > 1, title
    assert steps(panel("Predict p99 by track"))[1] == (0.3, "red"), "the latency objective's threshold"
    for board in boards():
        for found in panels(board):
            if found["type"] == "timeseries" and len(steps(found)) > 1:
                assert found["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line", found["title"]


def test_breaker_state_reads_as_words() -> None:
    """The breaker's encoding (ferry.resilience.breaker.STATE_VALUE) shown as its state's name."""
    from ferry.resilience.breaker import STATE_VALUE

    for title in ("Circuit breaker state", "Circuit breaker state by pod"):
        (mapping,) = panel(title)["fieldConfig"]["defaults"]["mappings"]
        shown = {int(k): v["text"] for k, v in mapping["options"].items()}
        assert shown == {value: state for state, value in STATE_VALUE.items()}, title
        assert mapping["options"]["2"]["color"] == "red"
    assert "ferry_breaker_transitions_total" in panel("Circuit breaker transitions")["targets"][0]["expr"]


def test_annotations_and_runbook_links() -> None:
    for board in boards():
        names = {a["name"] for a in board["annotations"]["list"] if "expr" in a}
        assert names == {"Model version changes", "Pods started", "Firing alerts"}, board["uid"]
        (runbooks,) = [link for link in board["links"] if link["title"] == "Runbooks"]
        assert runbooks["url"].endswith("/docs/runbooks")
        linked = 0
        for found in panels(board):
            for link in found["links"]:
                name = link["url"].rsplit("/", 1)[1]
                assert link["url"] == f"{runbooks['url']}/{name}", link
                assert (ROOT / "docs/runbooks" / name).is_file(), f"{found['title']} links to a missing runbook {name}"
                assert name.removesuffix(".md") in found["description"], found["title"]
                linked += 1
        assert linked >= 3, board["uid"]
    assert "FerryCircuitBreakerOpen.md" in panel("Circuit breaker state")["links"][0]["url"]


def test_service_dashboard_covers_the_issue_list() -> None:
    titles = {p["title"] for b in boards() for p in b["panels"]}
    for needed in (
        "Requests by route",
        "Predict latency percentiles",
        "Predict latency heatmap",
        "Availability error budget remaining",
        "Availability burn rate",
        "Circuit breaker state",
        "Shed and timed-out requests",
        "Requests per model call",
        "In flight vs capacity",
        "Replicas and workers",
        "Predicted class mix",
        "Inference latency",
        "Served model",
        "Error ratio by track",
        "Latency error budget remaining",
        "Circuit breaker transitions",
        "Requests by pod",
    ):
        assert needed in titles, needed


def test_a_panel_without_description_or_unit_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        Panel("x", "", "s", (Query("up"),))
    with pytest.raises(ValueError):
        Panel("x", "described", "", (Query("up"),))
