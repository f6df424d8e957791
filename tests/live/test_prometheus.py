"""Live verification: the real Debian `prometheus` scrapes the real gunicorn service on 127.0.0.1
with the generated rules loaded.

Test override (documented in scripts/generate.py `rules(ranges=, hold=)`): each SLI window's PromQL
range and every `for:` are shrunk so that hours of burn fit in a minute; record names, alert
expressions and dashboard queries are otherwise exactly the generated ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from support.prometheus import Prometheus, Traffic, panel_queries
from support.server import Server

ROOT = Path(__file__).resolve().parents[2]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_rules_dashboards_and_alerts_on_a_real_prometheus(churn_model: Path, record: dict, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text("{}")
    env = {
        "FERRY_FAULTS__ENABLED": "true",
        "FERRY_FAULTS__FILE": str(faults),
        "FERRY_BREAKER__FAIL_MAX": "3",
        "FERRY_BREAKER__RESET_TIMEOUT_S": "600",
    }
    server = Server(tmp_path / "srv", churn_model, env=env).start()
    prometheus = Prometheus(tmp_path, server.port)
    try:
        with Traffic(server.url, record):
            time.sleep(25)  # long enough for every shrunk window to hold samples
            # Healthy traffic: every recording rule yields series, no alert is active.
            for group in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]:
                for rule in group["rules"]:
                    if "record" in rule:
                        assert prometheus.query(rule["record"]), f"recording rule {rule['record']} has no series"
            active = {k: v for k, v in prometheus.alerts().items() if k != "FerryMetricsAbsent"}
            assert active == {}, active
            # Every dashboard panel query returns data.
            empty = [(board, title, expr) for board, title, expr in panel_queries() if not prometheus.query(expr)]
            assert empty == [], empty

            # Faults: every model call fails; the breaker opens; 5xx burn the availability budget.
            faults.write_text(json.dumps({"error_rate": 1.0}))
            states = wait_for(
                lambda: (
                    lambda s: s if {"FerryCircuitBreakerOpen", "FerryAvailabilityBudgetBurnFast"} <= set(s) else None
                )(prometheus.alerts()),
                60,
                f"breaker/burn alerts never became active: {prometheus.alerts()}",
            )
            assert states["FerryCircuitBreakerOpen"] in ("pending", "firing")
            assert states["FerryAvailabilityBudgetBurnFast"] in ("pending", "firing")
            seen: list[dict[str, str]] = []
            wait_for(
                lambda: seen.append(prometheus.alerts()) or seen[-1].get("FerryCircuitBreakerOpen") == "firing",
                30,
                "the breaker alert never fired",
            )
            assert "FerryLatencyBudgetBurnFast" not in prometheus.alerts()  # failures are fast, not slow
    finally:
        prometheus.stop()
        assert server.stop() == 0
