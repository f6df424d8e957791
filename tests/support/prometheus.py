"""A real Prometheus (Debian package) scraping ferry Servers on 127.0.0.1 with the generated rules,
shrunk by the documented test override (scripts/generate.py `rules(ranges=, hold=)`).

Each target carries the labels the chart's ServiceMonitor gives a pod's series (namespace, pod, and
the pod label `track`), so the dashboards' pod and track variables select as they do in a cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from support.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from generate import budget_rules, load_slo, rules  # noqa: E402

# "30d" is the SLO window of the period error budget rules (budget_rules).
RANGES = {"5m": "10s", "30m": "15s", "1h": "20s", "2h": "20s", "6h": "30s", "1d": "30s", "3d": "40s", "30d": "60s"}
NAMESPACE = "live"
# The value of the dashboards' multi-valued variables when "All" is picked (dashboards/src/builder.py).
ALL = ".*"


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        target_port: int | dict[int, dict[str, str]],
        alertmanager: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """``target_port``: one ferry port, or {port: extra target labels} for several (pod, track);
        ``alertmanager``: host:port Prometheus sends its alerts to; ``labels``: added to every alert."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: `make tools` installs it (Debian package prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        generated = rules(load_slo(), ranges=RANGES, hold="3s", labels=labels)
        generated["groups"].append(budget_rules(load_slo(), ranges=RANGES))
        for group in generated["groups"]:
            group["interval"] = "1s"
        targets = target_port if isinstance(target_port, dict) else {target_port: {}}
        (workdir / "rules.yaml").write_text(yaml.safe_dump(generated, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "ferry",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, **labels}}
                        for port, labels in targets.items()
                    ],
                }
            ],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
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
        wait_ready(self.url + "/-/ready", self.process, workdir / "prometheus.log")

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
    """Steady traffic on the predict routes (single and batch); ``everything``: jobs and the stream too."""

    def __init__(self, url: str, record: dict, everything: bool = True) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, record, everything))

    def _run(self, url: str, record: dict, everything: bool) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                client.post(url + "/api/v1/predict", json={"record": record})
                client.post(url + "/api/v1/predict/batch", json={"records": [record] * 3})
                if everything:
                    client.post(url + "/api/v1/jobs", json={"records": [record]})  # job panels need finished jobs
                    client.post(url + "/api/v1/predict/stream", json={"records": [record] * 4, "chunk_size": 2})
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def substitute(expr: str, pod: str = ALL, track: str = ALL) -> str:
    """A dashboard query with its Grafana variables filled in for this Prometheus (pod and track: a
    value, or the "All" regex)."""
    for name, value in (("namespace", NAMESPACE), ("job", "ferry"), ("pod", pod), ("track", track)):
        expr = expr.replace(f"${name}", value)
    return expr.replace("$__rate_interval", "10s")


def boards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((ROOT / "dashboards").glob("*.json"))}


def panel_queries(pod: str = ALL, track: str = ALL) -> list[tuple[str, str, str]]:
    out = []
    for name, board in boards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((name, panel["title"], substitute(target["expr"], pod, track)))
    return out


def annotation_queries() -> list[tuple[str, str, str]]:
    return [
        (name, annotation["name"], substitute(annotation["expr"]))
        for name, board in boards().items()
        for annotation in board["annotations"]["list"]
        if "expr" in annotation
    ]


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(board, variable, PromQL, label) of each `label_values(<selector>, <label>)` variable, as the
    query Grafana's label_values amounts to: the label's values among the selector's series."""
    out = []
    for name, board in boards().items():
        for variable in board["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable.get("definition", ""))
            if match:
                out.append((name, variable["name"], f"count by ({match[2]}) ({substitute(match[1])})", match[2]))
    return out


def threshold_color(panel: dict, value: float) -> str:
    """The color Grafana gives ``value`` on this panel: its mapping's color for a mapped value, else the
    color of the highest threshold step at or below it (the first step, value null, is the base)."""
    defaults = panel["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        for key, shown in mapping["options"].items():
            if float(key) == value:
                return str(shown["color"])
    color = ""
    for step in defaults["thresholds"]["steps"]:
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return color
