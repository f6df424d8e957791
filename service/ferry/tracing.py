"""Optional OpenTelemetry tracing: the spans ferry makes, and W3C trace context in and out.

Off by default (``tracing.enabled``). Off, every function here returns at its first check and the
OpenTelemetry SDK is never imported, so the request path pays one global read. On, each worker gets its
own tracer provider (after the fork) exporting over OTLP/HTTP from a background thread, never from the
event loop.

The spans (names are stable; docs/observability.md shows a trace):

- ``<METHOD> <route template>``: the request (server span), a child of the caller's ``traceparent``;
- ``queue wait``: from admission to the start of its model call, a child of the request;
- ``model call``: one per model call, a child of the oldest request merged into it and linked to every
  request's span (a merged request finds the call through its link);
- ``job run``: one run of an async job, a child of the request that submitted it;
- ``callback attempt``: one delivery attempt (client span), a child of the submitting request, whose
  ``traceparent`` the callback POST carries.

A job stores its submission's ``traceparent`` (``Job.traceparent``), so its run and callbacks join the
submitter's trace in whichever process runs them.
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

from ferry.logging import get_logger
from ferry.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.context import Context as Context  # re-exported: what capture() returns
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = get_logger("ferry.tracing")

# Process state: None while tracing is off (the common case, checked first everywhere).
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_propagator: TraceContextTextMapPropagator | None = None
EXPORT_PATH = "/v1/traces"
# Probes and scrapes arrive every few seconds from every kubelet and Prometheus: spans of them would
# bury the traces someone looks for.
UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def enabled() -> bool:
    return _tracer is not None


def parse_headers(raw: str) -> dict[str, str]:
    """'k1=v1,k2=v2' (OTEL_EXPORTER_OTLP_HEADERS format; values may be percent-encoded)."""
    headers = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("tracing.headers: expected 'key=value' pairs separated by commas")
        headers[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return headers


def configure(settings: TracingSettings, *, version: str, exporter: SpanExporter | None = None) -> None:
    """Set up tracing for this process (a gunicorn worker), or leave it off. ``exporter``: tests."""
    global _tracer, _provider, _propagator
    shutdown()
    if not settings.enabled:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if exporter is None:
        headers = parse_headers(settings.headers.get_secret_value()) if settings.headers else None
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint.rstrip("/") + EXPORT_PATH, headers=headers, timeout=settings.timeout_s
        )
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES (e.g. k8s.pod.name from the downward API).
    resource = Resource.create({"service.name": settings.service_name, "service.version": version})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("ferry", version)
    _propagator = TraceContextTextMapPropagator()
    log.info("tracing_enabled", endpoint=settings.endpoint, sample_ratio=settings.sample_ratio)


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is buffered (bounded by ``timeout_s``) and turn tracing off."""
    global _tracer, _provider, _propagator
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def _hex(trace_id: int) -> str:
    return format(trace_id, "032x")


# -- the request (server span) -----------------------------------------------------------------
class ServerSpan:
    """The span of one HTTP request, current in its context until ``end``. ``trace_id``: for the access
    line and the exemplar (None when tracing is off: the caller keeps its own)."""

    __slots__ = ("_method", "_span", "_token", "trace_id")

    def __init__(
        self, span: Span | None = None, token: object = None, trace_id: str | None = None, method: str = ""
    ) -> None:
        self._span = span
        self._token = token
        self._method = method
        self.trace_id = trace_id

    def end(self, route: str, status: int) -> None:
        """Name the span after the matched route template, record the status, end it, and make the
        caller's context current again. Call once, from the context that started it."""
        span = self._span
        if span is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span.update_name(f"{self._method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a server span is an error only for 5xx (4xx are the client's)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(self._token)  # type: ignore[arg-type]


NOOP_SERVER_SPAN = ServerSpan()


def server_span(method: str, path: str, headers: Mapping[bytes, bytes]) -> ServerSpan:
    """Start the request's span, a child of the caller's W3C ``traceparent`` (when valid), and make it
    current. Returns ``NOOP_SERVER_SPAN`` when tracing is off. The request path calls this once per
    request on arrival and ``.end(route_template, status)`` once when the response is done."""
    tracer = _tracer
    if tracer is None or path in UNTRACED_PATHS:
        return NOOP_SERVER_SPAN
    from opentelemetry import context, trace

    assert _propagator is not None
    carrier = {}
    for name in (b"traceparent", b"tracestate"):
        value = headers.get(name)
        if value is not None:
            carrier[name.decode()] = value.decode("latin-1")
    parent = _propagator.extract(carrier) if carrier else None
    span = tracer.start_span(
        method,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return ServerSpan(span, token, _hex(span.get_span_context().trace_id), method)


# -- inference: queue wait and model call --------------------------------------------------------
def capture() -> Context | None:
    """The current trace context, kept by work that continues elsewhere (a queued request); None when
    tracing is off or no span is current."""
    if _tracer is None:
        return None
    from opentelemetry import context, trace

    current = context.get_current()
    return current if trace.get_current_span(current).get_span_context().is_valid else None


def now_ns() -> int:
    return time.time_ns()


def queue_wait(parent: Context, started_ns: int, ended_ns: int) -> None:
    """Record a request's wait for a model call, after the fact."""
    tracer = _tracer
    if tracer is None:
        return
    span = tracer.start_span("queue wait", context=parent, start_time=started_ns)
    span.end(end_time=ended_ns)


class ModelCallSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def end(self, failed: int, error: BaseException | None = None) -> None:
        """``failed``: requests of the call answered with an error."""
        span = self._span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("ferry.requests_failed", failed)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} request(s) failed"))
        span.end()


NOOP_MODEL_CALL = ModelCallSpan(None)


def model_call(parents: Sequence[Context | None], *, model: str, rows: int) -> ModelCallSpan:
    """Start the span of one model call for the requests whose contexts are ``parents`` (oldest first)."""
    tracer = _tracer
    if tracer is None:
        return NOOP_MODEL_CALL
    traced = [p for p in parents if p is not None]
    if not traced:
        return NOOP_MODEL_CALL
    from opentelemetry import trace

    links = [trace.Link(trace.get_current_span(p).get_span_context()) for p in traced]
    span = tracer.start_span(
        "model call",
        context=traced[0],
        links=links,
        attributes={"ferry.model": model, "ferry.rows": rows, "ferry.requests": len(parents)},
    )
    return ModelCallSpan(span)


# -- jobs and callbacks ------------------------------------------------------------------------
def traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` (stored with a job at submission); None when off."""
    if _tracer is None:
        return None
    assert _propagator is not None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing headers; nothing when off."""
    if _tracer is None:
        return
    assert _propagator is not None
    _propagator.inject(headers)


Attributes = Mapping[str, str | int | float | bool]


class SpanHandle:
    """What a ``span`` block may add to its span."""

    __slots__ = ("_span", "trace_id")

    def __init__(self, span: Span | None) -> None:
        self._span = span
        self.trace_id = None if span is None else _hex(span.get_span_context().trace_id)

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, description))


NOOP_HANDLE = SpanHandle(None)


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    client: bool = False,
    attributes: Attributes | None = None,
) -> Iterator[SpanHandle]:
    """A span current for the block: a child of the ``traceparent`` string ``parent`` (a job's), else of
    the current span. ``client``: an outgoing call (the callback POST)."""
    tracer = _tracer
    if tracer is None:
        yield NOOP_HANDLE
        return
    from opentelemetry import trace

    assert _propagator is not None
    context = _propagator.extract({"traceparent": parent}) if parent else None
    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    with tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield SpanHandle(current)
