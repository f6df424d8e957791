"""A job as one typed, immutable document, how it is stored and what clients see of it.

Both stores keep the same JSON document (``encode``/``decode``) and differ only in how they index
and swap it. Scheduling fields (``available_at``, ``lease_until``, ``Callback.due_at``) are ordinary
typed fields of the document; ``public`` leaves them out of what the API returns.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from ferry_client.protocol import TERMINAL_JOB_STATUSES


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# The statuses a job never leaves: the protocol's list, which clients share.
TERMINAL: frozenset[Status] = frozenset(Status(status) for status in TERMINAL_JOB_STATUSES)
# A history entry may also say that the job's runner was lost (its lease ran out): not a job status.
LOST = "lost"


class CallbackStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    status: str  # a Status value, or LOST
    at: float
    runner: str | None = None
    attempt: int | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Callback:
    url: str
    webhook_id: str  # Standard Webhooks 'webhook-id': the same on every attempt and redelivery
    status: CallbackStatus | None = None  # None until the job has finished
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None
    redeliveries: int = 0
    # When a deliverer may take it: the next attempt's time, or the end of a running attempt's lease
    # (a deliverer that dies leaves it due again then). None once delivered or dead-lettered.
    due_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: str
    status: Status
    created_at: float
    records: int
    model: ModelRef
    request_id: str
    request_hash: str  # of the submitted body: an Idempotency-Key replay must carry the same
    idempotency_key: str | None = None
    owner: str | None = None  # the principal that submitted it (None: authentication off)
    metadata: dict[str, Any]
    callback: Callback | None = None
    history: tuple[HistoryEntry, ...]
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # finished jobs only: when the store may purge it
    attempts: int = 0
    runner: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    # Scheduling: a queued job may be taken from ``available_at``; a running job's runner holds it
    # until ``lease_until`` (a runner that died stops renewing, and the job is taken again after).
    available_at: float | None = None
    lease_until: float | None = None
    # W3C traceparent of the submitting request's span (tracing on): the job's run and callback
    # attempts join that trace, in whichever process runs them.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Index:
    """Where a document sits in the store's indexes (None: not in that index), derived from it alone.

    ``run_at``: when a runner may take it (a queued job's start time, a running job's lease end).
    ``queued_since``: submission time while queued (queue depth and oldest age).
    ``callback_at``: when a deliverer may take its callback (due time, or a delivery lease end).
    ``expires_at``: when the store may purge it (finished jobs only).
    """

    run_at: float | None = None
    queued_since: float | None = None
    callback_at: float | None = None
    expires_at: float | None = None


def new_job(
    *,
    now: float,
    records: int,
    callback_url: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    request_hash: str,
    request_id: str,
    model: ModelRef,
    owner: str | None = None,
    traceparent: str | None = None,
) -> Job:
    job_id = uuid.uuid4().hex
    return Job(
        id=job_id,
        status=Status.QUEUED,
        created_at=now,
        records=records,
        model=model,
        request_id=request_id,
        request_hash=request_hash,
        idempotency_key=idempotency_key,
        owner=owner,
        metadata=metadata or {},
        callback=None if callback_url is None else Callback(url=callback_url, webhook_id=f"msg_{job_id}"),
        history=(HistoryEntry(status=Status.QUEUED, at=now),),
        available_at=now,
        traceparent=traceparent,
    )


def idempotency_scope(job: Job) -> str | None:
    """The key the store deduplicates on: the Idempotency-Key within its owner's namespace, so two
    principals using the same key get two jobs. The key has no spaces (its header pattern), so
    ``owner + " " + key`` splits one way only."""
    if job.idempotency_key is None:
        return None
    return job.idempotency_key if job.owner is None else f"{job.owner} {job.idempotency_key}"


def index_of(job: Job) -> Index:
    callback = job.callback
    return Index(
        run_at=job.available_at
        if job.status is Status.QUEUED
        else job.lease_until
        if job.status is Status.RUNNING
        else None,
        queued_since=job.created_at if job.status is Status.QUEUED else None,
        callback_at=callback.due_at if callback is not None and callback.status is CallbackStatus.PENDING else None,
        expires_at=job.expires_at if job.status.terminal else None,
    )


_JOB = TypeAdapter(Job)


def encode(job: Job) -> bytes:
    return _JOB.dump_json(job)


def decode(raw: bytes | str) -> Job:
    return _JOB.validate_json(raw)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public(job: Job) -> dict[str, Any]:
    """What clients see (``api.schemas.Job``): no scheduling fields, no request hash, RFC 3339 times."""
    callback = job.callback
    return {
        "id": job.id,
        "status": job.status.value,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "records": job.records,
        "attempts": job.attempts,
        "runner": job.runner,
        "result": job.result,
        "error": None if job.error is None else {"code": job.error.code, "message": job.error.message},
        "metadata": job.metadata,
        "model": {"name": job.model.name, "version": job.model.version},
        "request_id": job.request_id,
        "idempotency_key": job.idempotency_key,
        "callback": None
        if callback is None
        else {
            "url": callback.url,
            "webhook_id": callback.webhook_id,
            "status": None if callback.status is None else callback.status.value,
            "attempts": callback.attempts,
            "last_status_code": callback.last_status_code,
            "last_error": callback.last_error,
            "last_attempt_at": iso(callback.last_attempt_at),
            "next_attempt_at": iso(callback.next_attempt_at),
            "delivered_at": iso(callback.delivered_at),
            "redeliveries": callback.redeliveries,
        },
        "history": [_public_entry(entry) for entry in job.history],
    }


def _public_entry(entry: HistoryEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"status": entry.status, "at": iso(entry.at)}
    for key in ("runner", "attempt", "code"):
        value = getattr(entry, key)
        if value is not None:
            out[key] = value
    return out
