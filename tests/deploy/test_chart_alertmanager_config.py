"""The chart's AlertmanagerConfig (`alertmanagerConfig.*`): valid against the strict vendored CRD
schema, and the same routing and inhibition as deploy/alertmanager/ferry.yaml (which amtool and a
live Alertmanager prove in tests/alerts and tests/live), with the release's service and receivers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

from support import notes  # noqa: E402
from support.helm import refusal  # noqa: E402

API = "monitoring.coreos.com/v1alpha1/AlertmanagerConfig"
SNIPPET = ROOT / "deploy/alertmanager/ferry.yaml"
RECEIVERS = [
    {"name": "oncall", "pagerdutyConfigs": [{"routingKey": {"name": "pd", "key": "routing-key"}}]},
    {"name": "tickets", "webhookConfigs": [{"url": "https://tickets.example.com/hook"}]},
]
VALUES = {
    "alertmanagerConfig": {
        "enabled": True,
        "receivers": RECEIVERS,
        "page": {"receiver": "oncall"},
        "ticket": {"receiver": "tickets"},
    }
}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(tmp_path: Path, values: dict[str, Any], release: str = "shop", api: bool = True) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    extra = ("--api-versions", API) if api else ()
    argv = [kv.HELM, "template", release, str(kv.CHART), "--namespace", "prod", "--values", str(path), *extra]
    result = kv.run(argv)
    assert result.returncode == 0, result.stderr
    return [d for d in kv.documents(result.stdout) if d["kind"] == "AlertmanagerConfig"]


def matcher(m: dict[str, str]) -> str:
    """An AlertmanagerConfig matcher object as Alertmanager's matcher string (what the operator writes)."""
    return f'{m["name"]}{m["matchType"]}"{m["value"]}"'


def as_plain(route: dict[str, Any]) -> dict[str, Any]:
    keys = {"groupBy": "group_by", "groupWait": "group_wait", "groupInterval": "group_interval"}
    keys |= {"repeatInterval": "repeat_interval"}
    out = {keys.get(k, k): v for k, v in route.items() if k not in ("matchers", "routes")}
    out["matchers"] = [matcher(m) for m in route.get("matchers", [])]
    if "routes" in route:
        out["routes"] = [as_plain(r) for r in route["routes"]]
    return out


def shipped(service: str, receivers: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """deploy/alertmanager/ferry.yaml's ferry route and inhibit rules, for ``service`` and ``receivers``."""
    text = SNIPPET.read_text().replace('service="ferry"', f'service="{service}"')
    config = yaml.safe_load(text)
    route = copy.deepcopy(config["route"]["routes"][0])

    def rename(r: dict[str, Any]) -> None:
        r["receiver"] = receivers[r["receiver"]]
        for child in r.get("routes", []):
            rename(child)

    rename(route)
    return route, config["inhibit_rules"]


def test_the_rendered_object_passes_the_strict_crd_schema(tmp_path: Path) -> None:
    (doc,) = render(tmp_path, VALUES)
    assert kv.validate_cr(doc) == []
    # The schema reaches into the receivers: a misspelt integration field is refused.
    broken = copy.deepcopy(doc)
    broken["spec"]["receivers"][1]["webhookConfigs"][0]["ulr"] = "https://x.example"
    assert any("'ulr' was unexpected" in p for p in kv.validate_cr(broken))


def test_same_routes_and_inhibitions_as_the_shipped_snippet(tmp_path: Path) -> None:
    (doc,) = render(tmp_path, VALUES)
    spec = doc["spec"]
    route, inhibit = shipped("shop-ferry", {"ferry-page": "oncall", "ferry-ticket": "tickets"})
    assert as_plain(spec["route"]) == route
    plain = [
        {
            "source_matchers": [matcher(m) for m in rule["sourceMatch"]],
            "target_matchers": [matcher(m) for m in rule["targetMatch"]],
            "equal": rule["equal"],
        }
        for rule in spec["inhibitRules"]
    ]
    assert plain == inhibit
    assert spec["receivers"] == RECEIVERS
    assert doc["metadata"] == doc["metadata"] | {"name": "shop-ferry", "namespace": "prod"}


def test_values_set_timings_matchers_and_labels(tmp_path: Path) -> None:
    values = copy.deepcopy(VALUES)
    values["alertmanagerConfig"] |= {
        "labels": {"alertmanagerConfig": "team-a"},
        "matchers": [{"name": "cluster", "value": "eu-1", "matchType": "="}],
        "page": {"receiver": "oncall", "groupWait": "10s", "groupInterval": "1m", "repeatInterval": "1h"},
    }
    (doc,) = render(tmp_path, values)
    assert kv.validate_cr(doc) == []
    route = doc["spec"]["route"]
    assert [matcher(m) for m in route["matchers"]] == ['service="shop-ferry"', 'cluster="eu-1"']
    page = route["routes"][0]
    assert (page["groupWait"], page["groupInterval"], page["repeatInterval"]) == ("10s", "1m", "1h")
    assert doc["metadata"]["labels"]["alertmanagerConfig"] == "team-a"


def test_default_timings_are_the_snippets(tmp_path: Path) -> None:
    (doc,) = render(tmp_path, VALUES)
    route, _ = shipped("shop-ferry", {"ferry-page": "oncall", "ferry-ticket": "tickets"})
    timings = ("groupWait", "groupInterval", "repeatInterval")
    for ours, theirs in zip(doc["spec"]["route"]["routes"], route["routes"], strict=True):
        assert [ours[k] for k in timings] == [theirs[k] for k in ("group_wait", "group_interval", "repeat_interval")]


def test_off_by_default_and_skipped_without_the_api(tmp_path: Path) -> None:
    assert render(tmp_path, {}) == []
    assert render(tmp_path, VALUES, api=False) == []


def test_receivers_that_reach_no_one_are_refused(tmp_path: Path) -> None:
    args = ("--api-versions", API, "--set", "alertmanagerConfig.enabled=true")
    error = refusal(kv.HELM, kv.CHART, *args)
    assert 'alertmanagerConfig.page.receiver is "page", but alertmanagerConfig.receivers has no receiver' in error
    error = refusal(
        kv.HELM,
        kv.CHART,
        *args,
        "--set",
        "alertmanagerConfig.receivers[0].name=oncall",
        "--set",
        "alertmanagerConfig.page.receiver=oncall",
    )
    assert 'alertmanagerConfig.ticket.receiver is "ticket"' in error
    # A receiver without a name, a duration that is not one: the values schema.
    assert "missing property 'name'" in refusal(
        kv.HELM, kv.CHART, *args, "--set", "alertmanagerConfig.receivers[0].webhookConfigs=null"
    )
    assert "/alertmanagerConfig/page/groupWait': 'soon' does not match" in refusal(
        kv.HELM, kv.CHART, *args, "--set", "alertmanagerConfig.page.groupWait=soon"
    )


def test_notes_name_the_receivers_or_say_it_was_skipped(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    rendered = notes.render_notes(kv.HELM, kv.CHART, tmp_path, "-f", str(values), "--api-versions", API)
    assert 'AlertmanagerConfig ferry: pages to receiver "oncall"' in rendered
    assert 'tickets to "tickets"' in rendered
    skipped = notes.render_notes(kv.HELM, kv.CHART, tmp_path, "-f", str(values))
    assert "AlertmanagerConfig NOT rendered" in skipped
