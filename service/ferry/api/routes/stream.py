"""Streamed prediction: many records in, one Server-Sent Event per scored chunk out.

``POST /api/v1/predict/stream`` with ``{"records": [...], "chunk_size"?: n}`` answers
``text/event-stream``. The body is validated in full first: invalid input is the usual 4xx JSON error,
never a 200 stream that fails later. Then each chunk of records goes through ``core.predict_records``
(breaker, admission, batching, a fresh deadline per chunk) and is sent the moment it is scored. Every
event's ``id`` is the offset of the first record not answered yet, so a stream can be resumed: the same
body sent again with ``Last-Event-ID: <id>`` scores only the records from that offset on::

    retry: 3000             first, once (the reconnection delay EventSource-like clients adopt)

    event: chunk            one per chunk, in order; id = offset after its last record
    id: 500
    data: {"offset": 0, "predictions": [{"prediction": ..., "probabilities": {...}}, ...]}

    event: summary          last event of a complete stream; id = number of records
    data: {"records", "chunks", "duration_ms", "model": {"name", "version"}, "request_id"}

    event: failed           a chunk failed (model_error, circuit_open, overloaded, deadline_exceeded, ...):
    data: {"code", "message", "offset", "request_id"}    the last event; id = offset of the failed chunk

    event: shutdown         the server is stopping (SIGTERM): sent after the chunk in progress, last event;
    data: {"next_offset", "message"}                      id = next_offset (resend records from there)

    : ping                  comment every stream.heartbeat_s while a chunk is being computed

The failure event is ``failed``, not ``error``: EventSource dispatches its own connection errors as
``error`` events, and a client must tell "the server reported a failed chunk" from "the connection broke".
Exactly one of ``summary``, ``failed`` and ``shutdown`` ends a stream; a stream that ends without one was
cut, and the client resumes it with ``Last-Event-ID``. In a resumed stream offsets stay positions in the
body's records and the summary's ``chunks`` counts the chunks of that response.

A client that disconnects stops the work: the chunk in progress is abandoned (a queued model call is
dropped; a running one finishes in its thread and is discarded) and no further chunk starts.
``ferry_stream_chunks_total{outcome="sent"}`` counts chunks sent and ``{outcome="skipped"}`` the
chunks of the stream that were never sent (client left, server stopped, or a chunk failed), so
sent + skipped is the number of chunks streams were asked for.
"""

import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import Field, create_model

from ferry.api import json_body, sse
from ferry.api.deps import RequestIdDep, deadline_of
from ferry.api.openapi import JSON_BODY, STREAM_EVENTS, event_stream, route_errors
from ferry.api.orjson_route import bounded
from ferry.api.routes.jobs import LAST_EVENT_ID
from ferry.api.routes.predict import model_json
from ferry.api.schemas import StreamBody
from ferry.core import Core
from ferry.errors import BatchTooLarge, CircuitOpen, DeadlineExceeded, FerryError, InvalidInput, ModelNotReady
from ferry.features import json_integer
from ferry.lifecycle import is_draining
from ferry.logging import get_logger
from ferry.resilience.deadline import Deadline

PATH = "/api/v1/predict/stream"
STREAM = "predict"  # label of ferry_sse_streams_open

log = get_logger("ferry.stream")

_EVENTS_DOC = """\
Opens with `retry: 3000`, then one event per scored chunk, as soon as it is scored, then exactly one final event.
Every `id` is the offset of the first record not answered yet:

- `event: chunk`, `id: <offset after the chunk>`, data `{"offset", "predictions": [<as /predict/batch>]}`
- `event: summary` (complete), data `{"records", "chunks", "duration_ms", "model", "request_id"}`
- `event: failed` (a chunk failed; ends the stream), data `{"code", "message", "offset", "request_id"}`
- `event: shutdown` (server stopping; ends the stream), data `{"next_offset", "message"}`

and a `: ping` comment line every `FERRY_STREAM__HEARTBEAT_S` while a chunk is being computed. A stream cut without
a final event is resumed by sending the same body again with `Last-Event-ID` set to the last `id` received."""

_EVENTS_EXAMPLE = (
    "retry: 3000\n\n"
    'event: chunk\nid: 1\ndata: {"offset":0,"predictions":[{"prediction":"stay","probabilities":'
    '{"churn":0.12,"stay":0.88}}]}\n\n'
    ": ping\n\n"
    'event: chunk\nid: 2\ndata: {"offset":1,"predictions":[{"prediction":"churn","probabilities":'
    '{"churn":0.84,"stay":0.16}}]}\n\n'
    'event: summary\nid: 2\ndata: {"records":2,"chunks":2,"duration_ms":4.2,'
    '"model":{"name":"churn","version":"1.0.0"},"request_id":"3f2a..."}\n\n'
)


def max_chunk_size(core: Core) -> int:
    """A chunk is one predict_records call, so it also respects api.max_batch_size."""
    return min(core.settings.stream.chunk_size, core.settings.api.max_batch_size)


