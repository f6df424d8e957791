"""Thousands of open job event streams against real gunicorn with 2 workers: the per-worker cap holds,
and predictions and /livez stay fast while they are open."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from support.server import Server

CAP = 2000  # streams per worker
EXTRA = 200


async def _open_stream(port: int, job_id: str) -> tuple[int, bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    body = b""
    if status != 200:
        body = await asyncio.wait_for(reader.read(4096), 10)
    return status, body, writer


async def _open_all(port: int, jobs: list[str], count: int) -> list[tuple[int, bytes, asyncio.StreamWriter]]:
    opened: list[tuple[int, bytes, asyncio.StreamWriter]] = []
    for start in range(0, count, 500):  # in waves, as clients reconnecting would
        wave = [_open_stream(port, jobs[i % len(jobs)]) for i in range(start, min(count, start + 500))]
        opened.extend(await asyncio.gather(*wave))
    return opened


def _timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> float:
    started = time.perf_counter()
    response = client.request(method, path, headers={"connection": "close"}, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_2000_event_streams_per_worker_leave_predictions_fast_and_more_get_503(
    churn_model: Path, tmp_path: Path, record: dict
) -> None:
    env = {"FERRY_JOBS__RUNNERS": "0", "FERRY_CONNECTIONS__MAX_EVENT_STREAMS": str(CAP)}  # jobs stay queued
    with Server(tmp_path, churn_model, env=env) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        jobs = [client.post("/api/v1/jobs", json={"records": [record]}).json()["id"] for _ in range(20)]

        async def scenario() -> tuple[list[int], list[bytes], list[float], list[float], float]:
            started = time.perf_counter()
            opened = await _open_all(srv.port, jobs, 2 * CAP + EXTRA)
            took = time.perf_counter() - started
            loop = asyncio.get_running_loop()

            def measure() -> tuple[list[float], list[float]]:
                with httpx.Client(base_url=srv.url, timeout=10) as c:
                    predict = [_timed(c, "POST", "/api/v1/predict", json={"record": record}) for _ in range(200)]
                    livez = [_timed(c, "GET", "/livez") for _ in range(50)]
                return predict, livez

            predict, livez = await loop.run_in_executor(None, measure)
            statuses = [status for status, _, _ in opened]
            refused = [body for status, body, _ in opened if status != 200]
            for _, _, writer in opened:
                writer.close()
            return statuses, refused, predict, livez, took

        statuses, refused, predict, livez, took = asyncio.run(scenario())
        # Each stream's access line is written when it ends: which worker had how many, and refused how many.
        lines = srv.requests(at_least=len(statuses), route="/api/v1/jobs/{job_id}/events")
    per_worker: dict[int, dict[int, int]] = {}
    for line in lines:
        counts = per_worker.setdefault(line["pid"], {200: 0, 503: 0})
        counts[line["status"]] += 1
    p99 = statistics.quantiles(predict, n=100)[98]
    livez_max = max(livez)
    print(
        f"{statuses.count(200)} job event streams open ({statuses.count(503)} refused) in {took:.1f} s, "
        f"per worker {per_worker}; "
        f"predict p99 {p99 * 1000:.1f} ms, /livez max {livez_max * 1000:.1f} ms while open"
    )
    assert statuses.count(200) == sum(counts[200] for counts in per_worker.values())
    assert statuses.count(503) >= EXTRA and all(b'"code":"too_many_streams"' in body for body in refused)
    for counts in per_worker.values():
        assert counts[200] <= CAP
        assert counts[503] == 0 or counts[200] == CAP  # a worker refuses only once it holds CAP streams
    assert p99 < 0.1
    assert livez_max < 0.1
