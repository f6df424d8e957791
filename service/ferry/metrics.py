"""Every Prometheus metric ferry exports, and the /metrics exposition.

Under gunicorn the launcher exports ``PROMETHEUS_MULTIPROC_DIR`` before any Python process starts,
so each worker writes its values to files there and any worker can answer a scrape with the sum over
all of them (``docs/metrics.md``). Without that variable (a single process, e.g. in unit tests) the
metrics live in this object's own registry.

Labels are bounded: route templates (never raw paths), method, status class, error code, model name,
and class labels from the model card (capped at ``MAX_CLASS_LABELS``).

Exemplars: prometheus-client's multiprocess mode drops them (its file values have no room for one), so
``Exemplars`` keeps the latest trace id per bucket of ``ferry_http_request_duration_seconds`` in each
worker, writes them to ``exemplars_<pid>.json`` in the multiprocess directory at most once a second, and
the worker answering a scrape merges every worker's file (newest per bucket) into the OpenMetrics
exposition, which is the only format that carries exemplars (docs/architecture.md, "Exemplars").
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from ferry import cgroups

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


# The container's cgroup figures (ferry.cgroups), read at scrape time by whichever process answers:
# they are the container's, not a worker's, so they are never summed over workers. (name, type,
# CgroupFigures field, help). A figure the cgroup does not have, and a limit that is not set, has
# no sample: an unlimited container draws no limit line.
CONTAINER_METRICS = (
    (
        "ferry_container_cpu_usage_seconds",
        "counter",
        "cpu_usage_seconds",
        "CPU time used by every process of the container (cgroup cpuacct.usage or cpu.stat usage_usec).",
    ),
    (
        "ferry_container_cpu_limit_cores",
        "gauge",
        "cpu_limit_cores",
        "CPU limit of the container in cores: the tightest CFS quota / period of its cgroup and the parents it "
        "sees (a pod's cgroup may cap its containers lower); absent without a limit.",
    ),
    (
        "ferry_container_cpu_periods",
        "counter",
        "cpu_periods",
        "CFS enforcement periods in which the container was runnable (cgroup cpu.stat nr_periods).",
    ),
    (
        "ferry_container_cpu_throttled_periods",
        "counter",
        "cpu_throttled_periods",
        "CFS periods in which the container used up its quota and was throttled (nr_throttled).",
    ),
    (
        "ferry_container_cpu_throttled_seconds",
        "counter",
        "cpu_throttled_seconds",
        "Time the container's threads were held back by its CPU limit (throttled_time / throttled_usec).",
    ),
    (
        "ferry_container_memory_usage_bytes",
        "gauge",
        "memory_usage_bytes",
        "Memory charged to the container, page cache included (memory.usage_in_bytes / memory.current).",
    ),
    (
        "ferry_container_memory_working_set_bytes",
        "gauge",
        "memory_working_set_bytes",
        "Memory usage less inactive page cache: what the kubelet evicts on and the OOM killer approaches.",
    ),
    (
        "ferry_container_memory_limit_bytes",
        "gauge",
        "memory_limit_bytes",
        "Memory limit of the container (memory.limit_in_bytes / memory.max); absent without a limit.",
    ),
)


class ContainerCollector(Collector):
    """The ``CONTAINER_METRICS`` of this process's cgroup, read when collected."""

    def __init__(self, paths: cgroups.CgroupPaths | None = None) -> None:
        self._paths = paths or cgroups.locate()

    def collect(self) -> Iterable[Metric]:
        figures = cgroups.read(self._paths)
        for name, kind, field, documentation in CONTAINER_METRICS:
            value = getattr(figures, field)
            if value is None:
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value=value)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


HTTP_DURATION = "ferry_http_request_duration_seconds"
EXEMPLAR_FILE_PREFIX = "exemplars_"
_BUCKET_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]
# route, method, status class, le -> (trace id, observed seconds, unix time)
_Key = tuple[str, str, str, str]
_Entry = tuple[str, float, float]


def exemplar_file(directory: str, pid: int) -> Path:
    return Path(directory, f"{EXEMPLAR_FILE_PREFIX}{pid}.json")


