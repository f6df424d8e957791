"""The chart's PrometheusRule: routing labels and links on every alert, from values.

Rendered with the real helm for a release that is not named ferry (``shop`` in ``team-a``, full name
``shop-ferry``): every alert carries ``team``/``service`` and ``additionalRuleLabels``, a ``runbook_url``
pinned to the chart version (or under ``runbookBaseUrl``), a ``dashboard_url`` to this release's own
service dashboard when ``dashboardBaseUrl`` is set, and ``owner``/``escalation`` when set; promtool accepts
the rendered spec.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

from support.helm import refusal  # noqa: E402

CHART = kv.CHART
RELEASE, NAMESPACE = "shop", "team-a"
VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
VALUES = {
    "prometheusRule.team": "payments",
    "prometheusRule.service": "churn-scoring",
    "prometheusRule.additionalRuleLabels.tier": "1",
    "prometheusRule.additionalRuleLabels.cluster": "eu-1",
    "prometheusRule.runbookBaseUrl": "https://wiki.example.com/ferry/runbooks/",
    "prometheusRule.dashboardBaseUrl": "https://grafana.example.com",
    "prometheusRule.owner": "ml-platform (Ada)",
    "prometheusRule.escalation": "https://pager.example.com/ml-platform",
}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(values: dict[str, str]) -> list[dict]:
    argv = [kv.HELM, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    argv += [arg for api in kv.MONITORING for arg in ("--api-versions", api)]
    argv += [arg for key, value in values.items() for arg in ("--set-string", f"{key}={value}")]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def alerts(docs: list[dict]) -> list[dict]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def generic_alerts() -> list[dict]:
    doc = yaml.safe_load((ROOT / "deploy/rules/ferry.rules.yaml").read_text())
    return [r for group in doc["groups"] for r in group["rules"] if "alert" in r]


def test_defaults_label_every_alert_with_the_release_and_pin_the_runbooks() -> None:
    rendered = alerts(render({}))
    generic = generic_alerts()
    assert [(r["alert"], r["labels"]["severity"]) for r in rendered] == [
        (r["alert"], r["labels"]["severity"]) for r in generic
    ]
    for rule, source in zip(rendered, generic, strict=True):
        assert rule["labels"] == {**source["labels"], "team": "ml-platform", "service": "shop-ferry"}, rule["alert"]
        assert rule["annotations"] == {
            **source["annotations"],
            "runbook_url": f"https://github.com/ferry-serving/ferry/blob/v{VERSION}/docs/runbooks/{rule['alert']}.md",
        }, rule["alert"]


def test_values_set_labels_and_annotations_of_every_alert() -> None:
    docs = render(VALUES)
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shop-ferry-dashboards"]
    uids = {name.rsplit("-", 1)[-1]: json.loads(text)["uid"] for name, text in configmap["data"].items()}
    service_uid = uids["service.json"]
    assert service_uid.startswith("ferry-service-"), uids
    rendered = alerts(docs)
    assert len(rendered) >= 15
    for rule in rendered:
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels["severity"] in ("page", "ticket"), rule["alert"]
        assert {k: labels[k] for k in ("team", "service", "tier", "cluster")} == {
            "team": "payments",
            "service": "churn-scoring",
            "tier": "1",
            "cluster": "eu-1",
        }, rule["alert"]
        assert annotations["runbook_url"] == f"https://wiki.example.com/ferry/runbooks/{rule['alert']}.md"
        assert annotations["dashboard_url"] == f"https://grafana.example.com/d/{service_uid}"
        assert annotations["owner"] == "ml-platform (Ada)"
        assert annotations["escalation"] == "https://pager.example.com/ml-platform"
        assert annotations["summary"] and annotations["description"], rule["alert"]


def test_no_dashboard_owner_or_escalation_annotation_unless_set() -> None:
    for rule in alerts(render({})):
        assert not {"dashboard_url", "owner", "escalation"} & set(rule["annotations"]), rule["alert"]


def test_the_chart_own_rules_keep_severity_and_slo() -> None:
    """additionalRuleLabels cannot rename what routing and inhibition key on: the schema refuses it."""
    for key in ("severity", "team", "service", "slo"):
        error = refusal(
            kv.HELM, CHART, "--set", f"prometheusRule.additionalRuleLabels.{key}=x", "--api-versions", kv.MONITORING[0]
        )
        assert "additionalRuleLabels" in error or "propertyName" in error, error


def test_promtool_accepts_the_rendered_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    (rule,) = [d for d in render(VALUES) if d["kind"] == "PrometheusRule"]
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
