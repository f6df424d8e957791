"""Async jobs: submit (202 + Location), poll, cancel, follow (SSE), redeliver the callback.

No `from __future__ import annotations` here: FastAPI must see the request type built in
`build_router` as an object.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, create_model

from ferry.api import json_body, sse
from ferry.api.auth import PrincipalDep
from ferry.api.deps import RequestIdDep
from ferry.api.openapi import JOB_EVENTS, JSON_BODY, Responses, event_stream, route_errors
from ferry.api.orjson_route import bounded
from ferry.api.schemas import Job, JobBody
from ferry.core import Core
from ferry.errors import (
    BatchTooLarge,
    CallbacksNotConfigured,
    CallbackUrlForbidden,
    IdempotencyKeyReused,
    InvalidInput,
    JobConflict,
    JobNotFound,
    JobQuotaExceeded,
    JobStoreFull,
    JobStoreUnavailable,
    TooManyStreams,
)
from ferry.jobs.service import JobService
from ferry.lifecycle import is_draining
from ferry_client.protocol import TERMINAL_JOB_STATUSES

JOB_ID = Path(
    description="Job id (32 hex characters).", pattern="^[0-9a-f]{32}$", examples=["5f0c8e0b7d3a4f4e9a1c2b3d4e5f6a7b"]
)
# What EventSource sends back when it reconnects: the id of the last event it received. Ids are counts
# (of status changes, or of records answered), so anything else is not from this server: 422.
LAST_EVENT_ID = Header(
    alias="Last-Event-ID",
    pattern="^[0-9]{1,9}$",
    description="The `id` of the last event received (EventSource sends it when it reconnects): only later "
    "events are sent.",
)
PATH = "/api/v1/jobs"
JOB = PATH + "/{job_id}"
# Every route with a job id: a malformed id is a validation error, an unknown one 404, a store down 503.
_ONE_JOB = (InvalidInput, JobNotFound, JobStoreUnavailable)
RESPONSES: dict[str, Responses] = {
    "submit": route_errors(
        PATH,
        "POST",
        *JSON_BODY,
        InvalidInput,
        BatchTooLarge,
        CallbackUrlForbidden,
        CallbacksNotConfigured,
        IdempotencyKeyReused,
        JobQuotaExceeded,
        JobStoreFull,
        JobStoreUnavailable,
    ),
    "get": route_errors(JOB, "GET", *_ONE_JOB),
    "cancel": route_errors(JOB, "DELETE", *_ONE_JOB, JobConflict),
    "redeliver": route_errors(JOB + "/callback/redeliver", "POST", *_ONE_JOB, JobConflict),
    "events": route_errors(JOB + "/events", "GET", *_ONE_JOB, TooManyStreams),
}
_STATUS_EXAMPLE = (
    'event: status\nid: 1\ndata: {"id":"5f0c8e0b7d3a4f4e9a1c2b3d4e5f6a7b","status":"queued",...}\n\n'
    'event: status\nid: 3\ndata: {"id":"5f0c8e0b7d3a4f4e9a1c2b3d4e5f6a7b","status":"succeeded",...}\n\n'
)


def build_router(core: Core, jobs: JobService) -> APIRouter:
    schema = core.schema
    settings = core.settings
    max_records = settings.jobs.max_records
    max_metadata = settings.jobs.max_metadata_bytes

    job_request = create_model(
        "JobRequest",
        __base__=JobBody,
        records=(
            schema.unvalidated_list_type,  # validated in the route, in slices: see validate_records
            Field(min_length=1, max_length=max_records, description=f"1 to {max_records} records."),
        ),
        callback_url=(
            str | None,
            Field(
                None,
                max_length=2048,
                description="https URL that receives the finished job as a signed POST (Standard Webhooks). "
                "Private, loopback and link-local addresses are refused (422 callback_url_forbidden).",
                examples=["https://hooks.example.com/ferry"],
            ),
        ),
        metadata=(
            dict[str, Any] | None,
            Field(None, description=f"Free-form JSON object echoed back on the job (at most {max_metadata} bytes)."),
        ),
    )
    job_request.examples = lambda: [{"records": [schema.example, schema.example], "metadata": {"batch": "2026-11-27"}}]
    job_request.max_metadata_bytes = max_metadata
    # Metadata takes at most one value per byte of its compact JSON.
    route_class = bounded(lambda: schema.max_values(max_records) + max_metadata + json_body.SLACK_VALUES)
    router = APIRouter(route_class=route_class, prefix=PATH, tags=["jobs"])

    @router.post(
        "",
        status_code=202,
        response_model=Job,
        summary="Submit records for asynchronous prediction",
        responses={
            **RESPONSES["submit"],
            202: {
                "description": "Queued (or, for a replayed Idempotency-Key, the job it made)",
                "headers": {
                    "Location": {"description": "The job's URL.", "required": True, "schema": {"type": "string"}},
                    "Idempotent-Replayed": {
                        "description": "`true` when this is the job an earlier request with the same key made.",
                        "schema": {"type": "string", "enum": ["true"]},
                    },
                },
            },
        },
    )
    async def submit(
        body: Annotated[job_request, Body()],
        request_id: RequestIdDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=255,
                pattern=r"^[\x21-\x7e]+$",
                description="Same key (and same body) → the same job, so a retried submit never runs twice. "
                "The same key with another body → 409 idempotency_key_reused. With authentication on, keys are "
                "per principal: two principals using one key get two jobs.",
            ),
        ] = None,
    ) -> Response:
        doc, created = await jobs.submit(
            # Stored as JSON: named-feature records are models, card-less ones plain lists.
            schema.records_adapter.dump_python(await core.validate_records(body.records), mode="json"),
            callback_url=body.callback_url,
            metadata=body.metadata,
            idempotency_key=idempotency_key,
            request_id=request_id,
            model=core.model_ref,
            principal=principal,
        )
        headers = {"location": f"/api/v1/jobs/{doc['id']}"}
        if not created:
            headers["idempotent-replayed"] = "true"
        return _json(doc, 202, headers)

    @router.get(
        "/{job_id}",
        response_model=Job,
        summary="A job: status, result or error, callback delivery",
        responses=RESPONSES["get"],
    )
    async def get_job(job_id: Annotated[str, JOB_ID], principal: PrincipalDep) -> Response:
        return _json(await jobs.get(job_id, principal))

    @router.delete(
        "/{job_id}", response_model=Job, summary="Cancel a job that has not started", responses=RESPONSES["cancel"]
    )
    async def cancel_job(job_id: Annotated[str, JOB_ID], principal: PrincipalDep) -> Response:
        return _json(await jobs.cancel(job_id, principal))

    @router.post(
        "/{job_id}/callback/redeliver",
        status_code=202,
        response_model=Job,
        summary="Deliver a finished job's callback again (after dead-letter), with the same webhook-id",
        responses=RESPONSES["redeliver"],
    )
    async def redeliver(job_id: Annotated[str, JOB_ID], principal: PrincipalDep) -> Response:
        return _json(await jobs.redeliver(job_id, principal), 202)

    @router.get(
        "/{job_id}/events",
        summary="Server-Sent Events: the job at each status change, ending with its terminal state",
        description="Opens with `retry: 3000`. Each `event: status` carries the job; its `id` is the job's number "
        "of status changes so far, so an EventSource that reconnects (it sends the last id as `Last-Event-ID`) "
        "gets only later changes, and once it has seen the terminal state it is answered 204 No Content, which "
        "tells EventSource to stop reconnecting.",
        response_class=StreamingResponse,
        responses={
            **RESPONSES["events"],
            **event_stream(
                JOB_EVENTS,
                "`event: status` with the job document at each status change (`id`: the length of its "
                "history), the last one terminal; `event: shutdown` when the server stops first.",
                _STATUS_EXAMPLE,
            ),
            204: {"description": "Last-Event-ID is at or past the job's terminal event: nothing more will come"},
        },
    )
    async def events(
        job_id: Annotated[str, JOB_ID],
        principal: PrincipalDep,
        last_event_id: Annotated[str | None, LAST_EVENT_ID] = None,
    ) -> Response:
        seen = int(last_event_id) if last_event_id is not None else -1
        release = jobs.followers.reserve()  # 503 too_many_streams beyond the cap, before any work
        try:
            first = await jobs.load(job_id, principal)  # 404 before the stream starts
        except BaseException:
            release()
            raise
        if first.status.terminal and len(first.history) <= seen:
            release()
            return Response(status_code=204)  # EventSource stops reconnecting on 204
        gauge = core.metrics.sse_streams_open.labels("job_events")

        async def stream() -> AsyncIterator[bytes]:
            gauge.inc()
            try:
                last = None
                async for last in jobs.follow(job_id, is_draining, principal, first):
                    event_id = len(last["history"])
                    if event_id > seen:  # the client already has the changes up to Last-Event-ID
                        yield sse.encode(last, event="status", id=event_id)
                if is_draining() and (last is None or last["status"] not in TERMINAL_JOB_STATUSES):
                    yield sse.encode({"message": "server shutting down; reconnect to follow the job"}, event="shutdown")
            finally:
                gauge.dec()
                release()

        return sse.EventStreamResponse(stream(), heartbeat_s=settings.stream.heartbeat_s)

    return router


def _json(doc: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(doc, status_code=status, headers=headers)
