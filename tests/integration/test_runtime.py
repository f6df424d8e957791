"""The process model: multiprocess metrics, JSON logs, restarts, recycling and SIGTERM."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ferry import cgroups
from support.metrics import counter, scrape
from support.server import Server


def spread_requests(server: Server, record: dict, n: int) -> None:
    """n predictions on fresh connections from 8 threads, so both workers take some."""

    def one(_: int) -> int:
        return httpx.post(server.url + "/api/v1/predict", json={"record": record}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(n))) == {200}


PREDICT = {"route": "/api/v1/predict", "method": "POST", "status_class": "2xx"}


def test_counters_are_exact_across_workers_and_restart(churn_model: Path, record: dict, tmp_path: Path) -> None:
    n = 120
    server = Server(tmp_path, churn_model).start()
    try:
        spread_requests(server, record, n)
        pids = {r["pid"] for r in server.records() if r.get("event") == "request" and r["route"] == "/api/v1/predict"}
        assert pids == set(server.worker_pids()), "both workers must have served requests"
        for _ in range(6):  # whichever worker answers the scrape, the total is the same
            text = scrape(server)
            assert counter(text, "ferry_http_requests_total", **PREDICT) == n
            assert counter(text, "ferry_predicted_rows_total", model="churn") == n
            assert counter(text, "ferry_http_request_duration_seconds_count", **PREDICT) == n
        assert counter(text, "ferry_workers") == 2
        assert counter(text, "ferry_model_ready") == 1
        assert counter(text, "ferry_process_resident_memory_bytes") > 10e6
        classes = counter(text, "ferry_predicted_class_total", model="churn")
        assert classes == n
    finally:
        assert server.stop() == 0
    # Same metrics directory, new master: the launcher wiped it, so counting starts at zero.
    server = Server(tmp_path, churn_model).start()
    try:
        text = scrape(server)
        assert counter(text, "ferry_http_requests_total", **PREDICT) == 0
        assert counter(text, "ferry_worker_starts_total") == 2
    finally:
        assert server.stop() == 0


def test_recycled_workers_keep_totals(churn_model: Path, record: dict, tmp_path: Path) -> None:
    """max_requests recycles workers; their counts survive, their live gauges do not."""
    server = Server(tmp_path, churn_model, env={"FERRY_SERVER__MAX_REQUESTS": "20"}).start()
    try:
        before = set(server.worker_pids())
        n = 100
        spread_requests(server, record, n)
        server.wait_for("/readyz", 200, 30)
        text = scrape(server)
        assert counter(text, "ferry_http_requests_total", **PREDICT) == n
        assert counter(text, "ferry_worker_starts_total") > 2
        assert set(server.worker_pids()) != before
        deadline = time.monotonic() + 10
        while counter(scrape(server), "ferry_workers") != 2:  # dead workers' live gauges are removed
            assert time.monotonic() < deadline, scrape(server)
            time.sleep(0.2)
    finally:
        assert server.stop() == 0


def test_every_line_is_json_one_access_line_per_request_and_sigterm_exits_zero_in_time(
    churn_model: Path, record: dict, tmp_path: Path
) -> None:
    """One server for both: its output is checked whole, after a SIGTERM that must end it within its
    graceful timeout."""
    server = Server(tmp_path, churn_model, env={"FERRY_SERVER__GRACEFUL_TIMEOUT_S": "5"}).start()
    ids = [f"line-test-{i}" for i in range(40)]
    try:
        for i, rid in enumerate(ids):
            body = {"record": record} if i % 4 else {"record": {"bad": 1}}  # errors log one line too
            httpx.post(server.url + "/api/v1/predict", json=body, headers={"X-Request-ID": rid})
        httpx.get(server.url + "/nope", headers={"X-Request-ID": "line-test-404"})
        spread_requests(server, record, 10)  # on fresh connections, so both workers have served
    finally:
        started = time.monotonic()
        assert server.stop(timeout=5) == 0
        assert time.monotonic() - started < 5
    records = server.records()  # raises on the first line that is not JSON
    assert "Shutting down: Master" in [r["event"] for r in records]
    # The launcher may log before it execs gunicorn (here: the harness's short graceful timeout
    # triggers its timeout_chain warning); from then on gunicorn's boot line comes first.
    launcher = [r for r in records if r.get("logger") == "ferry.launcher"]
    assert records[: len(launcher)] == launcher
    assert records[len(launcher)]["event"].startswith("Starting gunicorn")
    access = [r for r in records if r.get("logger") == "ferry.access"]
    for rid in [*ids, "line-test-404"]:
        lines = [r for r in access if r["request_id"] == rid]
        assert len(lines) == 1, (rid, lines)
        line = lines[0]
        assert {"method", "route", "status", "duration_ms", "trace_id", "client", "ts", "level"} <= set(line)
    assert {r["status"] for r in access if r["request_id"] in ids} == {200, 422}
    assert next(r for r in access if r["request_id"] == "line-test-404")["route"] == "unmatched"


def test_traceparent_is_honoured(server: Server, record: dict) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    httpx.post(
        server.url + "/api/v1/predict",
        json={"record": record},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "X-Request-ID": "trace-test"},
    )
    (line,) = server.requests(request_id="trace-test")
    assert line["trace_id"] == trace


def test_workers_do_not_oversubscribe_cores(server: Server) -> None:
    """Native thread pools are pinned to one thread in every worker (set by the launcher)."""
    for pid in server.worker_pids():
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            assert environ.get(name) == "1", name
        assert environ["PROMETHEUS_MULTIPROC_DIR"]
        threads = int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
        assert threads <= 8, f"worker {pid} runs {threads} threads"


def test_every_documented_metric_is_exported(server: Server, record: dict) -> None:
    httpx.post(server.url + "/api/v1/predict", json={"record": record})
    httpx.post(server.url + "/api/v1/predict", json={"record": {}})  # an error, for ferry_errors_total
    documented = re.findall(r"^\| `(ferry_\w+)`", (Path(__file__).parents[2] / "docs/metrics.md").read_text(), re.M)
    assert len(documented) >= 15
    text = scrape(server)
    # A container limit is exported only when set: the server runs in this process's cgroup.
    figures = cgroups.read(cgroups.locate())
    limits = {
        "ferry_container_cpu_limit_cores": figures.cpu_limit_cores,
        "ferry_container_memory_limit_bytes": figures.memory_limit_bytes,
    }
    for name in documented:
        found = re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", text, re.M)
        assert bool(found) == (limits.get(name, True) is not None), name
