"""``make bench``: throughput and latency of the real service, and the model's in-process cost.

Starts the service exactly as ``make run`` does (launcher -> gunicorn, 2 uvicorn workers) on
127.0.0.1, drives it with wrk (C, keep-alive connections, one wrk thread per core) and
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
    threads = min(connections, os.cpu_count() or 1)
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


def _per_call_us(model_path: str, rows: int, seconds: float) -> float:
    """Median microseconds of one predict_proba call on ``rows`` rows, in this process."""
    from sklearn import config_context
    from threadpoolctl import threadpool_limits

    from ferry.model import ModelHolder
    from ferry.settings import ModelSettings

    holder = ModelHolder(ModelSettings(path=Path(model_path)))
    holder.load()
    card = json.loads(Path(model_path).with_name("model.card.json").read_text())
    x = holder.schema.rows_from_records([holder.schema.record_type.model_validate(card["example"])] * rows)
    estimator = holder.loaded.estimator
    samples = []
    with threadpool_limits(1), config_context(assume_finite=True):
        estimator.predict_proba(x)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            estimator.predict_proba(x)
            samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def in_process_limit(model: Path, rows: int, seconds: float = 4.0) -> tuple[float, float]:
    """(median µs per call on one core, rows/s with one process per core calling at once)."""
    from concurrent.futures import ProcessPoolExecutor

    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores) as pool:
        per_call = list(pool.map(_per_call_us, [str(model)] * cores, [rows] * cores, [seconds] * cores))
    return statistics.median(per_call), sum(rows / us * 1e6 for us in per_call)


def via_executor_us(model: Path, seconds: float = 3.0) -> float:
    """Median µs of one single-row call through ferry's Predictor (the inference thread hop)."""
    import asyncio

    from ferry.inference import Predictor
    from ferry.metrics import Metrics
    from ferry.model import ModelHolder
    from ferry.resilience.deadline import Deadline
    from ferry.settings import ModelSettings, Settings

    holder = ModelHolder(ModelSettings(path=model))
    holder.load()
    card = json.loads(model.with_name("model.card.json").read_text())
    x = holder.schema.rows_from_records([holder.schema.record_type.model_validate(card["example"])])

    async def run() -> float:
        predictor = Predictor(holder, Settings(), Metrics())
        dispatcher = asyncio.create_task(predictor.run())
        await asyncio.sleep(0)
        samples, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await predictor.predict(x, Deadline.after(10))
            samples.append((time.perf_counter() - started) * 1e6)
        dispatcher.cancel()
        predictor.shutdown()
        return statistics.median(samples)

    return asyncio.run(run())


SCENARIOS = [("single", 1), ("single", 16), ("single", 64), ("batch-100", 8)]


def run_load(server: Server, record: dict, seconds: int, scenarios: list[tuple[str, int]], label: str) -> list[Result]:
    single, batch = {"record": record}, {"records": [record] * 100}
    url = server.url + "/api/v1/predict"
    wrk(url, single, 16, 2, "warm-up", 1)
    results = []
    for kind, connections in scenarios:
        if kind == "single":
            results.append(wrk(url, single, connections, seconds, f"{label} single", 1))
        else:
            results.append(wrk(url + "/batch", batch, connections, seconds, f"{label} batch-100", 100))
    return results


def table(
    served: list[Result], ceiling: list[Result], limits: dict[int, tuple[float, float]], hop_us: float, seconds: int
) -> str:
    by_shape = {(r.rows_per_request, r.concurrency): r for r in ceiling}
    cores = os.cpu_count()
    lines = [
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d} on {cores} cores, Python {platform.python_version()}; "
        f"server: `ferry serve`, 2 gunicorn workers (uvicorn), 1 inference thread each, access log off; "
        f"load: wrk on the same machine, {seconds} s per row, keep-alive connections.",
        "",
        "| Scenario | Concurrency | Requests/s | Rows/s | p50 (ms) | p99 (ms) | Errors | vs HTTP ceiling "
        "| vs in-process limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*ceiling, *served]:
        top = by_shape.get((r.rows_per_request, r.concurrency))
        limit = limits[r.rows_per_request][1]
        vs_ceiling = f"{r.requests_per_s / top.requests_per_s:.0%}" if top and r not in ceiling else "—"
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.requests_per_s:,.0f} | {r.rows_per_s:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {vs_ceiling} | {r.rows_per_s / limit:.0%} |"
        )
    lines += [
        "",
        f"In-process limit: the model alone, one process per core ({cores}), `predict_proba` in a loop.",
        "",
        "| Rows per call | µs per call (median, one core) | Rows/s on all cores |",
        "|---:|---:|---:|",
    ]
    for rows, (per_call, rows_per_s) in sorted(limits.items()):
        lines.append(f"| {rows} | {per_call:,.0f} | {rows_per_s:,.0f} |")
    lines += [
        "",
        f"One single-row call through ferry's inference thread (dispatcher + thread hop): {hop_us:,.0f} µs "
        f"median, against {limits[1][0]:,.0f} µs for the bare call.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="duration of each load scenario")
    parser.add_argument("--write", type=Path, help="Markdown file whose bench section is replaced")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    model = ROOT / "models/churn/model.joblib"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "ferry", "train", "--out", str(model.parent)], check=True)
    record = json.loads(model.with_name("model.card.json").read_text())["example"]
    quiet = {"FERRY_LOGGING__ACCESS_LOG": "false"}

    with Server(work, model, env=quiet, app="ceiling_app:create_app()", pythonpath=[ROOT / "scripts"]) as server:
        ceiling = run_load(server, record, args.seconds, SCENARIOS, "HTTP ceiling (no model)")
    with Server(work, model, env={**quiet, "FERRY_BATCHING__ENABLED": "false"}) as server:
        served = run_load(server, record, args.seconds, SCENARIOS[:3], "batching off")
    with Server(work, model, env=quiet) as server:
        served += run_load(server, record, args.seconds, SCENARIOS, "batching on")
    limits = {rows: in_process_limit(model, rows) for rows in (1, 100)}
    text = table(served, ceiling, limits, via_executor_us(model), args.seconds)
    publish(text, args.write, START, END)
    return 0


def publish(text: str, path: Path | None, start: str, end: str) -> None:
    """Print a result, and with ``--write`` put it between its markers in the Markdown file."""
    print(text)
    if path is not None:
        replace_section(path, start, end, text)


def replace_section(path: Path, start: str, end: str, text: str) -> None:
    """Rewrite what lies between the ``start`` and ``end`` markers of a Markdown file."""
    doc = path.read_text()
    if start not in doc:
        raise SystemExit(f"{path} has no {start} ... {end} section")
    head, rest = doc.split(start, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    sys.exit(main())
