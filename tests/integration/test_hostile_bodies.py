"""A body built to blow up memory, against real gunicorn with 2 workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from support.server import Server

STREAM = "/api/v1/predict/stream"
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_60_mib_of_empty_records_is_refused_with_bounded_memory_and_livez_keeps_answering(
    churn_model: Path, tmp_path: Path
) -> None:
    # The route's limit raised to 64 MiB, as an operator might: the value count must still refuse it.
    env = {"FERRY_STREAM__MAX_BODY_BYTES": str(64 * MIB)}
    with Server(tmp_path, churn_model, env=env) as srv:
        workers = srv.worker_pids()
        baseline = {pid: rss_bytes(pid) for pid in workers}
        peak = dict(baseline)
        probes: list[tuple[float, float]] = []  # (sent at, seconds)
        done = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=srv.url, timeout=5) as client:
                while not done.is_set():
                    for pid in workers:
                        peak[pid] = max(peak[pid], rss_bytes(pid))
                    started = time.perf_counter()
                    assert client.get("/livez", headers={"connection": "close"}).status_code == 200
                    probes.append((started, time.perf_counter() - started))
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        body = b'{"records":[' + b"[],[]," * (10 * MIB) + b"[]]}"  # 60 MiB
        started = time.perf_counter()
        response = httpx.post(srv.url + STREAM, content=body, headers={"content-type": "application/json"}, timeout=60)
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        done.set()
        watcher.join(10)
        request = srv.requests(path=STREAM)[0]
        attacked = request["pid"]
        on_attacked = [line for line in srv.requests(path="/livez") if line["pid"] == attacked]
    growth = max(peak[pid] - baseline[pid] for pid in workers)
    slowest = max(seconds for _, seconds in probes)
    print(
        f"60 MiB of [[],...]: {response.status_code} {response.json()['code']} after {elapsed:.2f} s; "
        f"worker RSS growth {growth / MIB:.0f} MiB; slowest /livez {slowest * 1000:.0f} ms over {len(probes)} probes "
        f"({len(on_attacked)} on the attacked worker)"
    )
    assert response.status_code in (413, 422)
    assert growth < 300 * MIB
    assert slowest < 1.0
    assert len(on_attacked) >= 3
