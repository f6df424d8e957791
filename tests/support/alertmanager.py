"""A real Alertmanager (Debian package prometheus-alertmanager) on a free port of 127.0.0.1, with
its own storage and no clustering, started with a config derived from deploy/alertmanager/ferry.yaml."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "deploy/alertmanager/ferry.yaml"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: `make tools` installs it (Debian package prometheus-alertmanager)")
    return path


def snippet() -> dict[str, Any]:
    return yaml.safe_load(SNIPPET.read_text())


def with_webhooks(config: dict[str, Any], url: str, timings: dict[str, str] | None = None) -> dict[str, Any]:
    """The shipped config with every receiver posting to ``url`` (path /<receiver name>) and, for a
    test, every route's group_wait/group_interval/repeat_interval replaced by ``timings``; routes,
    matchers, grouping and inhibit rules stay as shipped."""
    out = copy.deepcopy(config)
    for receiver in out["receivers"]:
        receiver["webhook_configs"] = [{"url": f"{url.rstrip('/')}/{receiver['name']}", "send_resolved": False}]

    def retime(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if timings and key in timings:
                route[key] = timings[key]
        for child in route.get("routes", []):
            retime(child)

    retime(out["route"])
    return out


class Alertmanager:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "alertmanager.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary("prometheus-alertmanager"),
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip: a single instance, nothing else on the network
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.url + "/-/ready", self.process, self.log_path)

    def post(self, *alerts: dict[str, str]) -> None:
        """Firing alerts, by their labels (API v2)."""
        r = httpx.post(self.url + "/api/v2/alerts", json=[{"labels": labels} for labels in alerts], timeout=10)
        assert r.status_code == 200, r.text

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v2/alerts", timeout=10)
        assert r.status_code == 200, r.text
        return list(r.json())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
