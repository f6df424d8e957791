"""``make dashboards-preview``: PNG snapshots of every dashboard panel, drawn from live data.

Starts the real service (gunicorn, 2 workers) and the Debian Prometheus on 127.0.0.1 with the
generated rules (windows shrunk as in the live test), drives healthy traffic, then a burst of
injected faults (errors and latency), then healthy traffic again, and draws each dashboard's panels
from Prometheus range queries into dashboards/preview/<uid>.png. For reviewers without Grafana.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "service"), str(ROOT / "tests")]

import httpx  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from support.prometheus import Prometheus, Traffic, substitute  # noqa: E402
from support.server import Server  # noqa: E402

OUT = ROOT / "dashboards/preview"
PHASES = (("healthy", {}, 30), ("faults", {"error_rate": 0.2, "latency_ms": 80}, 30), ("recovered", {}, 20))


def draw(board: dict, prometheus: Prometheus, start: float, end: float) -> Path:
    panels = [p for p in board["panels"] if p["type"] != "row"]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_title(f"{panel['title']} [{unit}]", fontsize=9)
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            if target.get("instant"):
                result = prometheus.query(expr)
                text = "\n".join(", ".join(f"{k}={v}" for k, v in r["metric"].items()) for r in result)
                ax.text(0.02, 0.5, text or "no data", fontsize=7, va="center", wrap=True)
                ax.axis("off")
                continue
            series = httpx.get(
                prometheus.url + "/api/v1/query_range",
                params={"query": expr, "start": start, "end": end, "step": 1},
                timeout=30,
            )
            for result in series.json()["data"]["result"]:
                times = [float(t) - start for t, _ in result["values"]]
                values = [float(v) for _, v in result["values"]]
                label = target.get("legendFormat", "")
                for key, value in result["metric"].items():
                    label = label.replace("{{" + key + "}}", value)
                ax.plot(times, values, label=label if label != "__auto" else None, linewidth=1)
        if ax.lines:
            ax.set_xlabel("seconds into the run", fontsize=7)
            ax.tick_params(labelsize=7)
            if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
                ax.legend(fontsize=6, loc="upper left")
            for name, _, _ in PHASES[1:2]:
                ax.axvspan(PHASES[0][2], PHASES[0][2] + PHASES[1][2], color="red", alpha=0.06, label=name)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(f"{board['title']} (shaded: injected faults)", fontsize=12)
    figure.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{board['uid']}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ferry-preview-"))
    model = ROOT / "models/churn/model.joblib"
    record = json.loads(model.with_name("model.card.json").read_text())["example"]
    faults = work / "faults.json"
    faults.write_text("{}")
    env = {"FERRY_FAULTS__ENABLED": "true", "FERRY_FAULTS__FILE": str(faults), "FERRY_BREAKER__FAIL_MAX": "1000"}
    with Server(work / "srv", model, env=env) as server:
        # Labelled as the chart's ServiceMonitor labels a stable pod, for the per-pod and per-track panels.
        prometheus = Prometheus(work, {server.port: {"pod": "ferry-0", "track": "stable"}})
        try:
            start = time.time()
            with Traffic(server.url, record):
                for name, fault, seconds in PHASES:
                    print(f"{name}: {seconds} s", flush=True)
                    faults.write_text(json.dumps(fault))
                    time.sleep(seconds)
            time.sleep(3)
            end = time.time()
            for path in sorted((ROOT / "dashboards").glob("*.json")):
                print(f"wrote {draw(json.loads(path.read_text()), prometheus, start, end).relative_to(ROOT)}")
        finally:
            prometheus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
