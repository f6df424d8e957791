"""Every Prometheus metric ferry exports, and the /metrics exposition.

Under gunicorn the launcher exports ``PROMETHEUS_MULTIPROC_DIR`` before any Python process starts,
so each worker writes its values to files there and any worker can answer a scrape with the sum over
all of them (``docs/metrics.md``). Without that variable (a single process, e.g. in unit tests) the
metrics live in this object's own registry.

Labels are bounded: route templates (never raw paths), method, status class, error code, model name,
and class labels from the model card (capped at ``MAX_CLASS_LABELS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_CLASS_LABELS = 50
# Why a worker closed a connection itself (ferry.api.connections).
CONNECTION_CLOSE_REASONS = (
    "header_timeout",
    "body_timeout",
    "headers_too_large",
    "too_many_connections",
    "evicted_idle",
    "evicted_headers",
    "evicted_body",
)


# The route templates that call the model (unit-tested against the app's routes): their error series
# exist from the start for every server-side code, so rate() sees the first error of a new pod.
PREDICTION_ROUTES = (
    "/api/v1/predict",
    "/api/v1/predict/batch",
    "/api/v1/predict/stream",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
)


def _server_error_codes() -> set[str]:
    """The codes of the 5xx errors (a 4xx is the client's, and its series appear at first use)."""
    from ferry.errors import FerryError

    codes, pending = set(), [FerryError]
    while pending:
        cls = pending.pop()
        if cls.status >= 500:
            codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Metric objects of one process. Create one per app; never at import time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "ferry_http_requests_total",
            "HTTP requests answered, by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            "ferry_http_request_duration_seconds",
            "Time from the first byte of the request to the end of the response.",
            ["route", "method", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "ferry_http_requests_in_flight",
            "HTTP requests being served now, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.errors = Counter(
            "ferry_errors_total",
            "Error responses (and stream chunks ended by an error) by route template and stable error code.",
            ["route", "code"],
            registry=r,
        )
        self.inference_duration = Histogram(
            "ferry_inference_duration_seconds",
            "Wall time of one model call (predict_proba or predict) in the inference thread.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ferry_inference_batch_size",
            "Rows per model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rows_predicted = Counter("ferry_predicted_rows_total", "Rows the model has scored.", ["model"], registry=r)
        self.predicted_classes = Counter(
            "ferry_predicted_class_total",
            "Predicted class of each scored row (classifiers only).",
            ["model", "class"],
            registry=r,
        )
        self.inference_in_flight = Gauge(
            "ferry_inference_in_flight",
            "Model calls running or waiting for an inference thread, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inference_capacity = Gauge(
            "ferry_inference_capacity",
            "Model calls the live workers accept at once (threads + queue), summed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_calls_in_flight = Gauge(
            "ferry_model_calls_in_flight",
            "Model calls running in inference threads now (never above threads per worker), summed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_calls = Counter(
            "ferry_model_calls_total",
            "Model calls by outcome (ok, error, timeout: it returned after every caller's deadline); calls "
            "refused by the breaker are not model calls.",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "ferry_inference_queue_depth",
            "Requests waiting for an inference thread, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_wait = Histogram(
            "ferry_inference_queue_wait_seconds",
            "Time a request waited between admission and the start of its model call.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "ferry_inference_batch_requests",
            "Requests merged into one model call (micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.deadline_exceeded = Counter(
            "ferry_deadline_exceeded_total",
            "Requests whose deadline passed, by where: queued (never started) or running.",
            ["stage"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "ferry_breaker_state",
            "Circuit breaker state, worst over live workers: 0 closed, 1 half-open, 2 open.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.breaker_transitions = Counter(
            "ferry_breaker_transitions_total",
            "Circuit breaker transitions, by the state entered.",
            ["state"],
            registry=r,
        )
        self.faults_active = Gauge(
            "ferry_faults_active",
            "1 while fault injection is active in any live worker.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_info = Gauge(
            "ferry_model_info",
            "Always 1; labels name the served model.",
            ["model", "version", "sha256"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_ready = Gauge(
            "ferry_model_ready",
            "1 when every live worker has its model loaded and verified, else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.workers = Gauge("ferry_workers", "Live gunicorn workers.", multiprocess_mode="livesum", registry=r)
        self.worker_starts = Counter(
            "ferry_worker_starts_total",
            "Worker processes started since the pod started (restarts and recycling included).",
            registry=r,
        )
        # Multiprocess mode drops the default process collector; these replace it, per worker,
        # summed over live workers (memory, fds) or over all workers that ever ran (cpu).
        self.process_cpu = Counter("ferry_process_cpu_seconds_total", "CPU time used by workers.", registry=r)
        self.process_memory = Gauge(
            "ferry_process_resident_memory_bytes",
            "Resident memory of live workers, summed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.process_fds = Gauge(
            "ferry_process_open_fds",
            "Open file descriptors of live workers, summed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        # -- async jobs, callbacks and streams ------------------------------------------------
        self.jobs = Counter(
            "ferry_jobs_total",
            "Jobs that reached a terminal state, by outcome (succeeded, failed, canceled).",
            ["outcome"],
            registry=r,
        )
        self.jobs_submitted = Counter(
            "ferry_jobs_submitted_total", "Jobs accepted (idempotent replays excluded).", registry=r
        )
        self.job_runs = Counter(
            "ferry_job_runs_total",
            "Job runs started by runners, by kind: first run, retry after an unavailable model, or reclaim "
            "of a job whose runner died.",
            ["kind"],
            registry=r,
        )
        self.jobs_queue_depth = Gauge(
            "ferry_jobs_queue_depth",
            "Jobs waiting for a runner in the store (a store-wide value, the same from every process: "
            "aggregate with max, not sum). What the autoscaler scales runners on.",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.jobs_oldest_queued_age = Gauge(
            "ferry_jobs_oldest_queued_age_seconds",
            "Age of the oldest job waiting for a runner, 0 when none waits (store-wide; aggregate with max).",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.jobs_running = Gauge(
            "ferry_jobs_running", "Jobs being run by this pod's runners now.", multiprocess_mode="livesum", registry=r
        )
        self.job_duration = Histogram(
            "ferry_job_duration_seconds",
            "Time from a job's submission to its terminal state, by outcome.",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.callback_attempts = Counter(
            "ferry_callback_attempts_total",
            "Callback delivery attempts by outcome: delivered (2xx), retry (408/429/5xx, timeout, connection "
            "error), rejected (other status; not retried), forbidden (address refused by the SSRF guard).",
            ["outcome"],
            registry=r,
        )
        self.callback_duration = Histogram(
            "ferry_callback_duration_seconds",
            "Duration of one callback delivery attempt.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.callback_dead_letters = Counter(
            "ferry_callback_dead_letters_total",
            "Callbacks given up after max attempts, max age or a non-retryable answer (re-deliverable).",
            registry=r,
        )
        self.sse_streams_open = Gauge(
            "ferry_sse_streams_open",
            "Open Server-Sent Events streams, by stream kind (predict, job_events), summed over live workers.",
            ["stream"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_hangs = Counter(
            "ferry_model_hangs_total",
            "Model calls still running after inference.hang_s (each makes its worker unready, then replaced).",
            registry=r,
        )
        self.model_hung = Gauge(
            "ferry_model_hung",
            "1 while a worker has a hung model call (it is unready and about to be replaced).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.connections_closed = Counter(
            "ferry_connections_closed_total",
            "Connections a worker closed itself: header or body timeout, headers too large, refused or "
            "evicted at the connection limit.",
            ["reason"],
            registry=r,
        )
        self.stream_chunks = Counter(
            "ferry_stream_chunks_total",
            "Chunks of streamed predictions: sent, or skipped because the client left or the server stopped.",
            ["outcome"],
            registry=r,
        )
        # Known label values start at 0, so rate() and alerts see the series before the first event.
        for outcome in ("succeeded", "failed", "canceled"):
            self.jobs.labels(outcome)
            self.job_duration.labels(outcome)
        for kind in ("first", "retry", "reclaim"):
            self.job_runs.labels(kind)
        for outcome in ("delivered", "retry", "rejected", "forbidden"):
            self.callback_attempts.labels(outcome)
        for stream in ("predict", "job_events"):
            self.sse_streams_open.labels(stream)
        for outcome in ("sent", "skipped"):
            self.stream_chunks.labels(outcome)
        # Server-side (5xx) codes on the prediction routes: what the cause alerts and panels divide.
        for route in PREDICTION_ROUTES:
            for code in sorted(_server_error_codes()):
                self.errors.labels(route, code)
        for stage in ("queued", "running"):
            self.deadline_exceeded.labels(stage)
        for state in ("closed", "half-open", "open"):
            self.breaker_transitions.labels(state)
        for outcome in ("ok", "error", "timeout"):
            self.model_calls.labels(outcome)
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(reason)
        self._cpu_seen = 0.0
        self._process = ProcessCollector(registry=None)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        status_class = f"{status // 100}xx"
        self.http_requests.labels(route, method, status_class).inc()
        self.http_duration.labels(route, method, status_class).observe(seconds)

    def observe_inference(self, model: str, rows: int, seconds: float) -> None:
        self.inference_duration.labels(model).observe(seconds)
        self.batch_size.labels(model).observe(rows)
        self.rows_predicted.labels(model).inc(rows)

    def job_finished(self, status: str, seconds: float) -> None:
        """A job reached a terminal state (``seconds`` from submission)."""
        self.jobs.labels(status).inc()
        self.job_duration.labels(status).observe(max(0.0, seconds))

    def count_classes(self, model: str, counts: Iterable[tuple[str, int]]) -> None:
        for label, n in counts:
            if n:
                self.predicted_classes.labels(model, label).inc(n)

    def refresh_process(self) -> None:
        """Copy this worker's /proc figures into the multiprocess-safe process metrics."""
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    delta = sample.value - self._cpu_seen
                    if delta > 0:
                        self.process_cpu.inc(delta)
                        self._cpu_seen = sample.value
                elif sample.name == "process_resident_memory_bytes":
                    self.process_memory.set(sample.value)
                elif sample.name == "process_open_fds":
                    self.process_fds.set(sample.value)

    def exposition(self) -> tuple[bytes, str]:
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop the dead worker's live gauges."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
