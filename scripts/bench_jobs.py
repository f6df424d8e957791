"""``make bench-jobs``: how fast async jobs go through the real service, per job store.

For each store (the embedded SQLite file, and a redis-server started on 127.0.0.1) it starts the
service exactly as ``make run`` does (2 gunicorn workers) with ``--runners`` runners per worker,
submits ``--jobs`` one-record jobs from 32 concurrent clients, waits until every job has ended, and
reads each job's own timestamps. ``--write FILE`` replaces the section between the jobs-bench
markers in FILE. Client, server and Redis share this machine's cores: figures are a floor.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "service"), str(ROOT / "tests")]

from bench import publish  # noqa: E402

from ferry_client.protocol import TERMINAL_JOB_STATUSES  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from support.server import Server  # noqa: E402

START, END = "<!-- bench-jobs:start -->", "<!-- bench-jobs:end -->"
CLIENTS = 32


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(server: Server, record: dict[str, Any], jobs: int) -> dict[str, float]:
    with (
        httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=CLIENTS)) as client,
        concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool,
    ):
        started = time.perf_counter()
        ids = list(
            pool.map(lambda _: client.post("/api/v1/jobs", json={"records": [record]}).json()["id"], range(jobs))
        )
        submitted = time.perf_counter() - started
        while True:
            docs = list(pool.map(lambda job_id: client.get(f"/api/v1/jobs/{job_id}").json(), ids))
            if all(d["status"] in TERMINAL_JOB_STATUSES for d in docs):
                break
            time.sleep(0.2)
    first = min(_ts(d["created_at"]) for d in docs)
    last = max(_ts(d["finished_at"]) for d in docs)
    queued = sorted(_ts(d["started_at"]) - _ts(d["created_at"]) for d in docs)
    total = sorted(_ts(d["finished_at"]) - _ts(d["created_at"]) for d in docs)
    return {
        "succeeded": sum(d["status"] == "succeeded" for d in docs),
        "submit_per_s": jobs / submitted,
        "done_per_s": jobs / (last - first),
        "wait_p50_ms": statistics.median(queued) * 1000,
        "total_p50_ms": statistics.median(total) * 1000,
        "total_p99_ms": total[int(len(total) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runners", type=int, default=2, help="runners per gunicorn worker")
    parser.add_argument("--write", type=Path, help="Markdown file whose jobs-bench section is replaced")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-jobs-"))
    model = ROOT / "models/churn/model.joblib"
    record = json.loads(model.with_name("model.card.json").read_text())["example"]
    env = {
        "FERRY_LOGGING__ACCESS_LOG": "false",
        "FERRY_JOBS__RUNNERS": str(args.runners),
        # The burst is the measurement: the queue quota (1000 by default) must not refuse part of it.
        "FERRY_JOBS__MAX_QUEUED": str(max(args.jobs, 1000)),
    }
    results = {}
    with Server(work / "sqlite", model, env=env) as server:
        results["SQLite (embedded)"] = run(server, record, args.jobs)
    redis = RedisServer(work / "redis").start()
    try:
        redis_env = {**env, "FERRY_JOBS__STORE": "redis", "FERRY_JOBS__REDIS_URL": redis.url}
        with Server(work / "redis-srv", model, env=redis_env) as server:
            results["Redis"] = run(server, record, args.jobs)
    finally:
        redis.stop()
    lines = [
        f"Measured {dt.date.today()} on 2 cores, Python {platform.python_version()}: `make bench-jobs` "
        f"(`scripts/bench_jobs.py`), {args.jobs} one-record jobs from {CLIENTS} concurrent clients; "
        f"`ferry serve`, 2 gunicorn workers, {args.runners} runners each, default churn model, access log off.",
        "",
        "| Store | Succeeded | Submitted/s | Finished/s | Queue wait p50 (ms) | Submit→end p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for store, r in results.items():
        lines.append(
            f"| {store} | {int(r['succeeded'])} | {r['submit_per_s']:,.0f} | {r['done_per_s']:,.0f} | "
            f"{r['wait_p50_ms']:,.0f} | {r['total_p50_ms']:,.0f} | {r['total_p99_ms']:,.0f} |"
        )
    publish("\n".join(lines), args.write, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
