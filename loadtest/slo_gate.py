"""The SLO gate's pure parts: thresholds from deploy/slo.yaml, verdicts, reports, load-shape plans.

No Locust import here (Locust monkey-patches the process with gevent): the locustfile feeds this
module plain numbers — request counts, failure counts and Locust's response-time histograms
(``{rounded_ms: count}``) — so the unit tests can drive it directly.

Where each limit comes from (``deploy/slo.yaml``):

- error ratio ≤ the availability error budget, ``1 - objectives.availability.target``;
- share of SLO-route requests slower than ``objectives.latency.threshold_s`` ≤ the latency budget,
  ``1 - objectives.latency.target``;
- p95 / p99 per request name (route template) ≤ ``gate.routes[name]``;
- throughput ≥ ``gate.min_rps`` and at least ``gate.min_requests`` requests (else the run proves nothing).

The alert rules (``scripts/generate.py``) read the same two objectives, so alerts and gate cannot disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SLO = ROOT / "deploy" / "slo.yaml"
TOTAL = "Aggregated"


# --- thresholds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteLimit:
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Thresholds:
    error_ratio_max: float  # 1 - availability target
    availability_target: float
    latency_threshold_ms: float
    slow_ratio_max: float  # 1 - latency target
    latency_target: float
    slo_routes: tuple[str, ...]
    routes: dict[str, RouteLimit]
    min_rps: float
    min_requests: int
    source: str


def load_thresholds(path: Path | str | None = None) -> Thresholds:
    """The gate's limits from an SLO file (default: the repository's deploy/slo.yaml)."""
    import yaml

    path = Path(path) if path else DEFAULT_SLO
    slo = yaml.safe_load(path.read_text())
    objectives, gate = slo["objectives"], slo.get("gate") or {}
    availability, latency = objectives["availability"]["target"], objectives["latency"]["target"]
    threshold_ms = float(objectives["latency"]["threshold_s"]) * 1000
    routes = {
        name: RouteLimit(float(v["p95_ms"]), float(v["p99_ms"])) for name, v in (gate.get("routes") or {}).items()
    }
    for name in slo["routes"]:
        limit = routes.get(name)
        if limit is not None and limit.p99_ms > threshold_ms:
            # The latency objective already says 99 % within threshold_s: a looser gate would pass what alerts page on.
            raise ValueError(
                f"{path}: gate.routes[{name!r}].p99_ms = {limit.p99_ms} exceeds the latency objective's "
                f"threshold_s ({threshold_ms:g} ms)"
            )
    return Thresholds(
        error_ratio_max=round(1 - availability, 10),
        availability_target=availability,
        latency_threshold_ms=threshold_ms,
        slow_ratio_max=round(1 - latency, 10),
        latency_target=latency,
        slo_routes=tuple(slo["routes"]),
        routes=routes,
        min_rps=float(gate.get("min_rps", 0)),
        min_requests=int(gate.get("min_requests", 1)),
        source=str(path),
    )


# --- measurements --------------------------------------------------------------------------------
@dataclass
class Sample:
    """What Locust measured for one request name (or all of them) over a window."""

    requests: int = 0
    failures: int = 0
    histogram: dict[int, int] = field(default_factory=dict)  # Locust's rounded ms -> count

    def minus(self, earlier: Sample) -> Sample:
        hist = {k: v - earlier.histogram.get(k, 0) for k, v in self.histogram.items()}
        return Sample(
            self.requests - earlier.requests,
            self.failures - earlier.failures,
            {k: v for k, v in hist.items() if v > 0},
        )

    def plus(self, other: Sample) -> Sample:
        hist = dict(self.histogram)
        for k, v in other.histogram.items():
            hist[k] = hist.get(k, 0) + v
        return Sample(self.requests + other.requests, self.failures + other.failures, hist)

    def percentile(self, q: float) -> float | None:
        """The smallest recorded time with at least q of the requests at or below it (Locust's own rule)."""
        count = sum(self.histogram.values())
        if count == 0:
            return None
        rank = math.ceil(q * count)
        seen = 0
        for ms in sorted(self.histogram):
            seen += self.histogram[ms]
            if seen >= rank:
                return float(ms)
        return float(max(self.histogram))

    def share_slower_than(self, limit_ms: float) -> float | None:
        count = sum(self.histogram.values())
        if count == 0:
            return None
        return sum(v for k, v in self.histogram.items() if k > limit_ms) / count


# --- verdicts ------------------------------------------------------------------------------------
@dataclass
class Check:
    objective: str  # availability | latency | route-latency | throughput
    subject: str  # request name, or "all requests"
    metric: str
    limit: float
    actual: float | None
    comparison: str  # "<=" or ">="
    passed: bool
    source: str  # where the limit comes from


def _check(
    objective: str, subject: str, metric: str, actual: float | None, limit: float, op: str, source: str
) -> Check:
    # nothing measured proves nothing: no data never passes
    passed = False if actual is None else (actual <= limit if op == "<=" else actual >= limit)
    return Check(objective, subject, metric, limit, actual, op, passed, source)


def judge(samples: dict[str, Sample], duration_s: float, t: Thresholds, throughput: bool = True) -> list[Check]:
    """Every check of one window. ``samples`` maps request names to their samples (no total needed)."""
    total = Sample()
    for sample in samples.values():
        total = total.plus(sample)
    slo_total = Sample()
    for name in t.slo_routes:
        if name in samples:
            slo_total = slo_total.plus(samples[name])
    checks = [
        _check(
            "availability",
            "all requests",
            "error ratio",
            total.failures / total.requests if total.requests else None,
            t.error_ratio_max,
            "<=",
            f"1 - objectives.availability.target ({t.availability_target})",
        ),
        _check(
            "latency",
            "SLO routes",
            f"share slower than {t.latency_threshold_ms:g} ms",
            slo_total.share_slower_than(t.latency_threshold_ms),
            t.slow_ratio_max,
            "<=",
            f"1 - objectives.latency.target ({t.latency_target})",
        ),
    ]
    for name in sorted(samples):
        limit = t.routes.get(name)
        if limit is None:
            continue
        for q, value in ((0.95, limit.p95_ms), (0.99, limit.p99_ms)):
            checks.append(
                _check(
                    "route-latency",
                    name,
                    f"p{round(q * 100)} ms",
                    samples[name].percentile(q),
                    value,
                    "<=",
                    f"gate.routes[{name}].p{round(q * 100)}_ms",
                )
            )
    if throughput:
        checks.append(
            _check(
                "throughput",
                "all requests",
                "requests/s",
                total.requests / duration_s if duration_s > 0 else None,
                t.min_rps,
                ">=",
                "gate.min_rps",
            )
        )
        checks.append(
            _check(
                "throughput",
                "all requests",
                "requests",
                float(total.requests),
                t.min_requests,
                ">=",
                "gate.min_requests",
            )
        )
    return checks


def broken(checks: list[Check]) -> list[str]:
    """Names of the broken objectives, e.g. ``availability`` or ``route-latency /api/v1/predict p99 ms``."""
    return [
        c.objective
        if c.subject in ("all requests", "SLO routes") and c.objective != "throughput"
        else f"{c.objective} {c.subject} {c.metric}"
        for c in checks
        if not c.passed
    ]


# --- capacity search (step shape) ----------------------------------------------------------------
@dataclass
class Step:
    users: int
    duration_s: float
    rps: float
    error_ratio: float | None
    p95_ms: float | None
    p99_ms: float | None
    passed: bool
    broken: list[str]


def knee(steps: list[Step]) -> Step | None:
    """The highest sustained rate within SLO: the best passing step before the first broken one."""
    best = None
    for step in steps:
        if not step.passed:
            break
        if best is None or step.rps > best.rps:
            best = step
    return best


# --- load plans (pure; the LoadTestShape classes in the locustfile call these) --------------------
def steady_plan(run_time: float, users: int, spawn_rate: float, duration_s: float) -> tuple[int, float] | None:
    return (users, spawn_rate) if run_time < duration_s else None


def step_plan(run_time: float, start: int, step: int, step_s: float, max_users: int) -> tuple[int, float] | None:
    """Users for the capacity search: start, start+step, ... every step_s seconds, up to max_users."""
    index = int(run_time // step_s)
    users = start + index * step
    if users > max_users:
        return None
    return users, float(max(step, 1) * 10)  # reach each step fast; the window is judged after a settle


def spike_plan(run_time: float, base: int, peak: int, duration_s: float) -> tuple[int, float] | None:
    """base users for the first 40 %, peak for the next 20 %, base again to the end."""
    if run_time >= duration_s:
        return None
    fraction = run_time / duration_s
    users = peak if 0.4 <= fraction < 0.6 else base
    return users, float(max(peak, 1) * 10)


# --- reports -------------------------------------------------------------------------------------
def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "no data"
    if "ratio" in metric or "share" in metric:
        return f"{value:.4%}"
    if metric == "requests":
        return f"{value:.0f}"
    return f"{value:.1f}"


def table(checks: list[Check], title: str = "SLO gate") -> str:
    rows = [("Objective", "Subject", "Metric", "Actual", "Limit", "Verdict")]
    for c in checks:
        rows.append(
            (
                c.objective,
                c.subject,
                c.metric,
                _fmt(c.actual, c.metric),
                f"{c.comparison} {_fmt(c.limit, c.metric)}",
                "PASS" if c.passed else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [title, line]
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            out.append(line)
    out.append(line)
    failed = broken(checks)
    out.append("VERDICT: PASS" if not failed else "VERDICT: FAIL — broken: " + "; ".join(failed))
    return "\n".join(out)


def steps_table(steps: list[Step], best: Step | None) -> str:
    out = [
        "Capacity search (step load); p95/p99 over the SLO routes",
        "| Users | Seconds | Requests/s | Errors | p95 (ms) | p99 (ms) | Verdict |",
    ]
    out.append("|---:|---:|---:|---:|---:|---:|---|")
    for s in steps:
        out.append(
            f"| {s.users} | {s.duration_s:.0f} | {s.rps:.1f} | {_fmt(s.error_ratio, 'ratio')} | "
            f"{_fmt(s.p95_ms, 'ms')} | {_fmt(s.p99_ms, 'ms')} | "
            + ("within SLO" if s.passed else "BROKEN: " + "; ".join(s.broken))
            + " |"
        )
    out.append(
        f"KNEE: {best.rps:.1f} requests/s at {best.users} users"
        if best
        else "KNEE: none — the first step already broke the SLO"
    )
    return "\n".join(out)


def verdict_document(checks: list[Check], meta: dict[str, Any], steps: list[Step] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **meta,
        "passed": not broken(checks),
        "broken": broken(checks),
        "checks": [asdict(c) for c in checks],
    }
    if steps is not None:
        best = knee(steps)
        doc["capacity"] = {"steps": [asdict(s) for s in steps], "knee": asdict(best) if best else None}
        doc["passed"] = best is not None
    return doc


def junit_xml(checks: list[Check], suite: str = "slo-gate") -> str:
    failures = sum(not c.passed for c in checks)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="{suite}" tests="{len(checks)}" failures="{failures}">',
        f'  <testsuite name="{suite}" tests="{len(checks)}" failures="{failures}" errors="0" skipped="0">',
    ]
    for c in checks:
        name = quoteattr(f"{c.objective} {c.subject} {c.metric}")
        message = (
            f"{c.metric} = {_fmt(c.actual, c.metric)}, limit {c.comparison} {_fmt(c.limit, c.metric)} ({c.source})"
        )
        if c.passed:
            out.append(f"    <testcase classname={quoteattr(suite + '.' + c.objective)} name={name}/>")
        else:
            out.append(f"    <testcase classname={quoteattr(suite + '.' + c.objective)} name={name}>")
            out.append(f"      <failure message={quoteattr(message)}>{escape(message)}</failure>")
            out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>"]
    return "\n".join(out) + "\n"


def write_reports(directory: Path, doc: dict[str, Any], checks: list[Check]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "verdict.json").write_text(json.dumps(doc, indent=2) + "\n")
    (directory / "verdict.junit.xml").write_text(junit_xml(checks))
