"""deploy/alertmanager/ferry.yaml with the real Alertmanager 0.25 (Debian prometheus-alertmanager):
`amtool check-config`, `amtool config routes test` for every ferry alert, and its inhibit rules
evaluated by a running Alertmanager."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.alertmanager import SNIPPET, Alertmanager, binary, snippet

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/rules/ferry.rules.yaml"
RECEIVER = {"page": "ferry-page", "ticket": "ferry-ticket"}
# What every ferry alert carries once deploy/slo.yaml names them (its `service` and `team`).
SERVICE = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text()).get("service", "ferry")
TEAM = "ml-platform"


def ferry_alerts() -> list[dict[str, str]]:
    """The label set of every alerting rule (namespace and job as Prometheus adds them), plus
    FerryTrafficDrop at both severities when the rules file does not have it yet."""
    doc = yaml.safe_load(RULES.read_text())
    found = [
        {"alertname": rule["alert"], "namespace": "prod", "job": "ferry", "service": SERVICE, "team": TEAM}
        | rule["labels"]
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    if not any(a["alertname"] == "FerryTrafficDrop" for a in found):
        base = {"alertname": "FerryTrafficDrop", "namespace": "prod", "job": "ferry", "service": SERVICE, "team": TEAM}
        found += [base | {"severity": "page"}, base | {"severity": "ticket"}]
    return found


def routes_test(labels: dict[str, str], config: Path = SNIPPET) -> str:
    argv = [binary("amtool"), "config", "routes", "test", f"--config.file={config}"]
    result = subprocess.run(
        [*argv, *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_amtool_check_config() -> None:
    result = subprocess.run([binary("amtool"), "check-config", str(SNIPPET)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 inhibit rules" in result.stdout, result.stdout


def test_the_snippet_routes_on_the_service_of_deploy_slo() -> None:
    ferry = snippet()["route"]["routes"][0]
    assert ferry["matchers"] == [f'service="{SERVICE}"']


@pytest.mark.parametrize("labels", ferry_alerts(), ids=lambda a: f"{a['alertname']}-{a['severity']}")
def test_every_ferry_alert_reaches_the_receiver_of_its_severity(labels: dict[str, str]) -> None:
    assert labels["severity"] in RECEIVER, labels
    assert routes_test(labels) == RECEIVER[labels["severity"]]


def test_other_alerts_stay_out_of_ferry_receivers() -> None:
    assert routes_test({"alertname": "KubePodCrashLooping", "severity": "critical", "namespace": "prod"}) == "default"
    assert routes_test({"alertname": "FerryX", "service": "billing", "severity": "page"}) == "default"
    # A ferry alert of no known severity still reaches a ferry receiver (never the catch-all).
    assert routes_test({"alertname": "FerryX", "service": SERVICE, "severity": "critical"}) == "ferry-ticket"


def test_pages_group_by_namespace_and_service_tickets_by_alert() -> None:
    page, ticket = snippet()["route"]["routes"][0]["routes"]
    assert page["group_by"] == ["namespace", "service"]
    assert ticket["group_by"] == ["namespace", "service", "alertname"]


def test_inhibition_on_a_running_alertmanager(tmp_path: Path) -> None:
    """Posted straight to the API: which alerts the shipped inhibit rules mute, and which they must not."""
    manager = Alertmanager(tmp_path, snippet())
    try:

        def alert(name: str, severity: str, namespace: str = "prod", **extra: str) -> dict[str, str]:
            return {"alertname": name, "severity": severity, "namespace": namespace, "job": "ferry"} | {
                "service": SERVICE,
                "team": TEAM,
                **extra,
            }

        manager.post(
            alert("FerryAvailabilityBudgetBurnFast", "page", slo="availability"),
            alert("FerryAvailabilityBudgetBurnSlow", "ticket", slo="availability"),
            alert("FerryLatencyBudgetBurnSlow", "ticket", slo="latency"),  # another SLO: not muted by it
            alert("FerryCircuitBreakerOpen", "page"),  # a paging cause rides in the page group
            alert("FerryLoadShedding", "ticket"),
            alert("FerryModelNotReady", "ticket"),
            alert("FerryJobsFailing", "ticket"),  # not a cause of the burn: stays a ticket
            alert("FerryAvailabilityBudgetBurnSlow", "ticket", namespace="staging", slo="availability"),
            alert("FerryLoadShedding", "ticket", namespace="staging"),
            {"alertname": "OtherSlow", "severity": "ticket", "namespace": "prod", "slo": "availability"},
        )
        expected = {
            ("FerryAvailabilityBudgetBurnSlow", "prod"),
            ("FerryLoadShedding", "prod"),
            ("FerryModelNotReady", "prod"),
        }
        deadline = time.monotonic() + 15
        while True:
            found = manager.alerts()
            muted = {(a["labels"]["alertname"], a["labels"]["namespace"]) for a in found if a["status"]["inhibitedBy"]}
            if len(found) == 10 and muted == expected:
                break
            assert time.monotonic() < deadline, (muted, [a["labels"] for a in found])
            time.sleep(0.2)
    finally:
        manager.stop()
