"""ferry's Locust scenarios and SLO release gate (docs/release-gate.md).

    python -m locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        --users 10 --spawn-rate 5 --run-time 60s --reports-dir reports/slo-gate \
        --html reports/slo-gate/report.html --csv reports/slo-gate/locust

User classes (weights: ``--weights predict=5,batch=2,v2=2,jobs=1,stream=1``; 0 drops a class):
``PredictUser`` (POST /api/v1/predict), ``BatchUser`` (/api/v1/predict/batch), ``V2InferUser``
(/v2/models/{name}/infer), ``StreamUser`` (/api/v1/predict/stream, the whole SSE stream timed),
``JobsUser`` (POST /api/v1/jobs, then the job's SSE events or polling, then — with
``--callback-secret`` — the signed callback, verified by a receiver this process starts).
Payloads are random records within the model card's feature ranges (GET /api/v1/models/{name}).
Request names are route templates, so stats and thresholds are per route.

At the end the ``quitting`` hook judges the run against deploy/slo.yaml (slo_gate.py), prints the
verdict table, writes verdict.json and verdict.junit.xml into ``--reports-dir`` and sets the exit
code: 0 within SLO, 1 on any broken objective. ``--load-shape`` picks steady, step (capacity search:
ramp until an objective breaks, report the knee) or spike. Every option also reads LOCUST_<NAME>.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if (HERE.parent / "service" / "ferry").is_dir():  # the repository; in the image both are on PYTHONPATH
    sys.path[:0] = [str(HERE.parent / "service"), str(HERE.parent / "clients" / "python" / "src")]

import slo_gate  # noqa: E402
from locust import HttpUser, LoadTestShape, between, events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from ferry.webhooks import WebhookVerificationError, verify  # noqa: E402
from ferry_client.protocol import TERMINAL_JOB_STATUSES as TERMINAL  # noqa: E402
from ferry_client.protocol import record_row, v2_tensor  # noqa: E402
from ferry_client.sse import SSEParser  # noqa: E402

log = logging.getLogger("ferry.gate")
USER_KEYS = {
    "predict": "PredictUser",
    "batch": "BatchUser",
    "v2": "V2InferUser",
    "jobs": "JobsUser",
    "stream": "StreamUser",
}
DEFAULT_WEIGHTS = "predict=5,batch=2,v2=2,jobs=1,stream=1"


# --- options -------------------------------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    def opt(name: str, **kwargs: Any) -> None:
        parser.add_argument(
            f"--{name}", env_var=f"LOCUST_{name.upper().replace('-', '_')}", include_in_web_ui=False, **kwargs
        )

    opt("slo-file", default=str(slo_gate.DEFAULT_SLO), help="SLO file with the objectives and the gate section")
    opt("reports-dir", default="reports/slo-gate", help="where verdict.json and verdict.junit.xml go")
    opt("load-shape", default="steady", choices=["steady", "step", "spike"], help="steady | step | spike")
    opt("weights", default=DEFAULT_WEIGHTS, help=f"user class weights, e.g. {DEFAULT_WEIGHTS}")
    opt("model", default="", help="model name (default: the first of GET /api/v1/models)")
    opt("think-time", type=float, default=0.1, help="mean pause between a user's requests, seconds")
    opt("batch-size", type=int, default=10, help="records per batch request")
    opt("stream-records", type=int, default=20, help="records per streamed request")
    opt("job-records", type=int, default=5, help="records per job")
    opt("job-wait", default="sse", choices=["sse", "poll"], help="follow a job by its SSE events or by polling")
    opt("job-timeout", type=float, default=30.0, help="seconds a job (and its callback) may take")
    opt("callback-secret", default="", help="whsec_… signing secret of the service; enables callbacks")
    opt("callback-bind", default="127.0.0.1", help="address the callback receiver listens on")
    opt("callback-host", default="127.0.0.1", help="address the service reaches the receiver at")
    opt(
        "callback-port",
        type=int,
        default=0,
        help="port of the callback receiver (0: any free one); the service's FERRY_CALLBACKS__ALLOW_HOSTS "
        "must name host:port when the receiver is on a private address",
    )
    opt("step-start", type=int, default=2, help="step shape: users of the first step")
    opt("step-users", type=int, default=2, help="step shape: users added per step")
    opt("step-seconds", type=float, default=10.0, help="step shape: seconds per step")
    opt("step-settle", type=float, default=2.0, help="step shape: seconds at the start of a step not judged")
    opt("step-max-users", type=int, default=200, help="step shape: stop here even if nothing broke")
    opt("spike-users", type=int, default=0, help="spike shape: users at the peak (default 4 x --users)")


# --- payloads from the model card ----------------------------------------------------------------
class Payloads:
    def __init__(self, card: dict[str, Any], seed: int | None = None) -> None:
        self.card = card
        self.features = card["features"]
        self.random = random.Random(seed)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.features:
            kind = f.get("type", "number")
            if kind == "categorical":
                out[f["name"]] = self.random.choice(f["categories"])
            elif kind == "boolean":
                out[f["name"]] = self.random.random() < 0.5
            elif kind == "integer":
                out[f["name"]] = self.random.randint(int(f.get("minimum", 0)), int(f.get("maximum", 100)))
            else:
                out[f["name"]] = round(self.random.uniform(float(f.get("minimum", 0)), float(f.get("maximum", 1))), 2)
        return out

    def records(self, n: int) -> list[dict[str, Any]]:
        return [self.record() for _ in range(n)]

    def row(self, record: dict[str, Any]) -> list[float]:
        """The OIP v2 encoding (GET /v2/models/{name}): feature order, boolean 0/1, categorical index."""
        return record_row(record, self.features)


# --- callback receiver ---------------------------------------------------------------------------
class Receiver:
    """Signed job callbacks, verified with ferry.webhooks.verify; keyed by the per-job token in the URL."""

    def __init__(self, secret: str, bind: str, advertise: str, port: int = 0) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.arrived: dict[str, tuple[float, str | None, dict[str, Any] | None]] = {}
        self.waiting: dict[str, threading.Event] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                problem, payload = None, None
                try:
                    verify(body, dict(self.headers.items()), receiver.secret)
                    payload = json.loads(body)
                except (WebhookVerificationError, ValueError) as exc:
                    problem = f"callback rejected: {exc}"
                token = self.path.rsplit("/", 1)[-1]
                got = ((payload or {}).get("data") or {}).get("metadata", {}).get("gate")
                if payload is not None and got != token:
                    problem = f"callback of job token {got} arrived at the URL of token {token}"
                receiver.record(token, problem, payload)
                self.send_response(401 if problem else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://{advertise}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, token: str) -> str:
        return f"{self.base}/{token}"

    def record(self, token: str, problem: str | None, payload: dict[str, Any] | None) -> None:
        with self.lock:
            if token not in self.arrived:  # at-least-once: the first delivery counts
                self.arrived[token] = (time.time(), problem, payload)
            event = self.waiting.setdefault(token, threading.Event())
        event.set()

    def wait(self, token: str, timeout: float) -> tuple[float, str | None, dict[str, Any] | None] | None:
        with self.lock:
            event = self.waiting.setdefault(token, threading.Event())
        event.wait(timeout)
        with self.lock:
            self.waiting.pop(token, None)
            return self.arrived.pop(token, None)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


STATE: dict[str, Any] = {"receiver": None, "card": None, "model": None, "started": None, "steps": []}


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    weights = dict.fromkeys(USER_KEYS.values(), 0)
    for part in filter(None, (p.strip() for p in options.weights.split(","))):
        key, _, value = part.partition("=")
        if key.strip() not in USER_KEYS:
            raise SystemExit(f"--weights: unknown user {key!r}; use {', '.join(USER_KEYS)}")
        weights[USER_KEYS[key.strip()]] = int(value)
    for cls in environment.user_classes:
        if cls.__name__ in weights:
            cls.weight = weights[cls.__name__]
        cls.wait_time = between(options.think_time * 0.5, options.think_time * 1.5)
    environment._remove_user_classes_with_weight_zero()
    STATE["thresholds"] = slo_gate.load_thresholds(options.slo_file)  # a bad SLO file stops the run now
    if options.callback_secret and not isinstance(environment.runner, MasterRunner):
        STATE["receiver"] = Receiver(
            options.callback_secret, options.callback_bind, options.callback_host, options.callback_port
        )
        log.info("callback receiver at %s", STATE["receiver"].base)


def _card(user: HttpUser) -> tuple[str, Payloads]:
    """The model card, fetched once per process (payloads and the OIP v2 name come from it)."""
    if STATE["card"] is None:
        name = user.environment.parsed_options.model
        if not name:
            listing = user.client.get("/api/v1/models", name="/api/v1/models").json()
            models = listing.get("models", listing) if isinstance(listing, dict) else listing
            name = models[0]["name"]
        card = user.client.get(f"/api/v1/models/{name}", name="/api/v1/models/{name}").json()
        STATE["model"], STATE["card"] = name, card
    return STATE["model"], Payloads(STATE["card"])


class GateUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.15)

    def on_start(self) -> None:
        # A service with authentication on (docs/security.md): the key or token needs 'predict' and 'jobs'.
        token = os.environ.get("FERRY_TOKEN")
        if token:
            self.client.headers["Authorization"] = f"Bearer {token}"
        self.model, self.payloads = _card(self)
        self.options = self.environment.parsed_options


class PredictUser(GateUser):
    weight = 5

    @task
    def predict(self) -> None:
        self.client.post("/api/v1/predict", json={"record": self.payloads.record()}, name="/api/v1/predict")


class BatchUser(GateUser):
    weight = 2

    @task
    def batch(self) -> None:
        n = self.options.batch_size
        with self.client.post(
            "/api/v1/predict/batch",
            json={"records": self.payloads.records(n)},
            name="/api/v1/predict/batch",
            catch_response=True,
        ) as resp:
            if resp.ok and len(resp.json().get("predictions", [])) != n:
                resp.failure(f"expected {n} predictions")


class V2InferUser(GateUser):
    weight = 2

    @task
    def infer(self) -> None:
        rows = [self.payloads.row(r) for r in self.payloads.records(2)]
        body = {"inputs": [v2_tensor(rows)]}
        self.client.post(f"/v2/models/{self.model}/infer", json=body, name="/v2/models/{name}/infer")


class StreamUser(GateUser):
    weight = 1

    @task
    def stream(self) -> None:
        n = self.options.stream_records
        started = time.perf_counter()
        with self.client.post(
            "/api/v1/predict/stream",
            json={"records": self.payloads.records(n), "chunk_size": max(1, n // 4)},
            name="/api/v1/predict/stream",
            stream=True,
            catch_response=True,
        ) as resp:
            if not resp.ok:
                return  # reported as the HTTP failure it is
            parser, got, ending = SSEParser(), 0, None
            for line in resp.iter_lines(decode_unicode=True):
                event = parser.feed(line)
                if event is None:
                    continue
                if event.event == "chunk":
                    got += len(event.json()["predictions"])
                elif event.event in ("summary", "failed", "shutdown"):
                    ending = event.event
                    break
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000  # the whole stream
            if ending != "summary" or got != n:
                resp.failure(f"stream ended with {ending!r} after {got}/{n} predictions")
            else:
                resp.success()


class JobsUser(GateUser):
    weight = 1

    @task
    def job(self) -> None:
        receiver: Receiver | None = STATE["receiver"]
        n, timeout = self.options.job_records, self.options.job_timeout
        token = uuid.uuid4().hex
        body: dict[str, Any] = {"records": self.payloads.records(n), "metadata": {"gate": token}}
        if receiver is not None:  # the URL carries the token: the job id is not known before the submit
            body["callback_url"] = receiver.url(token)
        submitted = time.time()
        with self.client.post(
            "/api/v1/jobs", json=body, name="/api/v1/jobs", headers={"Idempotency-Key": token}, catch_response=True
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"expected 202, got {resp.status_code}")
                return
            job_id = resp.json()["id"]
        job = self._follow_sse(job_id, timeout) if self.options.job_wait == "sse" else self._poll(job_id, timeout)
        self._report("JOB", "job completion", submitted, self._job_problem(job, n))
        if receiver is None:
            return
        arrival = receiver.wait(token, timeout)
        if arrival is None:
            self._report("CALLBACK", "job callback", submitted, "no signed callback arrived in time")
            return
        at, problem, payload = arrival
        if problem is None and (payload or {}).get("data", {}).get("id") != job_id:
            problem = f"callback names job {(payload or {}).get('data', {}).get('id')}, expected {job_id}"
        self._report("CALLBACK", "job callback", submitted, problem, at=at)

    def _job_problem(self, job: dict[str, Any] | None, n: int) -> str | None:
        if job is None:
            return "the job did not end in time"
        if job["status"] != "succeeded":
            return f"job {job['status']}: {job.get('error')}"
        predictions = (job.get("result") or {}).get("predictions") or []
        return None if len(predictions) == n else f"{len(predictions)} predictions for {n} records"

    def _report(self, kind: str, name: str, since: float, problem: str | None, at: float | None = None) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=((at or time.time()) - since) * 1000,
            response_length=0,
            exception=RuntimeError(problem) if problem else None,
            context={},
        )

    def _poll(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            resp = self.client.get(f"/api/v1/jobs/{job_id}", name="/api/v1/jobs/{id}")
            if resp.ok and resp.json()["status"] in TERMINAL:
                return resp.json()
            time.sleep(0.1)
        return None

    def _follow_sse(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        last = None
        with self.client.get(
            f"/api/v1/jobs/{job_id}/events",
            name="/api/v1/jobs/{id}/events",
            stream=True,
            catch_response=True,
            timeout=timeout,
        ) as resp:
            if not resp.ok:
                return None
            parser = SSEParser()
            for line in resp.iter_lines(decode_unicode=True):
                event = parser.feed(line)
                if event is not None and event.event == "status":
                    last = event.json()
                    if last["status"] in TERMINAL:
                        break
            if last is None or last["status"] not in TERMINAL:
                resp.failure("the event stream ended before the job did")
        return last if last and last["status"] in TERMINAL else None


# --- measurements --------------------------------------------------------------------------------
def snapshot(environment: Any) -> dict[str, slo_gate.Sample]:
    """Per request name (methods merged): counts and a copy of Locust's response-time histogram."""
    out: dict[str, slo_gate.Sample] = {}
    for (name, _method), entry in environment.stats.entries.items():
        sample = slo_gate.Sample(entry.num_requests, entry.num_failures, dict(entry.response_times))
        out[name] = out[name].plus(sample) if name in out else sample
    return out


