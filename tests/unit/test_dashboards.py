"""Dashboards as code: every panel documented, typed by unit, and bound to the template variables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "dashboards/src"))

from builder import Panel, Query  # noqa: E402


def boards() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((ROOT / "dashboards").glob("*.json"))]


def test_dashboards_exist_and_are_complete() -> None:
    loaded = boards()
    assert {b["uid"] for b in loaded} == {"ferry-service", "ferry-model"}
    for board in loaded:
        names = [v["name"] for v in board["templating"]["list"]]
        assert names == ["datasource", "namespace", "job"], board["uid"]
        for panel in (p for p in board["panels"] if p["type"] != "row"):
            assert panel["description"], panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                expr = target["expr"]
                if "up{" in expr or "ferry_" in expr:
                    scoped = ('namespace="$namespace",job="$job"', 'namespace="$namespace",job=~"$job|$job-worker"')
                    assert any(s in expr for s in scoped) or ":ratio_rate" in expr, expr


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
    ):
        assert needed in titles, needed


def test_a_panel_without_description_or_unit_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        Panel("x", "", "s", (Query("up"),))
    with pytest.raises(ValueError):
        Panel("x", "described", "", (Query("up"),))
