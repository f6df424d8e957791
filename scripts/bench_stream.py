"""``make bench-stream``: a large streamed prediction, and what it costs the worker's other requests.

Starts the service as ``make run`` does but with ONE gunicorn worker, so that every probe lands on
the worker that is parsing, validating and streaming. One process posts ``--records`` records to
``POST /api/v1/predict/stream`` and reads the events; meanwhile this process calls ``/livez`` every
5 ms on its own connection. A worker whose event loop is held (a body parsed or validated in one go)
answers ``/livez`` late: the worst ``/livez`` latency is what a kubelet liveness probe would see.
``--write FILE`` replaces the section between the stream-bench markers in FILE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "service"), str(ROOT / "tests")]

from bench import publish  # noqa: E402

from support.server import Server  # noqa: E402

START, END = "<!-- bench-stream:start -->", "<!-- bench-stream:end -->"


def post_stream(url: str, body: bytes, out: multiprocessing.Queue) -> None:
    """In a process of its own, so that its JSON work does not share this process's GIL with the probe."""
    started = time.perf_counter()
    first = None
    chunks = 0
    with httpx.stream("POST", url, content=body, headers={"content-type": "application/json"}, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("event: chunk"):
                chunks += 1
                first = first or time.perf_counter() - started
    total = time.perf_counter() - started
    out.put({"status": response.status_code, "first_s": first, "total_s": total, "chunks": chunks})


def run(server: Server, body: bytes) -> dict[str, float]:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/livez")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.3)
    out: multiprocessing.Queue = multiprocessing.Queue()
    poster = multiprocessing.Process(target=post_stream, args=(server.url + "/api/v1/predict/stream", body, out))
    poster.start()
    result = out.get(timeout=300)
    poster.join()
    stop.set()
    prober.join()
    if result["status"] != 200:
        raise SystemExit(f"the stream answered {result['status']}")
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return {**result, "livez_worst_ms": latencies[-1] * 1000, "livez_p99_ms": p99 * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="Markdown file whose stream-bench section is replaced")
    args = parser.parse_args()
    model = ROOT / "models/churn/model.joblib"
    record = json.loads(model.with_name("model.card.json").read_text())["example"]
    body = json.dumps({"records": [record] * args.records}).encode()
    env = {"FERRY_LOGGING__ACCESS_LOG": "false"}
    with Server(Path(tempfile.mkdtemp(prefix="ferry-bench-stream-")), model, env=env, workers=1) as server:
        runs = [run(server, body) for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    lines = [
        f"Measured {dt.date.today()} on 2 cores, Python {platform.python_version()}: `make bench-stream` "
        f"(`scripts/bench_stream.py`), one stream of {args.records:,} records ({len(body) / 1e6:.1f} MB) to "
        f"`ferry serve` with 1 gunicorn worker while `/livez` is called every 5 ms; median of {args.runs} runs.",
        "",
        "| Records | Chunks | First event (s) | Whole stream (s) | Records/s | /livez p99 (ms) | /livez worst (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {args.records:,} | {median('chunks'):,.0f} | {median('first_s'):.2f} | {median('total_s'):.2f} | "
        f"{args.records / median('total_s'):,.0f} | {median('livez_p99_ms'):,.0f} | {median('livez_worst_ms'):,.0f} |",
    ]
    publish("\n".join(lines), args.write, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
