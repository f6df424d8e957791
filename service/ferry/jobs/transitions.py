"""Every change a job can go through, as pure functions of the document.

Each takes the current ``Job`` and returns the next one, or None when the change does not apply in
the job's state (a runner that lost its lease cannot record a result; only a queued job can be
canceled). None of them reads a clock or mutates its input: ``JobStore.update`` applies them with a
compare-and-set, again on a fresh read if another process wrote first.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any

from ferry.jobs.document import (
    LOST,
    CallbackStatus,
    HistoryEntry,
    Job,
    JobError,
    Status,
)


class RunKind(enum.StrEnum):
    """Why a runner took a job (the ``ferry_job_runs_total`` label)."""

    FIRST = "first"
    RETRY = "retry"  # queued again after the model was unavailable
    RECLAIM = "reclaim"  # its previous runner was lost (lease expired)


def _entry(job: Job, entry: HistoryEntry) -> tuple[HistoryEntry, ...]:
    return (*job.history, entry)


def takeable(job: Job, now: float) -> bool:
    """Queued and due, or running with an expired lease (its runner died)."""
    if job.status is Status.QUEUED:
        return (job.available_at or 0) <= now
    return job.status is Status.RUNNING and (job.lease_until or 0) <= now


def run_kind(job: Job) -> RunKind:
    """The kind of run a runner starts when it takes ``job`` (as it was before the claim)."""
    if job.status is Status.RUNNING:
        return RunKind.RECLAIM
    return RunKind.FIRST if job.attempts == 0 else RunKind.RETRY


def claim(job: Job, *, owner: str, now: float, lease_s: float, max_attempts: int, ttl_s: float) -> Job | None:
    """A runner takes the job: queued and due, or running with an expired lease (its runner died).
    A reclaimed job that used all its attempts fails instead of running again."""
    if not takeable(job, now):
        return None
    if run_kind(job) is RunKind.RECLAIM:
        job = replace(job, history=_entry(job, HistoryEntry(status=LOST, at=now, runner=job.runner)))
        if job.attempts >= max_attempts:
            error = JobError(code="attempts_exhausted", message=f"runners were lost {max_attempts} times")
            return _finish(job, now=now, status=Status.FAILED, error=error, ttl_s=ttl_s)
    attempt = job.attempts + 1
    return replace(
        job,
        status=Status.RUNNING,
        attempts=attempt,
        runner=owner,
        started_at=now,
        lease_until=now + lease_s,
        history=_entry(job, HistoryEntry(status=Status.RUNNING, at=now, runner=owner, attempt=attempt)),
    )


def _holds(job: Job, owner: str) -> bool:
    return job.status is Status.RUNNING and job.runner == owner


def renew(job: Job, *, owner: str, now: float, lease_s: float) -> Job | None:
    if not _holds(job, owner):
        return None
    return replace(job, lease_until=now + lease_s)


def _finish(
    job: Job, *, now: float, status: Status, ttl_s: float, result: dict[str, Any] | None = None, error: JobError | None
) -> Job:
    """The one way into a terminal state; schedules the callback."""
    callback = job.callback
    if callback is not None:
        callback = replace(callback, status=CallbackStatus.PENDING, due_at=now, next_attempt_at=now)
    return replace(
        job,
        status=status,
        result=result,
        error=error,
        finished_at=now,
        lease_until=None,
        expires_at=now + ttl_s,
        callback=callback,
        history=_entry(job, HistoryEntry(status=status, at=now, code=error.code if error else None)),
    )


def succeed(job: Job, *, owner: str, now: float, result: dict[str, Any], ttl_s: float) -> Job | None:
    """The runner holding the lease records the result; a runner that lost its lease cannot."""
    if not _holds(job, owner):
        return None
    return _finish(job, now=now, status=Status.SUCCEEDED, result=result, error=None, ttl_s=ttl_s)


def fail(job: Job, *, owner: str, now: float, error: JobError, ttl_s: float) -> Job | None:
    if not _holds(job, owner):
        return None
    return _finish(job, now=now, status=Status.FAILED, error=error, ttl_s=ttl_s)


def _back_to_queue(job: Job, *, now: float, available_at: float, attempts: int, code: str) -> Job:
    return replace(
        job,
        status=Status.QUEUED,
        runner=None,
        lease_until=None,
        available_at=available_at,
        attempts=attempts,
        history=_entry(job, HistoryEntry(status=Status.QUEUED, at=now, code=code)),
    )


def requeue(job: Job, *, owner: str, now: float, delay_s: float, reason: JobError) -> Job | None:
    """Give the job back (the model was unavailable for the whole run); it runs again later."""
    if not _holds(job, owner):
        return None
    return _back_to_queue(job, now=now, available_at=now + delay_s, attempts=job.attempts, code=reason.code)


def release(job: Job, *, owner: str, now: float) -> Job | None:
    """A runner stopping gracefully gives its job back at once; the cut-short run does not count."""
    if not _holds(job, owner):
        return None
    return _back_to_queue(job, now=now, available_at=now, attempts=max(0, job.attempts - 1), code="runner_stopped")


def cancel(job: Job, *, now: float, ttl_s: float) -> Job | None:
    if job.status is not Status.QUEUED:
        return None
    error = JobError(code="canceled", message="canceled by the client")
    return _finish(job, now=now, status=Status.CANCELED, error=error, ttl_s=ttl_s)


def claim_callback(job: Job, *, now: float, lease_s: float) -> Job | None:
    """A deliverer takes a due callback for one attempt; a deliverer that dies leaves it due again
    when ``lease_s`` has passed."""
    callback = job.callback
    if callback is None or callback.status is not CallbackStatus.PENDING or (callback.due_at or 0) > now:
        return None
    return replace(job, callback=replace(callback, due_at=now + lease_s))


class Delivery(enum.StrEnum):
    """What one callback attempt did (the ``ferry_callback_attempts_total`` label)."""

    DELIVERED = "delivered"
    RETRY = "retry"  # the receiver failed in a way worth retrying (5xx, 408, 429, timeout, network)
    REJECTED = "rejected"  # any other answer: retrying would not help
    FORBIDDEN = "forbidden"  # the URL now resolves to a refused address


def callback_attempted(
    job: Job, *, now: float, outcome: Delivery, status_code: int | None, error: str | None, next_at: float | None
) -> Job | None:
    """Record one delivery attempt: delivered, retried at ``next_at``, or dead-lettered (next_at None)."""
    callback = job.callback
    if callback is None:
        return None
    callback = replace(
        callback, attempts=callback.attempts + 1, last_status_code=status_code, last_error=error, last_attempt_at=now
    )
    if outcome is Delivery.DELIVERED:
        callback = replace(
            callback, status=CallbackStatus.DELIVERED, delivered_at=now, next_attempt_at=None, due_at=None
        )
    elif next_at is not None:
        callback = replace(callback, status=CallbackStatus.PENDING, next_attempt_at=next_at, due_at=next_at)
    else:
        callback = replace(callback, status=CallbackStatus.DEAD_LETTER, next_attempt_at=None, due_at=None)
    return replace(job, callback=callback)


def redeliver(job: Job, *, now: float, ttl_s: float) -> Job | None:
    """Deliver again (an operator's decision): same webhook-id, fresh attempt budget."""
    callback = job.callback
    if callback is None or not job.status.terminal or callback.status is CallbackStatus.PENDING:
        return None
    return replace(
        job,
        callback=replace(
            callback,
            status=CallbackStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            due_at=now,
            redeliveries=callback.redeliveries + 1,
        ),
        expires_at=max(job.expires_at or 0, now + ttl_s),  # keep the job until delivery can finish
    )
