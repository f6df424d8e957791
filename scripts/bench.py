"""``make bench``: throughput and latency of the real service, and the model's in-process cost.

Starts the service exactly as ``make run`` does (launcher -> gunicorn, 2 uvicorn workers) on
127.0.0.1, drives it with wrk (C, keep-alive connections, one wrk thread per 16 connections) and
prints a Markdown table; ``--write FILE`` replaces the table between the bench markers in FILE.

Load generator and server share this machine's cores, so figures are a floor for a dedicated host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "service"), str(ROOT / "tests")]

from support.server import Server  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Result:
    name: str
    concurrency: int
    rows_per_request: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, body: dict, connections: int, seconds: int, name: str, rows: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
        )
    threads = max(1, min(connections, connections // 16 or 1, 4))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return Result(name, connections, rows, rps, p50, p99, errors)


def in_process(model_path: Path, record: dict, rows: int, seconds: float = 3.0) -> tuple[float, float, float]:
    """Median microseconds per call: estimator.predict_proba alone; with ferry's record->rows
    conversion; and through ferry's Predictor (the executor thread the service uses)."""
    import asyncio

    from sklearn import config_context
    from threadpoolctl import threadpool_limits

    from ferry.inference import Predictor
    from ferry.metrics import Metrics
    from ferry.model import ModelHolder
    from ferry.settings import InferenceSettings, ModelSettings

    holder = ModelHolder(ModelSettings(path=model_path))
    holder.load()
    records = [holder.schema.record_type.model_validate(record)] * rows
    estimator = holder.loaded.estimator

    def median_us(fn) -> float:
        fn()
        samples, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - started) * 1e6)
        return statistics.median(samples)

    x = holder.schema.rows_from_records(records)
    with threadpool_limits(1), config_context(assume_finite=True):
        raw = median_us(lambda: estimator.predict_proba(x))
        full = median_us(lambda: estimator.predict_proba(holder.schema.rows_from_records(records)))

    async def via_executor() -> float:
        predictor = Predictor(holder, InferenceSettings(), Metrics())
        await predictor.predict(x)
        samples, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await predictor.predict(x)
            samples.append((time.perf_counter() - started) * 1e6)
        predictor.shutdown()
        return statistics.median(samples)

    with threadpool_limits(1):
        hop = asyncio.run(via_executor())
    return raw, full, hop


def table(results: list[Result], model: list[tuple[int, float, float, float]], seconds: int) -> str:
    lines = [
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d} on {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
        f"Python {platform.python_version()}; server: 2 gunicorn workers (uvicorn), 1 inference thread each; "
        f"load: wrk on the same machine, {seconds} s per row, keep-alive.",
        "",
        "| Scenario | Concurrency | Requests/s | Rows/s | p50 (ms) | p99 (ms) | Errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.requests_per_s:,.0f} | {r.rows_per_s:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} |"
        )
    lines += [
        "",
        "In-process cost of the same model (one thread, median per call):",
        "",
        "| Rows per call | predict_proba (µs) | + record conversion (µs) | via ferry's inference thread (µs) "
        "| Rows/s per core |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rows, raw, full, hop in model:
        lines.append(f"| {rows} | {raw:,.0f} | {full:,.0f} | {hop:,.0f} | {rows / full * 1e6:,.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load scenario")
    parser.add_argument("--write", type=Path, help="Markdown file whose bench section is replaced")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    model = ROOT / "models/churn/model.joblib"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "ferry", "train", "--out", str(model.parent)], check=True)
    card = json.loads(model.with_name("model.card.json").read_text())
    record = card["example"]

    results = []
    with Server(work, model, env={"FERRY_LOGGING__ACCESS_LOG": "false"}) as server:
        single = {"record": record}
        batch = {"records": [record] * 100}
        url = server.url + "/api/v1/predict"
        wrk(url, single, 8, 2, "warm-up", 1)
        results.append(wrk(url, single, 1, args.seconds, "single record", 1))
        results.append(wrk(url, single, 32, args.seconds, "single record", 1))
        results.append(wrk(url + "/batch", batch, 8, args.seconds, "batch of 100", 100))
    model_costs = [(rows, *in_process(model, record, rows)) for rows in (1, 100)]
    text = table(results, model_costs, args.seconds)
    print(text)
    if args.write:
        doc = args.write.read_text()
        if START not in doc:
            raise SystemExit(f"{args.write} has no {START} ... {END} section")
        head, rest = doc.split(START, 1)
        args.write.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
