"""ferry.tracing in process: off is a no-op that never loads the SDK; on, spans go to an in-memory
exporter with the parents and links the docs promise. Exemplars: merged over workers' files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from ferry import tracing
from ferry.api.metrics_port import _accept
from ferry.metrics import Metrics, exemplar_file, mark_worker_dead
from ferry.settings import TracingSettings

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True), version="test", exporter=memory)
    yield memory
    tracing.shutdown()


def finished(exporter: InMemorySpanExporter) -> dict[str, object]:
    tracing.shutdown()  # flushes the batch processor
    return {span.name: span for span in exporter.get_finished_spans()}


def test_off_every_call_is_a_no_op() -> None:
    tracing.configure(TracingSettings(), version="test")
    assert not tracing.enabled()
    span = tracing.server_span(
        "POST", "/api/v1/predict", {b"traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"}
    )
    assert span is tracing.NOOP_SERVER_SPAN and span.trace_id is None
    span.end("/api/v1/predict", 200)
    assert tracing.capture() is None and tracing.traceparent() is None
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
    with tracing.span("job run", parent="00-" + "a" * 32 + "-" + "b" * 16 + "-01") as handle:
        assert handle is tracing.NOOP_HANDLE and handle.trace_id is None
        handle.set("k", 1)
        handle.fail("x")
    assert tracing.model_call([None], model="m", rows=1) is tracing.NOOP_MODEL_CALL


def test_off_the_tracing_sdk_is_never_imported() -> None:
    """Zero cost when off includes start-up and memory: no tracer, processor or exporter module is loaded.
    (redis-py loads the SDK's *metrics* module by itself whenever the SDK is installed.)"""
    code = (
        "import sys; from ferry import tracing; from ferry.settings import Settings; "
        "from ferry.main import create_app; create_app(Settings()); "
        "tracing.server_span('GET', '/x', {}).end('/x', 200); "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PROMETHEUS_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_request_span_is_the_child_of_the_callers_traceparent(exporter: InMemorySpanExporter) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {b"traceparent": f"00-{caller_trace}-{caller_span}-01".encode()}
    server = tracing.server_span("POST", "/api/v1/predict", headers)
    assert server.trace_id == caller_trace
    stored = tracing.traceparent()  # what a job submitted now would store
    assert stored is not None and stored.startswith(f"00-{caller_trace}-")
    server.end("/api/v1/predict", 503)
    assert tracing.capture() is None, "end() makes the caller's context current again"
    span = finished(exporter)["POST /api/v1/predict"]
    assert span.parent is not None and format(span.parent.span_id, "016x") == caller_span  # type: ignore[attr-defined]
    assert span.attributes["http.route"] == "/api/v1/predict"  # type: ignore[attr-defined]
    assert span.status.status_code.name == "ERROR"  # type: ignore[attr-defined]


def test_a_4xx_is_not_a_server_error(exporter: InMemorySpanExporter) -> None:
    tracing.server_span("POST", "/api/v1/predict", {}).end("/api/v1/predict", 422)
    assert finished(exporter)["POST /api/v1/predict"].status.status_code.name == "UNSET"  # type: ignore[attr-defined]


def test_a_model_call_is_the_child_of_its_oldest_request_and_links_them_all(exporter: InMemorySpanExporter) -> None:
    contexts, spans = [], []
    for path in ("/a", "/b"):
        server = tracing.server_span("POST", path, {})
        contexts.append(tracing.capture())
        spans.append(server)
        server.end(path, 200)  # detaches: the next request starts a trace of its own
    assert contexts[0] is not None and contexts[1] is not None
    start = tracing.now_ns()
    tracing.queue_wait(contexts[1], start - 1000, start)
    tracing.model_call(contexts, model="m", rows=3).end(failed=1)
    got = finished(exporter)
    call, first, second = got["model call"], got["POST /a"], got["POST /b"]
    assert call.parent.span_id == first.context.span_id  # type: ignore[attr-defined]
    assert [link.context.span_id for link in call.links] == [first.context.span_id, second.context.span_id]  # type: ignore[attr-defined]
    assert call.attributes["ferry.requests"] == 2 and call.status.status_code.name == "ERROR"  # type: ignore[attr-defined]
    assert got["queue wait"].parent.span_id == second.context.span_id  # type: ignore[attr-defined]


def test_a_job_span_continues_a_stored_traceparent_and_callbacks_carry_it(exporter: InMemorySpanExporter) -> None:
    stored = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with tracing.span("callback attempt", parent=stored, client=True) as handle:
        assert handle.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        headers: dict[str, str] = {}
        tracing.inject(headers)
    attempt = finished(exporter)["callback attempt"]
    assert headers["traceparent"] == f"00-{handle.trace_id}-{attempt.context.span_id:016x}-01"  # type: ignore[attr-defined]
    assert attempt.kind.name == "CLIENT"  # type: ignore[attr-defined]


def test_unsampled_requests_still_have_a_trace_id_for_the_access_line() -> None:
    memory = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, sample_ratio=0), version="test", exporter=memory)
    server = tracing.server_span("GET", "/x", {})
    assert server.trace_id is not None and len(server.trace_id) == 32 and server.trace_id != "0" * 32
    server.end("/x", 200)
    tracing.shutdown()
    assert memory.get_finished_spans() == ()


