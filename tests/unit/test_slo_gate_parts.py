"""The SLO gate's pure parts (loadtest/slo_gate.py): thresholds, verdicts, reports, load plans."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtest"))
sys.path.insert(0, str(ROOT / "scripts"))

import slo_gate  # noqa: E402
from slo_gate import Sample, Step  # noqa: E402

SLO = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text())


def fast(n: int, ms: int = 10) -> Sample:
    return Sample(n, 0, {ms: n})


def test_thresholds_derive_from_the_objectives() -> None:
    t = slo_gate.load_thresholds()
    assert t.error_ratio_max == pytest.approx(1 - SLO["objectives"]["availability"]["target"])
    assert t.slow_ratio_max == pytest.approx(1 - SLO["objectives"]["latency"]["target"])
    assert t.latency_threshold_ms == pytest.approx(SLO["objectives"]["latency"]["threshold_s"] * 1000)
    assert t.slo_routes == tuple(SLO["routes"])
    assert t.min_rps == SLO["gate"]["min_rps"]
    for name, limit in SLO["gate"]["routes"].items():
        assert t.routes[name] == slo_gate.RouteLimit(limit["p95_ms"], limit["p99_ms"])


def test_gate_and_alert_rules_follow_the_same_slo_file(tmp_path: Path) -> None:
    """Change thresholds in a copy of deploy/slo.yaml: the generated rules and the gate both follow."""
    from generate import load_slo, rules

    slo = load_slo()
    slo["objectives"]["availability"]["target"] = 0.995
    slo["objectives"]["latency"]["threshold_s"] = 0.5
    slo["gate"]["routes"]["/api/v1/predict"]["p99_ms"] = 450
    slo["gate"]["min_rps"] = 12.5
    copy = tmp_path / "slo.yaml"
    copy.write_text(yaml.safe_dump(slo))

    doc = rules(load_slo(copy))
    generated = "\n".join(rule["expr"] for group in doc["groups"] for rule in group["rules"])
    assert "(14.4 * 0.005)" in generated and "(14.4 * 0.001)" not in generated
    assert 'le="0.5"' in generated and 'le="0.3"' not in generated

    gate = slo_gate.load_thresholds(copy)
    assert gate.error_ratio_max == pytest.approx(0.005)
    assert gate.latency_threshold_ms == pytest.approx(500)
    assert gate.routes["/api/v1/predict"].p99_ms == 450
    assert gate.min_rps == 12.5
    # and the verdict uses them: 0.3 % errors passes under the copy, fails under the repository's file
    samples = {"/api/v1/predict": Sample(1000, 3, {10: 1000})}
    assert "availability" not in slo_gate.broken(slo_gate.judge(samples, 10, gate))
    assert "availability" in slo_gate.broken(slo_gate.judge(samples, 10, slo_gate.load_thresholds()))


def test_a_gate_looser_than_the_latency_objective_is_refused(tmp_path: Path) -> None:
    slo = yaml.safe_load((ROOT / "deploy/slo.yaml").read_text())
    slo["gate"]["routes"]["/api/v1/predict"]["p99_ms"] = 301
    copy = tmp_path / "slo.yaml"
    copy.write_text(yaml.safe_dump(slo))
    with pytest.raises(ValueError, match="exceeds the latency objective"):
        slo_gate.load_thresholds(copy)


def test_percentiles_follow_locusts_histogram() -> None:
    s = Sample(100, 0, {10: 95, 200: 4, 900: 1})
    assert s.percentile(0.95) == 10
    assert s.percentile(0.99) == 200
    assert s.percentile(1.0) == 900
    assert s.share_slower_than(300) == pytest.approx(0.01)
    assert Sample().percentile(0.5) is None
    window = Sample(150, 2, {10: 140, 200: 9, 900: 1}).minus(s)
    assert (window.requests, window.failures, window.histogram) == (50, 2, {10: 45, 200: 5})


def test_a_healthy_run_passes() -> None:
    t = slo_gate.load_thresholds()
    samples = {"/api/v1/predict": fast(600), "/api/v1/predict/batch": fast(200, 20)}
    checks = slo_gate.judge(samples, 60, t)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert slo_gate.broken(checks) == []
    assert "VERDICT: PASS" in slo_gate.table(checks)


def test_errors_beyond_the_budget_break_availability() -> None:
    t = slo_gate.load_thresholds()
    checks = slo_gate.judge({"/api/v1/predict": Sample(1000, 2, {10: 1000})}, 60, t)
    assert slo_gate.broken(checks) == ["availability"]
    assert "VERDICT: FAIL — broken: availability" in slo_gate.table(checks)


def test_slow_requests_break_latency_and_the_route_percentiles() -> None:
    t = slo_gate.load_thresholds()
    checks = slo_gate.judge({"/api/v1/predict": Sample(100, 0, {10: 90, 400: 10})}, 10, t)
    assert slo_gate.broken(checks) == [
        "latency",
        "route-latency /api/v1/predict p95 ms",
        "route-latency /api/v1/predict p99 ms",
    ]


def test_too_little_traffic_fails_and_no_data_never_passes() -> None:
    t = slo_gate.load_thresholds()
    checks = slo_gate.judge({"/api/v1/predict": fast(10)}, 60, t)
    assert "throughput all requests requests/s" in slo_gate.broken(checks)
    assert "throughput all requests requests" in slo_gate.broken(checks)
    empty = slo_gate.judge({}, 60, t)
    assert {"availability", "latency"} <= set(slo_gate.broken(empty))


def test_knee_is_the_best_step_before_the_first_broken_one() -> None:
    def step(users: int, rps: float, passed: bool) -> Step:
        return Step(users, 8, rps, 0.0, 10, 20, passed, [] if passed else ["latency"])

    assert (
        slo_gate.knee(
            [step(2, 40, True), step(4, 80, True), step(6, 75, True), step(8, 90, False), step(10, 200, True)]
        ).rps
        == 80
    )
    assert slo_gate.knee([step(2, 40, False)]) is None
    doc = slo_gate.verdict_document([], {}, [step(2, 40, False)])
    assert doc["passed"] is False and doc["capacity"]["knee"] is None


def test_json_and_junit_reports(tmp_path: Path) -> None:
    t = slo_gate.load_thresholds()
    checks = slo_gate.judge({"/api/v1/predict": Sample(1000, 50, {10: 1000})}, 60, t)
    doc = slo_gate.verdict_document(checks, {"host": "http://x"})
    slo_gate.write_reports(tmp_path, doc, checks)
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["passed"] is False and saved["broken"] == ["availability"] and saved["host"] == "http://x"
    suite = ET.parse(tmp_path / "verdict.junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == str(len(checks)) and suite.get("failures") == "1"
    failed = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["availability all requests error ratio"]
    assert "5.0000%" in failed[0].find("failure").get("message")


def test_load_plans() -> None:
    assert slo_gate.steady_plan(5, 10, 2, 60) == (10, 2)
    assert slo_gate.steady_plan(60, 10, 2, 60) is None
    assert [slo_gate.step_plan(t, 2, 3, 10, 8)[0] for t in (0, 9.9, 10, 25)] == [2, 2, 5, 8]
    assert slo_gate.step_plan(30, 2, 3, 10, 8) is None
    assert [slo_gate.spike_plan(t, 5, 20, 100)[0] for t in (0, 39, 40, 59, 60, 99)] == [5, 5, 20, 20, 5, 5]
    assert slo_gate.spike_plan(100, 5, 20, 100) is None
