"""The SLO gate end to end: real gunicorn, real Locust (a subprocess: Locust monkey-patches with gevent).

Healthy service -> exit 0 and every report; faults beyond the SLO (errors, then latency) -> non-zero
exit and a verdict naming the broken objective. Runs are seconds long with a few users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.server import Server

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "loadtest" / "gate.py"


def run_gate(
    reports: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> tuple[int, str, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "LOCUST_"))}
    result = subprocess.run(
        [sys.executable, str(GATE), "--reports-dir", str(reports), *args],
        env={**base, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = result.stdout + result.stderr
    verdict = json.loads((reports / "verdict.json").read_text()) if (reports / "verdict.json").exists() else {}
    return result.returncode, out, verdict


def test_healthy_local_service_passes_and_writes_reports(churn_model: Path, tmp_path: Path) -> None:
    """`make slo-gate` without HOST: the gate starts the service (2 workers), runs every scenario, stops it."""
    reports = tmp_path / "reports"
    code, out, verdict = run_gate(
        reports,
        "--users",
        "6",  # with the default weights, every user class gets one
        "--duration",
        "8s",
        env={"FERRY_MODEL__PATH": str(churn_model), "FERRY_METRICS__DIR": str(tmp_path / "metrics")},
    )
    assert code == 0, out[-4000:]
    assert "started the service at http://127.0.0.1:" in out
    assert "VERDICT: PASS" in out and "slo-gate: PASS" in out
    assert verdict["passed"] is True and verdict["broken"] == []
    names = set(verdict["requests"])
    assert {
        "/api/v1/predict",
        "/api/v1/predict/batch",
        "/v2/models/{name}/infer",
        "/api/v1/predict/stream",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}/events",
        "job completion",
        "job callback",  # signed callbacks reached the gate's receiver and verified
    } <= names, names
    assert all(v["failures"] == 0 for v in verdict["requests"].values()), verdict["requests"]
    junit = (reports / "verdict.junit.xml").read_text()
    assert 'failures="0"' in junit and "<testcase" in junit
    assert (reports / "report.html").stat().st_size > 10_000
    stats = (reports / "locust_stats.csv").read_text()
    assert "/api/v1/predict/stream" in stats and "job callback" in stats


@pytest.fixture(scope="module")
def faulty(churn_model: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("gate-faults")
    faults = workdir / "faults.json"
    faults.write_text("{}")
    env = {"FERRY_FAULTS__ENABLED": "true", "FERRY_FAULTS__FILE": str(faults)}
    srv = Server(workdir, churn_model, env=env).start()
    yield srv, faults
    srv.stop()


def test_latency_beyond_the_slo_fails_naming_latency(faulty: tuple[Server, Path], tmp_path: Path) -> None:
    srv, faults = faulty
    faults.write_text(json.dumps({"latency_ms": 400}))
    code, out, verdict = run_gate(
        tmp_path, "--host", srv.url, "--users", "4", "--duration", "6s", "--", "--weights", "predict=1"
    )
    assert code != 0, out[-3000:]
    assert "latency" in verdict["broken"], verdict["broken"]
    assert "route-latency /api/v1/predict p99 ms" in verdict["broken"]
    assert "availability" not in verdict["broken"], verdict["broken"]  # slow, not failing
    assert "VERDICT: FAIL — broken: latency" in out


def test_errors_beyond_the_slo_fail_naming_availability(faulty: tuple[Server, Path], tmp_path: Path) -> None:
    srv, faults = faulty
    faults.write_text(json.dumps({"error_rate": 0.05}))
    code, out, verdict = run_gate(
        tmp_path, "--host", srv.url, "--users", "4", "--duration", "6s", "--", "--weights", "predict=2,batch=1,v2=1"
    )
    assert code != 0, out[-3000:]
    assert verdict["broken"][0] == "availability", verdict["broken"]
    check = next(c for c in verdict["checks"] if c["objective"] == "availability")
    assert check["actual"] > check["limit"] == pytest.approx(0.001)
    assert "VERDICT: FAIL — broken: availability" in out
    assert 'failures="' in (tmp_path / "verdict.junit.xml").read_text()