def build_router(core: Core) -> APIRouter:
    """The stream route, its request body typed from the served model's card."""
    schema = core.schema
    max_records = core.settings.stream.max_records
    chunk_max = max_chunk_size(core)

    stream_request = create_model(
        "StreamPredictRequest",
        __base__=StreamBody,
        records=(
            schema.unvalidated_list_type,  # validated in the route, in slices: see validate_records
            Field(min_length=1, max_length=max_records, description=f"1 to {max_records} records."),
        ),
        chunk_size=(
            json_integer(ge=1, le=chunk_max) | None,
            Field(None, description=f"Records per chunk (one event each), 1 to {chunk_max}; default {chunk_max}."),
        ),
    )
    stream_request.examples = lambda: [{"records": [schema.example, schema.example], "chunk_size": 1}]
    route_class = bounded(lambda: schema.max_values(max_records) + json_body.SLACK_VALUES)
    router = APIRouter(route_class=route_class, prefix="/api/v1", tags=["predict"])
    deadline_dep = Depends(deadline_of(core))

    @router.post(
        "/predict/stream",
        summary="Predict many records, streamed chunk by chunk as Server-Sent Events",
        description="Validates every record first (errors are the usual JSON 4xx), then scores the records "
        "in chunks and sends each chunk's predictions as an event the moment it is ready. `X-Request-Timeout` "
        "(or the default deadline) applies to each chunk. Resumable: the same body with `Last-Event-ID` (the last "
        "event's `id`) scores only the records from that offset on.",
        response_class=sse.EventStreamResponse,
        # JSON errors, answered before the stream starts; a failure while streaming is an event.
        responses={
            **route_errors(
                PATH, "POST", *JSON_BODY, InvalidInput, BatchTooLarge, CircuitOpen, ModelNotReady, DeadlineExceeded
            ),
            **event_stream(STREAM_EVENTS, _EVENTS_DOC, _EVENTS_EXAMPLE),
        },
    )
    async def predict_stream(
        request: Request,
        body: Annotated[stream_request, Body()],
        request_id: RequestIdDep,
        deadline: Annotated[Deadline, deadline_dep],
        last_event_id: Annotated[str | None, LAST_EVENT_ID] = None,
    ) -> sse.EventStreamResponse:
        resume_at = int(last_event_id) if last_event_id is not None else 0
        if resume_at > len(body.records):
            raise InvalidInput(
                f"Last-Event-ID {resume_at} is past the body's {len(body.records)} records: not this body's stream",
                details=[{"loc": ["header", "last-event-id"], "msg": "offset past the records", "type": "value_error"}],
            )
        records = await core.validate_records(body.records)  # bad records: 422 now, not mid-stream
        core.admit()  # not ready or breaker open: 503 before the stream, not an event in it
        if deadline.expired():  # nothing could be answered in time: 504 now, as the other routes do
            raise DeadlineExceeded()
        started = request.scope.get("state", {}).get("started_monotonic", time.monotonic())
        size = body.chunk_size or chunk_max
        events = _events(core, records, resume_at, size, deadline.budget_s, request_id, started)
        return sse.EventStreamResponse(events, heartbeat_s=core.settings.stream.heartbeat_s)

    return router


async def _events(
    core: Core, records: list[Any], start: int, size: int, budget_s: float, request_id: str, started: float
) -> AsyncIterator[bytes]:
    """The events of ``records[start:]`` (``start`` > 0: a resumed stream). Every id is the offset of the
    first record not answered yet, so Last-Event-ID alone says where to resume."""
    metrics = core.metrics
    total = math.ceil((len(records) - start) / size)
    sent = 0
    outcome = "disconnected"  # unless the stream reaches one of its own ends below
    metrics.sse_streams_open.labels(STREAM).inc()
    try:
        for offset in range(start, len(records), size):
            if is_draining():
                outcome = "shutdown"
                message = "the server is shutting down; send the records from next_offset again"
                yield sse.encode({"next_offset": offset, "message": message}, event="shutdown", id=offset)
                return
            try:
                prediction = await core.predict_records(records[offset : offset + size], Deadline.after(budget_s))
                predictions = prediction.rows()
            except Exception as exc:
                error = exc if isinstance(exc, FerryError) else FerryError()
                if not isinstance(exc, FerryError):
                    log.error("stream_chunk_failed", offset=offset, exc_info=True)
                outcome = "failed"
                metrics.errors.labels(PATH, error.code).inc()
                data = {"code": error.code, "message": error.message, "offset": offset, "request_id": request_id}
                yield sse.encode(data, event="failed", id=offset)
                return
            sent += 1
            metrics.stream_chunks.labels("sent").inc()
            yield sse.encode(
                {"offset": offset, "predictions": predictions}, event="chunk", id=offset + len(predictions)
            )
        outcome = "completed"
        summary = {
            "records": len(records),
            "chunks": total,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "model": model_json(core),
            "request_id": request_id,
        }
        yield sse.encode(summary, event="summary", id=len(records))
    finally:
        metrics.sse_streams_open.labels(STREAM).dec()
        if total > sent:
            metrics.stream_chunks.labels("skipped").inc(total - sent)
        log.info("stream_ended", stream=STREAM, outcome=outcome, chunks=total, sent=sent, request_id=request_id)
