"""deploy/alertmanager/ferry.yaml with the real Alertmanager 0.25 (Debian prometheus-alertmanager):
`amtool check-config`, `amtool config routes test` for every ferry alert, and its inhibit rules
evaluated by a running Alertmanager."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.alertmanager import SNIPPET, Alertmanager, binary, snippet

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

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


def operator_config(doc: dict[str, Any]) -> dict[str, Any]:
    """A rendered AlertmanagerConfig as the Prometheus Operator merges it into an Alertmanager config:
    receivers named <namespace>/<name>/<receiver>, a namespace matcher on its route and on both sides
    of each inhibit rule, continue: true on its route, placed under the Alertmanager's own root route."""
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]

    def matchers(items: list[dict[str, str]]) -> list[str]:
        return [f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in items]

    def route(r: dict[str, Any], top: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"receiver": f"{ns}/{name}/{r['receiver']}", "group_by": r["groupBy"]}
        out["matchers"] = matchers(r["matchers"]) + ([f'namespace="{ns}"'] if top else [])
        for key, plain in (("groupWait", "group_wait"), ("groupInterval", "group_interval")):
            if key in r:
                out[plain] = r[key]
        if "repeatInterval" in r:
            out["repeat_interval"] = r["repeatInterval"]
        if top:
            out["continue"] = True
        if "routes" in r:
            out["routes"] = [route(child, False) for child in r["routes"]]
        return out

    spec = doc["spec"]
    return {
        "route": {"receiver": "default", "routes": [route(spec["route"], True)]},
        "inhibit_rules": [
            {
                "source_matchers": [*matchers(rule["sourceMatch"]), f'namespace="{ns}"'],
                "target_matchers": [*matchers(rule["targetMatch"]), f'namespace="{ns}"'],
                "equal": rule["equal"],
            }
            for rule in spec["inhibitRules"]
        ],
        "receivers": [{"name": "default"}, *({"name": f"{ns}/{name}/{r['name']}"} for r in spec["receivers"])],
    }


def test_the_chart_object_routes_the_same_once_the_operator_merges_it(tmp_path: Path) -> None:
    """The chart's AlertmanagerConfig (release shop, namespace prod) routes every ferry alert of its
    namespace like the snippet, and leaves another namespace's alerts to the Alertmanager's own routes."""
    kv.ensure_k8s_tools()
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "alertmanagerConfig": {
                    "enabled": True,
                    "receivers": [{"name": "oncall"}, {"name": "tickets"}],
                    "page": {"receiver": "oncall"},
                    "ticket": {"receiver": "tickets"},
                }
            }
        )
    )
    api = "monitoring.coreos.com/v1alpha1/AlertmanagerConfig"
    argv = [kv.HELM, "template", "shop", str(kv.CHART), "-n", "prod", "-f", str(values), "--api-versions", api]
    result = kv.run(argv)
    assert result.returncode == 0, result.stderr
    (doc,) = [d for d in kv.documents(result.stdout) if d["kind"] == "AlertmanagerConfig"]
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(operator_config(doc), sort_keys=False))
    checked = subprocess.run([binary("amtool"), "check-config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    receiver = {"page": "prod/shop-ferry/oncall", "ticket": "prod/shop-ferry/tickets"}
    for labels in ferry_alerts():
        ours = labels | {"service": "shop-ferry"}
        assert routes_test(ours, config) == receiver[labels["severity"]], ours
        assert routes_test(ours | {"namespace": "staging"}, config) == "default"
