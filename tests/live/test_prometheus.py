"""Live verification: the real Debian `prometheus` scrapes two real gunicorn services on 127.0.0.1
with the generated rules loaded: a stable pod and a canary pod (a copy of the model whose card names
a new version), labelled as the chart's ServiceMonitor labels pods, each in a real cgroup with CPU and
memory limits, so every dashboard query (panels, annotations, variables) has series to return.

Test override (documented in scripts/generate.py `rules(ranges=, hold=)`): each SLI window's PromQL
range and every `for:` are shrunk so that hours of burn fit in a minute; record names, alert
expressions and dashboard queries are otherwise exactly the generated ones.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from support.cgroup import Cgroup
from support.prometheus import (
    Prometheus,
    Traffic,
    annotation_queries,
    boards,
    panel_queries,
    substitute,
    threshold_color,
    variable_queries,
)
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


def canary_model(churn_model: Path, workdir: Path) -> Path:
    """The same model file with a card naming a new version: the canary serves "the next model"."""
    workdir.mkdir()
    shutil.copy(churn_model, workdir / "model.joblib")
    card = json.loads(churn_model.with_name("model.card.json").read_text())
    (workdir / "model.card.json").write_text(json.dumps({**card, "version": card["version"] + "-canary"}))
    return workdir / "model.joblib"


def panel(board: str, title: str) -> dict:
    (found,) = [p for p in boards()[board]["panels"] if p["title"] == title]
    return found


def only_value(prometheus: Prometheus, expr: str) -> float:
    (sample,) = prometheus.query(expr)
    return float(sample["value"][1])


def test_rules_dashboards_and_alerts_on_a_real_prometheus(churn_model: Path, record: dict, tmp_path: Path) -> None:
    env = {
        "FERRY_FAULTS__ENABLED": "true",
        "FERRY_BREAKER__FAIL_MAX": "3",
        "FERRY_BREAKER__RESET_TIMEOUT_S": "600",
    }
    servers: dict[str, Server] = {}
    cgroups: list[Cgroup] = []
    prometheus = None
    try:
        for track, model in (("stable", churn_model), ("canary", canary_model(churn_model, tmp_path / "canary"))):
            (tmp_path / f"{track}-faults.json").write_text("{}")
            cgroup = Cgroup(cpu_cores=2, memory_bytes=2 << 30)
            cgroups.append(cgroup)
            servers[track] = Server(
                tmp_path / track,
                model,
                env={**env, "FERRY_FAULTS__FILE": str(tmp_path / f"{track}-faults.json")},
                preexec_fn=cgroup.join,
            )
        with ThreadPoolExecutor(2) as pool:  # side by side: each start waits for its model
            list(pool.map(Server.start, servers.values()))
        prometheus = Prometheus(
            tmp_path,
            {servers[t].port: {"pod": f"ferry-{t}-0", "track": t} for t in ("stable", "canary")},
        )
        with Traffic(servers["stable"].url, record), Traffic(servers["canary"].url, record):
            # Healthy traffic: every recording rule yields series (each shrunk window holds samples;
            # awaited, not slept for), no alert is active.
            records = [
                rule["record"]
                for group in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]
                for rule in group["rules"]
                if "record" in rule
            ]
            started = time.monotonic()
            while empty_records := [name for name in records if not prometheus.query(name)]:
                assert time.monotonic() < started + 60, f"recording rules without series: {empty_records}"
                time.sleep(0.5)
            print(f"every recording rule has series after {time.monotonic() - started:.1f} s of traffic")
            active = {k: v for k, v in prometheus.alerts().items() if k != "FerryMetricsAbsent"}
            assert active == {}, active
            # Every dashboard panel query returns data: all pods and tracks, and each track alone.
            checks = [(track, *query) for track in ("stable", "canary") for query in panel_queries(track=track)]
            with ThreadPoolExecutor(8) as pool:  # a few hundred queries: wall time, not Prometheus, is the cost
                found = list(pool.map(lambda check: prometheus.query(check[-1]), checks))
            empty = [check for check, result in zip(checks, found, strict=True) if not result]
            assert empty == [], empty
            # Every variable offers its values, every annotation query (but the firing alerts) has data.
            values = {
                name: {r["metric"].get(label) for r in prometheus.query(expr)}
                for _, name, expr, label in variable_queries()
            }
            assert values["track"] == {"stable", "canary"} and values["pod"] == {"ferry-stable-0", "ferry-canary-0"}
            assert values["namespace"] == {"live"} and values["job"] == {"ferry"}
            annotations = {name: expr for _, name, expr in annotation_queries()}
            assert {r["metric"]["version"] for r in prometheus.query(annotations["Model version changes"])} == {
                "1.0.0",
                "1.0.0-canary",
            }
            for name in ("Pods started",):
                assert prometheus.query(annotations[name]), name
            # Per-track panels tell the tracks apart; the cgroup limits are there to draw.
            throughput = {
                r["metric"]["track"]: float(r["value"][1])
                for r in prometheus.query(panel_expr("ferry-service.json", "Throughput by track"))
            }
            assert set(throughput) == {"stable", "canary"} and min(throughput.values()) > 0, throughput
            limits = prometheus.query(panel_expr("ferry-service.json", "CPU by pod vs limit", 1))
            assert {float(r["value"][1]) for r in limits} == {2.0}, limits
            budget = panel("ferry-service.json", "Availability error budget remaining")
            assert threshold_color(budget, only_value(prometheus, panel_expr(budget))) == "green"
            # Still no alert after the dashboards' few hundred queries: healthy traffic stays quiet.
            active = {k: v for k, v in prometheus.alerts().items() if k != "FerryMetricsAbsent"}
            assert active == {}, active

            # Faults in the canary only: every model call fails; its breaker opens; 5xx burn the budget.
            (tmp_path / "canary-faults.json").write_text(json.dumps({"error_rate": 1.0}))
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
            # The views of the fault: the canary's errors beside a clean stable, its breaker shown
            # "open" on its own pod, the alert as an annotation, and the overspent budget in red.
            ratio = {
                r["metric"]["track"]: float(r["value"][1])
                for r in prometheus.query(panel_expr("ferry-service.json", "Error ratio by track"))
            }
            assert ratio["canary"] > 0.5 and ratio["stable"] == 0, ratio
            breaker = panel("ferry-service.json", "Circuit breaker state by pod")
            states_by_pod = {
                r["metric"]["pod"]: threshold_color(breaker, float(r["value"][1]))
                for r in prometheus.query(panel_expr(breaker))
            }
            assert states_by_pod == {"ferry-canary-0": "red", "ferry-stable-0": "green"}, states_by_pod
            firing = {r["metric"]["alertname"] for r in prometheus.query(annotations["Firing alerts"])}
            assert "FerryCircuitBreakerOpen" in firing, firing
            remaining = wait_for(
                lambda: (lambda v: v if v < 0 else None)(only_value(prometheus, panel_expr(budget))),
                30,
                "the period budget was never overspent",
            )
            assert threshold_color(budget, remaining) == "red", remaining
    finally:
        if prometheus is not None:
            prometheus.stop()
        for server in servers.values():
            assert server.stop() == 0
        for cgroup in cgroups:
            cgroup.remove()


def panel_expr(board_or_panel: str | dict, title: str = "", query: int = 0) -> str:
    """The query of a dashboard panel, its variables filled in (All pods, all tracks)."""
    found = board_or_panel if isinstance(board_or_panel, dict) else panel(board_or_panel, title)
    return substitute(found["targets"][query]["expr"])
