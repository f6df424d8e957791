"""``make bench``: ferry beside the bare stack's ceiling and the naive pattern, in one run.

Starts three servers, each through ``ferry serve`` (launcher -> gunicorn, the
same settings and worker class, 2 uvicorn workers) on 127.0.0.1, and drives each with wrk (C,
keep-alive connections) on the same shapes, one server at a time, taking turns shape by shape:

- ``ceiling``: a bare FastAPI app answering from a cache (scripts/ceiling_app.py), no model;
- ``naive``: FastAPI ``async def`` endpoints calling ``predict_proba`` inline (scripts/naive_app.py);
- ``ferry``: ferry with the defaults ``make run`` gives (batching on, access log on).

Shapes: one row per request at 1, 16 and 64 connections and 100 rows per request at 8 connections,
on the REST routes (``/api/v1/predict``, ``/api/v1/predict/batch``) and the Open Inference Protocol
route (``/v2/models/churn/infer``). Prints a Markdown table and the targets' ratios; ``--write FILE``
replaces the section between the bench markers (``--pin``: the pinning section) in FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "service"), str(ROOT / "tests")]

from support.server import Server  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PIN_START, PIN_END = "<!-- bench-pin:start -->", "<!-- bench-pin:end -->"
MODEL = ROOT / "models/churn/model.joblib"
SERVERS = {
    "ceiling": "bare FastAPI, cached answer (the stack's ceiling)",
    "naive": "naive FastAPI, `predict_proba` inline",
    "ferry": "ferry, defaults (batching on, access log on)",
}
APPS = {"ceiling": "ceiling_app:create_app()", "naive": "naive_app:create_app()", "ferry": None}
# (rows per request, connections)
SHAPES = [(1, 1), (1, 16), (1, 64), (100, 8)]
ROUTES = ("REST", "OIP v2")
DEFAULT_SECONDS = 5


@dataclass
class Result:
    server: str
    route: str
    rows_per_request: int
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _number(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise RuntimeError(f"wrk output without {pattern!r}:\n{text}")
    return match.group(1)


def wrk(url: str, body: Any, connections: int, seconds: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) of one wrk run posting ``body`` as JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
        )
    threads = min(connections, os.cpu_count() or 1)
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return (
        float(_number(r"Requests/sec:\s+([\d.]+)", out)),
        _ms(_number(r"^\s+50%\s+(\S+)", out)),
        _ms(_number(r"^\s+99%\s+(\S+)", out)),
        errors,
    )


def requests_for(card: dict[str, Any]) -> dict[tuple[str, int], tuple[str, Any]]:
    """(path, body) by (route, rows per request): the card's example record, repeated."""
    record = card["example"]
    row: list[float] = []
    for feature in card["features"]:
        value = record[feature["name"]]
        row.append(float(feature["categories"].index(value)) if feature["type"] == "categorical" else float(value))
    v2 = f"/v2/models/{card['name']}/infer"

    def tensor(rows: int) -> dict[str, Any]:
        return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, len(row)], "data": row * rows}]}

    return {
        ("REST", 1): ("/api/v1/predict", {"record": record}),
        ("REST", 100): ("/api/v1/predict/batch", {"records": [record] * 100}),
        ("OIP v2", 1): (v2, tensor(1)),
        ("OIP v2", 100): (v2, tensor(100)),
    }


