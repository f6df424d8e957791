"""Live: the real service -> the real Prometheus (generated rules, shrunk windows) -> the real
Alertmanager with deploy/alertmanager/ferry.yaml -> a webhook receiver started here.

Only the receivers' integrations (a webhook here) and the group timings are the test's: routes,
matchers, grouping and inhibit rules are the shipped ones. The timings keep the shipped ordering —
tickets wait longer than pages before their first notification (group_wait), which is what lets a
page that fires a moment after a ticket still mute it.

One injected fault (every model call fails, so the breaker opens and 5xx burn the availability
budget) must yield exactly one page group, for namespace and service, holding the fast burn and the
breaker alert; the slow burn fires too (Alertmanager holds it, inhibited) and reaches no receiver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from support.alertmanager import Alertmanager, snippet, with_webhooks
from support.prometheus import NAMESPACE, Prometheus, Traffic
from support.receiver import Receiver
from support.server import Server

T = TypeVar("T")
LABELS = {"team": "ml-platform", "service": "ferry"}
PAGE = {"group_wait": "2s", "group_interval": "4s", "repeat_interval": "1h"}
TICKET = {"group_wait": "8s", "group_interval": "8s", "repeat_interval": "1h"}


def wait_for(check: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what()
        time.sleep(0.5)


def shipped_with_test_timings(url: str) -> dict[str, Any]:
    config = with_webhooks(snippet(), url)
    page, ticket = config["route"]["routes"][0]["routes"]
    assert page["receiver"] == "ferry-page" and ticket["receiver"] == "ferry-ticket"
    page.update(PAGE)
    ticket.update(TICKET)
    return config


def test_one_fault_one_page_and_the_inhibited_alert_arrives_nowhere(
    churn_model: Path, record: dict, tmp_path: Path
) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text("{}")
    env = {
        "FERRY_FAULTS__ENABLED": "true",
        "FERRY_FAULTS__FILE": str(faults),
        "FERRY_BREAKER__FAIL_MAX": "3",
        "FERRY_BREAKER__RESET_TIMEOUT_S": "600",
    }
    with Receiver() as hooks:
        manager = Alertmanager(tmp_path / "am", shipped_with_test_timings(hooks.url.removesuffix("/hook")))
        server = Server(tmp_path / "srv", churn_model, env=env).start()
        prometheus = Prometheus(tmp_path, server.port, alertmanager=f"127.0.0.1:{manager.port}", labels=LABELS)

        def notifications() -> list[dict[str, Any]]:
            return [{"path": r.path, **json.loads(r.body)} for r in list(hooks.requests)]

        def held() -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {}
            for alert in manager.alerts():
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
            return found

        def state() -> str:
            return f"prometheus: {prometheus.alerts()}\nalertmanager: {held()}\nreceived: {notifications()}"

        try:
            with Traffic(server.url, record, everything=False):  # the SLO routes only, nothing on the job path
                # Healthy traffic long enough for the shrunk windows to hold samples: nothing is sent.
                started = time.monotonic()
                wait_for(lambda: prometheus.query("ferry:sli_errors:ratio_rate1h"), 30, state)
                time.sleep(5)
                warm_s = time.monotonic() - started
                assert notifications() == [], state()

                faults.write_text(json.dumps({"error_rate": 1.0}))
                fault_at = time.monotonic()
                # The slow burn fires and Alertmanager holds it, muted by the fast burn.
                wait_for(
                    lambda: (
                        all(a["status"]["inhibitedBy"] for a in held().get("FerryAvailabilityBudgetBurnSlow", []))
                        and "FerryAvailabilityBudgetBurnSlow" in held()
                    ),
                    60,
                    state,
                )
                page_at = wait_for(
                    lambda: next((n for n in notifications() if n["receiver"] == "ferry-page"), None), 60, state
                )
                first_page_s = time.monotonic() - fault_at
                # The slow burn reached Alertmanager before the page was sent; past the tickets'
                # group_wait and one more group interval of each route, anything that was going to be
                # sent has been.
                time.sleep(8 + 8)
                sent = notifications()
                names = {n["receiver"] for n in sent}
                assert names == {"ferry-page"}, state()  # no ticket: the slow burn reached no receiver
                assert {n["path"] for n in sent} == {"/ferry-page"}
                # One page group (one incident at a pager, which deduplicates on the group key).
                assert {n["groupKey"] for n in sent} == {page_at["groupKey"]}, state()
                assert page_at["groupLabels"] == {"namespace": NAMESPACE, "service": "ferry"}
                alerted = {a["labels"]["alertname"] for n in sent for a in n["alerts"]}
                assert alerted == {"FerryAvailabilityBudgetBurnFast", "FerryCircuitBreakerOpen"}, state()
                assert {a["labels"]["alertname"] for a in sent[-1]["alerts"]} == alerted  # the page says both
                for n in sent:
                    for a in n["alerts"]:
                        assert a["labels"]["team"] == "ml-platform" and a["labels"]["severity"] == "page", a
                print(
                    f"warm-up {warm_s:.1f} s; first page {first_page_s:.1f} s after the fault; "
                    f"{len(sent)} notification(s) of one group; flow {time.monotonic() - started:.1f} s"
                )
        finally:
            prometheus.stop()
            manager.stop()
            assert server.stop() == 0