def test_export_headers_parse_like_otel_exporter_otlp_headers() -> None:
    assert tracing.parse_headers("X-Scope-OrgID=team-a, authorization=Bearer%20abc") == {
        "x-scope-orgid": "team-a",
        "authorization": "Bearer abc",
    }
    with pytest.raises(ValueError, match="key=value"):
        tracing.parse_headers("novalue")


# -- exemplars ---------------------------------------------------------------------------------
def _exemplars(text: str) -> dict[tuple[str, str], str]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.exemplar is not None:
                out[(sample.labels["route"], sample.labels["le"])] = sample.exemplar.labels["trace_id"]
    return out


def test_exemplars_are_merged_over_workers_newest_per_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    metrics.observe_request("/api/v1/predict", "POST", 200, 0.004, exemplar="a" * 32)  # le 0.005
    metrics.observe_request("/api/v1/predict", "POST", 200, 0.3, exemplar="b" * 32)  # le 0.3 (bounds are inclusive)
    # Another worker's file: a newer exemplar for the 0.005 bucket, an older one for 0.3, one for 0.05.
    now = time.time()
    other = [
        ["/api/v1/predict", "POST", "2xx", "0.005", "c" * 32, 0.003, now + 60],
        ["/api/v1/predict", "POST", "2xx", "0.3", "d" * 32, 0.25, now - 60],
        ["/api/v1/predict", "POST", "2xx", "0.05", "e" * 32, 0.02, now],
    ]
    exemplar_file(str(tmp_path), 1).write_text(json.dumps(other))
    (tmp_path / "exemplars_2.json").write_text("{not json")  # a torn or foreign file is skipped
    merged = metrics.exemplars.merged()
    assert {key[3]: exemplar.labels["trace_id"] for key, exemplar in merged.items()} == {
        "0.005": "c" * 32,
        "0.3": "b" * 32,
        "0.05": "e" * 32,
    }
    assert merged[("/api/v1/predict", "POST", "2xx", "0.3")].value == 0.3

    metrics.exemplars.flush()  # this worker's file, for the others
    written = json.loads(exemplar_file(str(tmp_path), os.getpid()).read_text())
    assert {row[4] for row in written} == {"a" * 32, "b" * 32}
    os.utime(exemplar_file(str(tmp_path), os.getpid()), (0, 0))
    metrics.exemplars.flush()  # nothing changed since: not written again
    assert exemplar_file(str(tmp_path), os.getpid()).stat().st_mtime == 0
    mark_worker_dead(os.getpid())
    assert not exemplar_file(str(tmp_path), os.getpid()).exists()


def test_single_process_exemplars_without_a_multiprocess_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    metrics.observe_request("/x", "GET", 200, 100.0, exemplar="f" * 32)  # beyond every bound: +Inf
    metrics.observe_request("/x", "GET", 200, 0.01)  # no trace id: no exemplar
    body, content_type = metrics.exposition(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    assert _exemplars(body.decode()) == {("/x", "+Inf"): "f" * 32}  # and it parses as OpenMetrics
    plain, plain_type = metrics.exposition("text/plain")
    assert plain_type.startswith("text/plain") and b"trace_id" not in plain


def test_the_metrics_port_reads_the_scrapers_accept_header() -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    assert _accept(head) == "application/openmetrics-text; version=1.0.0"
    assert _accept(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") is None