def measure(
    names: list[str], work: Path, env: dict[str, str], seconds: int, card: dict[str, Any], rounds: int = 1
) -> list[Result]:
    """Every shape on every server. The servers run side by side but only one is under load at a time,
    and they take turns shape by shape (ceiling, naive, ferry, then the next shape): an idle server
    costs nothing, and whatever else the machine does during the run falls on all three alike
    instead of on whichever server happened to be measured then. With several rounds, each figure
    is the median of its rounds (errors: the sum)."""
    requests = requests_for(card)
    samples: dict[tuple[str, str, int, int], list[tuple[float, float, float, int]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            server = Server(work / name, MODEL, env=env, workers=2, app=APPS[name], pythonpath=[ROOT / "scripts"])
            servers[name] = stack.enter_context(server)
        for server in servers.values():  # warm both workers and every code path before measuring
            for route in ROUTES:
                for rows in (1, 100):
                    path, body = requests[(route, rows)]
                    wrk(server.url + path, body, 16, 1)
        for _ in range(rounds):
            for route in ROUTES:
                for rows, connections in SHAPES:
                    path, body = requests[(route, rows)]
                    for name, server in servers.items():
                        figures = wrk(server.url + path, body, connections, seconds)
                        samples.setdefault((name, route, rows, connections), []).append(figures)
                        print(
                            f"  {name:8} {route:6} {rows:3} rows c={connections:<3} {figures[0]:9,.0f} req/s",
                            file=sys.stderr,
                        )
    results = []
    for (name, route, rows, connections), runs in samples.items():
        rps, p50, p99 = (statistics.median(run[i] for run in runs) for i in range(3))
        results.append(Result(name, route, rows, connections, rps, p50, p99, sum(run[3] for run in runs)))
    results.sort(key=lambda r: (ROUTES.index(r.route), SHAPES.index((r.rows_per_request, r.concurrency))))
    return results


def _per_call_us(model_path: str, rows: int, seconds: float) -> float:
    """Median microseconds of one predict_proba call on ``rows`` copies of the card's example, in this process."""
    import joblib
    import numpy as np
    from threadpoolctl import threadpool_limits

    model = joblib.load(model_path)
    card = json.loads(Path(model_path).with_name("model.card.json").read_text())
    x = np.array([[card["example"][f["name"]] for f in card["features"]]] * rows, dtype=object)
    samples = []
    with threadpool_limits(1):
        model.predict_proba(x)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            model.predict_proba(x)
            samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def in_process_limit(rows: int, seconds: float) -> tuple[float, float]:
    """(median µs per call on one core, rows/s with one process per core calling at once)."""
    from concurrent.futures import ProcessPoolExecutor

    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores) as pool:
        per_call = list(pool.map(_per_call_us, [str(MODEL)] * cores, [rows] * cores, [seconds] * cores))
    return statistics.median(per_call), sum(rows / us * 1e6 for us in per_call)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # nothing measured: neither met nor a number


@dataclass
class Target:
    what: str
    value: float
    limit: float
    at_least: bool

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit


def targets(results: list[Result], route: str) -> list[Target]:
    def pick(server: str, rows: int, connections: int) -> Result:
        return next(
            r
            for r in results
            if (r.server, r.route, r.rows_per_request, r.concurrency) == (server, route, rows, connections)
        )

    ferry64, top64 = pick("ferry", 1, 64), pick("ceiling", 1, 64)
    ferry1, naive1 = pick("ferry", 1, 1), pick("naive", 1, 1)
    ferry_batch, naive_batch = pick("ferry", 100, 8), pick("naive", 100, 8)
    errors = sum(r.errors for r in results if r.server == "ferry" and r.route == route)
    return [
        Target(
            "1 row c=64: ferry req/s ÷ ceiling req/s", _ratio(ferry64.requests_per_s, top64.requests_per_s), 0.60, True
        ),
        Target("1 row c=64: ferry p99 ÷ ceiling p99", _ratio(ferry64.p99_ms, top64.p99_ms), 3.0, False),
        Target("1 row c=1: ferry p50 ÷ naive p50", _ratio(ferry1.p50_ms, naive1.p50_ms), 1.0, False),
        Target(
            "100 rows c=8: ferry rows/s ÷ naive rows/s",
            _ratio(ferry_batch.rows_per_s, naive_batch.rows_per_s),
            1.3,
            True,
        ),
        Target("ferry errors (all shapes)", errors, 0, False),
    ]


def report(
    results: list[Result],
    limits: dict[int, tuple[float, float]],
    seconds: int,
    pinned: bool,
    took: float,
    load: float,
    rounds: int = 1,
) -> str:
    cores = os.cpu_count()
    pinning = "FERRY_CPU_PINNING=true (each worker pinned to one CPU)" if pinned else "no CPU pinning"
    flags = (
        (" --pin" if pinned else "")
        + (f" --rounds {rounds}" if rounds > 1 else "")
        + (f" --seconds {seconds}" if seconds != DEFAULT_SECONDS else "")
    )
    command = f"make bench BENCH_ARGS='{flags.strip()}'" if flags else "make bench"
    rounds_note = f", median of {rounds} rounds" if rounds > 1 else ""
    lines = [
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d} on {cores} cores, Python {platform.python_version()}: "
        f"`{command}` (`scripts/bench.py{flags}`, {seconds:g} s per row{rounds_note}, {took:.0f} s in all). "
        f"Every server: `ferry serve`, gunicorn with 2 uvicorn workers, {pinning}; "
        f"load: wrk on the same machine, keep-alive connections, the card's example record. "
        f"Load average before the run: {load:.1f}.",
        "",
        "| Server | Route | 1 row c=1 p50 (ms) | 1 row c=64 req/s (p99 ms) | 100 rows c=8 rows/s |",
        "|---|---|---:|---:|---:|",
    ]
    for route in ROUTES:
        for server in SERVERS:
            shape = {(r.rows_per_request, r.concurrency): r for r in results if (r.server, r.route) == (server, route)}
            lines.append(
                f"| {SERVERS[server]} | {route} | {shape[1, 1].p50_ms:.2f} | {shape[1, 64].requests_per_s:,.0f} "
                f"({shape[1, 64].p99_ms:.0f}) | {shape[100, 8].rows_per_s:,.0f} |"
            )
    lines += [
        "",
        "Every row:",
        "",
        "| Server | Route | Rows/request | Connections | Requests/s | Rows/s | p50 (ms) | p99 (ms) | Errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for route in ROUTES:
        for r in (r for r in results if r.route == route):
            lines.append(
                f"| {r.server} | {route} | {r.rows_per_request} | {r.concurrency} | {r.requests_per_s:,.0f} | "
                f"{r.rows_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
            )
    lines += ["", "Targets (ratios from this run):", "", "| Target | REST | OIP v2 | Bound |", "|---|---:|---:|---:|"]
    by_route = {route: targets(results, route) for route in ROUTES}
    for i, first in enumerate(by_route[ROUTES[0]]):
        cells = []
        for route in ROUTES:
            t = by_route[route][i]
            number = f"{t.value:.0f}" if t.what.startswith("ferry errors") else f"{t.value:.2f}"
            cells.append(f"{number} {'met' if t.met else '**missed**'}")
        bound = f"{'≥' if first.at_least else '≤'} {first.limit:g}"
        lines.append(f"| {first.what} | {cells[0]} | {cells[1]} | {bound} |")
    if limits:
        lines += [
            "",
            f"The model alone: one process per core ({cores}), `predict_proba` in a loop on the card's example.",
            "",
            "| Rows per call | µs per call (median, one core) | Rows/s on all cores |",
            "|---:|---:|---:|",
        ]
        for rows, (per_call, rows_per_s) in sorted(limits.items()):
            lines.append(f"| {rows} | {per_call:,.0f} | {rows_per_s:,.0f} |")
    return "\n".join(lines)


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian package wrk)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=int, default=DEFAULT_SECONDS, help="duration of each row's load (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every row this many times, report the median (default: 1)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per row, no model-alone measurement")
    parser.add_argument("--pin", action="store_true", help="every server with FERRY_CPU_PINNING=true")
    parser.add_argument(
        "--only", choices=list(SERVERS), action="append", help="measure only this server (repeatable; no targets)"
    )
    parser.add_argument("--write", type=Path, help="Markdown file whose bench section (--pin: bench-pin) is replaced")
    args = parser.parse_args(argv)
    ensure_wrk()
    seconds = 1 if args.quick else args.seconds
    started, load = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    if not MODEL.exists():
        subprocess.run([sys.executable, "-m", "ferry", "train", "--out", str(MODEL.parent)], check=True)
    card = json.loads(MODEL.with_name("model.card.json").read_text())
    env = {"FERRY_CPU_PINNING": "true"} if args.pin else {}
    results = measure(args.only or list(SERVERS), work, env, seconds, card, args.rounds)
    shutil.rmtree(work, ignore_errors=True)
    if args.only and set(args.only) != set(SERVERS):
        for r in results:
            print(r)
        return 0
    limits = {} if args.quick else {rows: in_process_limit(rows, 3.0) for rows in (1, 100)}
    text = report(results, limits, seconds, args.pin, time.monotonic() - started, load, args.rounds)
    publish(text, args.write, *((PIN_START, PIN_END) if args.pin else (START, END)))
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
