"""A model call that never returns, against real gunicorn with 2 workers: the worker that runs it turns
unready, then exits and is replaced, while the other worker keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import joblib

from support.metrics import counter, scrape
from support.models import HangingModel
from support.server import Server

HANG_S = 1.0
EXIT_AFTER_S = 2.0


def test_a_hung_model_call_makes_its_worker_unready_then_replaced(tmp_path: Path) -> None:
    model = tmp_path / "hanging.joblib"
    joblib.dump(HangingModel(delay_s=0.0), model)
    env = {
        "FERRY_MODEL__REQUIRE_CARD": "false",
        "FERRY_INFERENCE__HANG_S": str(HANG_S),
        "FERRY_INFERENCE__HANG_EXIT_S": str(EXIT_AFTER_S),
    }
    with Server(tmp_path / "srv", model, env=env) as srv, httpx.Client(base_url=srv.url, timeout=5) as client:
        before = set(srv.worker_pids())
        started = time.perf_counter()
        hung = client.post("/api/v1/predict", json={"record": [666, 0, 0]}, headers={"x-request-timeout": "0.5"})
        assert hung.status_code == 504, hung.text
        hung_pid = srv.requests(path="/api/v1/predict")[0]["pid"]

        unready_at = replaced_at = None
        slowest = 0.0
        served = 0
        while time.perf_counter() - started < 20:
            now = time.perf_counter() - started
            for _ in range(5):  # each on a new connection, so both workers are asked
                ready = client.get("/readyz", headers={"connection": "close"})
                if ready.status_code == 503 and ready.json()["status"] == "hung" and unready_at is None:
                    unready_at = now
                    assert "/" not in ready.json()["reason"]
            t0 = time.perf_counter()
            answer = client.post("/api/v1/predict", json={"record": [1, 2, 3]}, headers={"connection": "close"})
            slowest = max(slowest, time.perf_counter() - t0)
            assert answer.status_code in (200, 503), answer.text
            served += answer.status_code == 200
            pids = set(srv.worker_pids())
            if hung_pid not in pids and len(pids) == 2 and replaced_at is None:
                replaced_at = now
            if replaced_at is not None and ready.status_code == 200:
                break
            time.sleep(0.02)
        after = set(srv.worker_pids())
        metrics = scrape(srv)
        records = srv.records()
    print(
        f"hung model call: worker unready after {unready_at:.2f} s, replaced after {replaced_at:.2f} s; "
        f"{served} predictions served meanwhile, slowest {slowest * 1000:.0f} ms"
    )
    assert unready_at is not None and unready_at < HANG_S + 2
    assert replaced_at is not None and replaced_at < HANG_S + EXIT_AFTER_S + 6
    assert hung_pid not in after and len(after - before) == 1
    assert served >= 5 and slowest < HANG_S + 1  # a request queued behind the hung call waits until it is found
    assert counter(metrics, "ferry_model_hangs_total") >= 1
    hung_lines = [r for r in records if r.get("event") == "model_call_hung"]
    assert hung_lines and hung_lines[0]["pid"] == hung_pid
    assert any(r.get("event") == "worker_exiting_hung_model" and r["pid"] == hung_pid for r in records)
