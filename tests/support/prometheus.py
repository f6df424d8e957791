"""A real Prometheus (Debian package) scraping a ferry Server on 127.0.0.1 with the generated rules,
shrunk by the documented test override (scripts/generate.py `rules(ranges=, hold=)`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from generate import load_slo, rules  # noqa: E402

RANGES = {"5m": "10s", "30m": "15s", "1h": "20s", "2h": "20s", "6h": "30s", "1d": "30s", "3d": "40s"}
NAMESPACE = "live"


class Prometheus:
    def __init__(
        self, workdir: Path, target_port: int, alertmanager: str | None = None, labels: dict[str, str] | None = None
    ) -> None:
        """``alertmanager``: host:port Prometheus sends its alerts to; ``labels``: added to every alert."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: `make tools` installs it (Debian package prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        generated = rules(load_slo(), ranges=RANGES, hold="3s", labels=labels)
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
                client.post(url + "/api/v1/jobs", json={"records": [record]})  # job panels need finished jobs
                client.post(url + "/api/v1/predict/stream", json={"records": [record] * 4, "chunk_size": 2})
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def substitute(expr: str) -> str:
    """A dashboard query with its Grafana variables filled in for this Prometheus."""
    return expr.replace("$namespace", NAMESPACE).replace("$job", "ferry").replace("$__rate_interval", "10s")


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], substitute(target["expr"])))
    return out