def window(later: dict[str, slo_gate.Sample], earlier: dict[str, slo_gate.Sample]) -> dict[str, slo_gate.Sample]:
    return {name: s.minus(earlier.get(name, slo_gate.Sample())) for name, s in later.items()}


# --- load shapes ---------------------------------------------------------------------------------
class SteadyShape(LoadTestShape):
    """--users at --spawn-rate for --run-time."""

    abstract = True
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options
        return slo_gate.steady_plan(self.get_run_time(), o.num_users or 1, o.spawn_rate or 1, o.run_time or 60)


class SpikeShape(LoadTestShape):
    """--users, then --spike-users (default 4x) for the middle fifth of --run-time, then --users again."""

    abstract = True
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options
        base = o.num_users or 1
        return slo_gate.spike_plan(self.get_run_time(), base, o.spike_users or 4 * base, o.run_time or 60)


class StepShape(LoadTestShape):
    """Capacity search: --step-start users, +--step-users every --step-seconds, each step judged on its
    own window (after --step-settle); stops at the first step that breaks an objective."""

    abstract = True
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.index = -1
        self.mark: tuple[float, dict[str, slo_gate.Sample]] | None = None
        self.users = 0

    def _close_step(self, now: float) -> bool:
        """Judge the step just finished; True when it broke an objective."""
        if self.mark is None:
            return False
        since, before = self.mark
        env = self.runner.environment
        samples = window(snapshot(env), before)
        checks = slo_gate.judge(samples, now - since, STATE["thresholds"], throughput=False)
        total, slo = slo_gate.Sample(), slo_gate.Sample()
        for name, s in samples.items():
            total = total.plus(s)
            if name in STATE["thresholds"].slo_routes:
                slo = slo.plus(s)
        step = slo_gate.Step(
            users=self.users,
            duration_s=now - since,
            rps=total.requests / (now - since) if now > since else 0.0,
            error_ratio=total.failures / total.requests if total.requests else None,
            p95_ms=slo.percentile(0.95),  # over the SLO routes (job completion takes longer by design)
            p99_ms=slo.percentile(0.99),
            passed=not slo_gate.broken(checks) and total.requests > 0,
            broken=slo_gate.broken(checks) or ([] if total.requests else ["no requests"]),
        )
        STATE["steps"].append(step)
        log.info("step %d users: %.1f req/s, %s", step.users, step.rps, "within SLO" if step.passed else step.broken)
        return not step.passed

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        plan = slo_gate.step_plan(run_time, o.step_start, o.step_users, o.step_seconds, o.step_max_users)
        index = int(run_time // o.step_seconds)
        if index != self.index:  # a new step: judge the previous one
            if self._close_step(time.time()):
                return None
            self.index, self.mark = index, None
        if self.mark is None and run_time - index * o.step_seconds >= o.step_settle:
            self.mark = (time.time(), snapshot(self.runner.environment))
        if plan is None:
            return None
        self.users = plan[0]
        return plan


class GateShape(LoadTestShape):
    """The shape Locust runs: delegates to the one --load-shape names (steady, step or spike)."""

    use_common_options = True
    SHAPES: ClassVar[dict[str, type[LoadTestShape]]] = {"steady": SteadyShape, "step": StepShape, "spike": SpikeShape}

    def __init__(self) -> None:
        super().__init__()
        self.delegate: LoadTestShape | None = None

    def tick(self) -> tuple[int, float] | None:
        if self.delegate is None:
            self.delegate = self.SHAPES[self.runner.environment.parsed_options.load_shape]()
            self.delegate.runner = self.runner
            self.delegate.start_time = self.start_time
        return self.delegate.tick()


# --- the verdict -----------------------------------------------------------------------------------
@events.test_start.add_listener
def _started(environment: Any, **_: Any) -> None:
    STATE["started"] = time.time()


@events.quitting.add_listener
def _verdict(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the aggregated stats
    options = environment.parsed_options
    if STATE["receiver"] is not None:
        STATE["receiver"].close()
    thresholds: slo_gate.Thresholds = STATE["thresholds"]
    duration = time.time() - (STATE["started"] or time.time())
    samples = snapshot(environment)
    samples.pop("/api/v1/models", None)  # card look-ups are set-up, not traffic
    samples.pop("/api/v1/models/{name}", None)
    step_mode = options.load_shape == "step"
    checks = slo_gate.judge(samples, duration, thresholds, throughput=not step_mode)
    meta = {
        "host": environment.host,
        "shape": options.load_shape,
        "duration_s": round(duration, 1),
        "slo_file": thresholds.source,
        "weights": options.weights,
        "requests": {name: {"requests": s.requests, "failures": s.failures} for name, s in sorted(samples.items())},
    }
    steps = STATE["steps"] if step_mode else None
    doc = slo_gate.verdict_document(checks, meta, steps)
    reports = Path(options.reports_dir)
    slo_gate.write_reports(reports, doc, checks)
    title = f"SLO gate — {environment.host} — {options.load_shape}, {duration:.0f} s"
    if step_mode:
        title += " (whole run, for information: the capacity search judges each step below)"
    print("\n" + slo_gate.table(checks, title))
    if steps is not None:
        print(slo_gate.steps_table(steps, slo_gate.knee(steps)))
    print(f"reports: {reports}/verdict.json, {reports}/verdict.junit.xml", flush=True)
    environment.process_exit_code = 0 if doc["passed"] else 1