class Exemplars:
    """The latest ``trace_id`` exemplar per bucket of the request-duration histogram, of this process;
    shared with the other workers through a small file in the multiprocess directory."""

    def __init__(self) -> None:
        self._latest: dict[_Key, _Entry] = {}
        self._dirty = False

    def record(self, route: str, method: str, status_class: str, seconds: float, trace_id: str) -> None:
        le = _BUCKET_LE[bisect.bisect_left(LATENCY_BUCKETS, seconds)]  # the bucket observe() counts it in
        self._latest[(route, method, status_class, le)] = (trace_id, seconds, time.time())
        self._dirty = True

    def flush(self) -> None:
        """Write this process's exemplars for the other workers' scrapes (only when they changed)."""
        directory = multiprocess_dir()
        if not self._dirty or directory is None:
            return
        self._dirty = False
        path = exemplar_file(directory, os.getpid())
        temporary = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # a full or vanished directory costs exemplars, never a request
            temporary.write_text(json.dumps([[*key, *entry] for key, entry in self._latest.items()]))
            temporary.replace(path)  # readers see the old file or the new one, never half of one

    def merged(self) -> dict[_Key, Exemplar]:
        """Every worker's exemplars, newest per bucket (this process's own from memory)."""
        newest: dict[_Key, _Entry] = {}
        directory = multiprocess_dir()
        if directory is not None:
            own = exemplar_file(directory, os.getpid())
            for path in Path(directory).glob(f"{EXEMPLAR_FILE_PREFIX}*.json"):
                if path == own:
                    continue
                try:
                    rows = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # a worker's file that vanished or is unreadable: its exemplars are skipped
                for route, method, status_class, le, trace_id, value, at in rows:
                    _keep_newer(newest, (route, method, status_class, le), (trace_id, value, at))
        for key, entry in self._latest.items():
            _keep_newer(newest, key, entry)
        return {key: Exemplar({"trace_id": t}, value, at) for key, (t, value, at) in newest.items()}


def _keep_newer(into: dict[_Key, _Entry], key: _Key, entry: _Entry) -> None:
    current = into.get(key)
    if current is None or entry[2] > current[2]:
        into[key] = entry


class _WithExemplars:
    """A collector that adds exemplars to the request-duration buckets of another collector's output."""

    def __init__(self, source: Collector, exemplars: dict[_Key, Exemplar]) -> None:
        self.source = source
        self.exemplars = exemplars

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name == HTTP_DURATION and self.exemplars:
                family.samples = [
                    sample._replace(
                        exemplar=self.exemplars.get(
                            (
                                sample.labels.get("route", ""),
                                sample.labels.get("method", ""),
                                sample.labels.get("status_class", ""),
                                sample.labels.get("le", ""),
                            )
                        )
                    )
                    if sample.name.endswith("_bucket")
                    else sample
                    for sample in family.samples
                ]
            yield family


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
        self._container = ContainerCollector()
        r.register(self._container)
        self.exemplars = Exemplars()

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, exemplar: str | None = None
    ) -> None:
        """One answered request; ``exemplar``: its trace id (the access line's), kept as the exemplar of
        the duration bucket it falls in."""
        method = method if method in KNOWN_METHODS else "OTHER"
        status_class = f"{status // 100}xx"
        self.http_requests.labels(route, method, status_class).inc()
        self.http_duration.labels(route, method, status_class).observe(seconds)
        if exemplar is not None:
            self.exemplars.record(route, method, status_class, seconds, exemplar)

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

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and content type for a scrape whose Accept header is ``accept``: OpenMetrics, with
        exemplars, when the scraper asks for it (Prometheus does, with exemplar storage on), else the
        Prometheus text format."""
        encoder, content_type = choose_encoder(accept or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        path = multiprocess_dir()
        source: Collector = (
            multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
            if path
            else self.registry
        )
        if openmetrics:
            source = _WithExemplars(source, self.exemplars.merged())
        registry = CollectorRegistry()
        registry.register(source)
        if path:
            # The container's cgroup figures are read by whichever worker answers, never summed.
            registry.register(self._container)
        if openmetrics:
            return encoder(registry), content_type
        return generate_latest(registry), CONTENT_TYPE_LATEST  # the text format, as before exemplars


def mark_worker_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop the dead worker's live gauges and exemplars (so a worker
    recycled every max_requests leaves no file behind)."""
    directory = multiprocess_dir()
    if directory:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        exemplar_file(directory, pid).unlink(missing_ok=True)
