"""Live verification: the real Debian `prometheus` scrapes the real gunicorn service on 127.0.0.1
with the generated rules loaded.

Test override (documented in scripts/generate.py `rules(ranges=, hold=)`): each SLI window's PromQL
range and every `for:` are shrunk so that hours of burn fit in a minute; record names, alert
expressions and dashboard queries are otherwise exactly the generated ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from support.server import Server, free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from generate import load_slo, rules  # noqa: E402

RANGES = {"5m": "10s", "30m": "15s", "1h": "20s", "2h": "20s", "6h": "30s", "1d": "30s", "3d": "40s"}
NAMESPACE = "live"


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make test` installs it (Debian package prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        generated = rules(load_slo(), ranges=RANGES, hold="3s")
        for group in generated["groups"]:
            group["interval"] = "1s"
        (workdir / "rules.yaml").write_text(yaml.safe_dump(generated, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "ferry",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"], "labels": {"namespace": NAMESPACE}}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (workdir / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)

    def query(self, expr: str) -> list:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, (expr, r.text)
        return r.json()["data"]["result"]

    def alerts(self) -> dict[str, str]:
        found = httpx.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in found}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


class Traffic:
    def __init__(self, url: str, record: dict) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, record))

    def _run(self, url: str, record: dict) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                client.post(url + "/api/v1/predict", json={"record": record})
                client.post(url + "/api/v1/predict/batch", json={"records": [record] * 3})
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def substitute(expr: str) -> str:
    return expr.replace("$namespace", NAMESPACE).replace("$job", "ferry").replace("$__rate_interval", "10s")


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], substitute(target["expr"])))
    return out


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
