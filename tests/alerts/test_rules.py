"""Alert rules: generated from deploy/slo.yaml, valid for promtool 2.42, unit-tested, with runbooks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/rules/ferry.rules.yaml"
TESTS = ROOT / "tests/alerts/ferry.rules.test.yaml"
RUNBOOKS = ROOT / "docs/runbooks"
HEADINGS = ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"]

sys.path.insert(0, str(ROOT / "scripts"))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    return path


def alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def duration_s(text: str) -> int:
    """A Prometheus duration as promtool's eval_time uses it (e.g. ``2m30s``), in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def shards(doc: dict, count: int) -> list[dict]:
    """The test file's groups dealt into ``count`` files, each as heavy as can be made equal. promtool
    evaluates every rule at every step up to a group's last eval_time, so that time is the weight."""
    loads = [0] * count
    members: list[list[dict]] = [[] for _ in range(count)]
    for weight, test in sorted(
        ((max(duration_s(c["eval_time"]) for c in t["alert_rule_test"]) + 600, t) for t in doc["tests"]),
        key=lambda pair: -pair[0],
    ):
        lightest = loads.index(min(loads))
        loads[lightest] += weight
        members[lightest].append(test)
    rule_files = [str((TESTS.parent / f).resolve()) for f in doc["rule_files"]]
    return [{**doc, "rule_files": rule_files, "tests": tests} for tests in members if tests]


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """`promtool test rules` on every group of the test file. promtool runs a file's groups one after
    another on one core; the groups share nothing, so they are split into one file per core and run side
    by side: same groups, rules and evaluation interval, a fraction of the wall time."""
    doc = yaml.safe_load(TESTS.read_text())
    parts = shards(doc, max(1, min(4, len(os.sched_getaffinity(0)))))
    assert sorted(t["name"] for part in parts for t in part["tests"]) == sorted(t["name"] for t in doc["tests"])
    running = []
    for index, part in enumerate(parts):
        path = tmp_path / f"shard-{index}.test.yaml"
        path.write_text(yaml.safe_dump(part, sort_keys=False))
        running.append(
            subprocess.Popen([promtool(), "test", "rules", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = [(process.communicate()[0].decode(), process.returncode) for process in running]
    for output, code in outputs:
        assert code == 0 and "SUCCESS" in output, output


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Every alert fires in some test and stays silent in another; an alert with a page and a ticket
    rule (FerryModelNotReady) fires at each severity."""
    cases: dict[str, set[str]] = {}
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            seen = cases.setdefault(case["alertname"], set())
            seen.add("fires" if case["exp_alerts"] else "silent")
            seen.update(a["exp_labels"]["severity"] for a in case["exp_alerts"])
    for rule in alerts():
        expected = {"fires", "silent", rule["labels"]["severity"]}
        assert expected <= cases.get(rule["alert"], set()), f"{rule['alert']}: {cases.get(rule['alert'])}"


def test_every_alert_is_complete() -> None:
    rules = [(rule["alert"], rule["labels"]["severity"]) for rule in alerts()]
    assert len(rules) == len(set(rules)) >= 14
    slo = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text())
    for rule in alerts():
        labels = rule["labels"]
        assert labels["severity"] in ("page", "ticket"), rule["alert"]
        assert (labels["team"], labels["service"]) == (slo["team"], slo["service"]) == ("ml-platform", "ferry")
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook_url"].endswith(f"/docs/runbooks/{rule['alert']}.md"), rule["alert"]


def test_labels_are_added_to_every_alert_and_win() -> None:
    from generate import load_slo, rules

    doc = rules(load_slo(), labels={"team": "payments", "tier": "1"})
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["team"] == "payments" and rule["labels"]["tier"] == "1", rule["alert"]
                assert rule["labels"]["service"] == "ferry"
            else:
                assert "labels" not in rule, "recording rules keep their series' labels"


def test_the_slo_routes_regex_matches_exactly_the_slo_routes() -> None:
    """PromQL anchors =~ at both ends; the stream route (outside the SLO) and raw paths must not match."""
    from generate import _regex, load_slo

    slo = load_slo()
    pattern = re.compile(f"^(?:{_regex(slo['routes'])})$")
    for route in slo["routes"]:
        assert pattern.match(route), route
    for route in ("/api/v1/predict/stream", "/v2/models/churn/infer", "/api/v1/jobs", "/api/v1/predictx", "unmatched"):
        assert not pattern.match(route), route


def test_burn_alerts_are_guarded_by_traffic_and_error_ratios_use_the_same_routes() -> None:
    by_name = {rule["alert"]: rule for rule in alerts()}
    slo = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text())
    for name, rule in by_name.items():
        if "BudgetBurn" in name:
            assert rule["expr"].count(f"> {slo['min_requests_per_s']}\n") == 2, name
    for name in ("FerryLoadShedding", "FerryDeadlinesExceeded"):
        numerator, denominator = by_name[name]["expr"].split("\n/\n")
        assert 'route=~"' in numerator and numerator.split('route=~"')[1].split('"')[0] in denominator, name


def test_every_alert_has_its_runbook_and_every_runbook_its_alert() -> None:
    names = {rule["alert"] for rule in alerts()}
    books = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}  # README.md: the shared preamble
    assert names == books, {"alerts without runbook": names - books, "runbooks without alert": books - names}
    for name in names:
        text = (RUNBOOKS / f"{name}.md").read_text()
        found = [line.strip() for line in text.splitlines() if line.startswith("## ")]
        assert found == HEADINGS, f"{name}: {found}"
        for heading, body in zip(HEADINGS, re.split(r"^## .*$", text, flags=re.M)[1:], strict=True):
            assert body.strip(), f"{name}: {heading} is empty"


def test_thresholds_come_from_the_slo_file(tmp_path: Path) -> None:
    """Change the SLO in a copy: the generated rules follow."""
    from generate import load_slo, rules

    slo = load_slo()
    slo["objectives"]["availability"]["target"] = 0.995
    slo["causes"]["shed_ratio"] = 0.07
    copy = tmp_path / "slo.yaml"
    copy.write_text(yaml.safe_dump(slo))
    changed = yaml.safe_dump(rules(load_slo(copy)))
    assert "(14.4 * 0.005)" in changed and "(14.4 * 0.001)" not in changed
    assert "> 0.07" in changed
