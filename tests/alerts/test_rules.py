"""Alert rules: generated from deploy/slo.yaml, valid for promtool 2.42, unit-tested, with runbooks."""

from __future__ import annotations

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


def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases: dict[str, set[str]] = {}
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add("fires" if case["exp_alerts"] else "silent")
    for rule in alerts():
        assert cases.get(rule["alert"]) == {"fires", "silent"}, f"{rule['alert']}: {cases.get(rule['alert'])}"


def test_every_alert_is_complete() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) >= 12
    for rule in alerts():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook_url"].endswith(f"/docs/runbooks/{rule['alert']}.md"), rule["alert"]


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
