"""The job document and every transition it can make (jobs/document.py, jobs/transitions.py)."""

from __future__ import annotations

import dataclasses

import pytest

from ferry.jobs import transitions as t
from ferry.jobs.document import (
    CallbackStatus,
    Index,
    Job,
    JobError,
    ModelRef,
    Status,
    decode,
    encode,
    index_of,
    new_job,
    public,
)

T0 = 1_000_000.0
MODEL = ModelRef(name="m", version="1")


def job(callback: str | None = "https://example.com/h") -> Job:
    return new_job(
        now=T0,
        records=2,
        callback_url=callback,
        metadata=None,
        idempotency_key="k",
        request_hash="h",
        request_id="r",
        model=MODEL,
    )


def claimed(doc: Job, owner: str = "a", now: float = T0, lease_s: float = 10, max_attempts: int = 2) -> Job:
    out = t.claim(doc, owner=owner, now=now, lease_s=lease_s, max_attempts=max_attempts, ttl_s=60)
    assert out is not None
    return out


def succeeded(doc: Job, now: float = T0) -> Job:
    out = t.succeed(claimed(doc), owner="a", now=now, result={"predictions": []}, ttl_s=60)
    assert out is not None
    return out


def statuses(doc: Job) -> list[str]:
    return [h.status for h in doc.history]


def test_a_queued_job_is_claimed_and_its_index_follows() -> None:
    doc = job()
    assert index_of(doc) == Index(run_at=T0, queued_since=T0)
    assert t.run_kind(doc) is t.RunKind.FIRST
    running = claimed(doc)
    assert running.status is Status.RUNNING and running.attempts == 1 and running.runner == "a"
    assert index_of(running) == Index(run_at=T0 + 10)
    assert doc.status is Status.QUEUED and doc.attempts == 0, "transitions never change their input"


def test_documents_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        job().status = Status.RUNNING  # type: ignore[misc]


def test_a_running_job_is_not_taken_until_its_lease_expires() -> None:
    running = claimed(job())
    assert t.claim(running, owner="b", now=T0 + 9, lease_s=10, max_attempts=2, ttl_s=60) is None
    assert t.run_kind(running) is t.RunKind.RECLAIM
    again = claimed(running, owner="b", now=T0 + 10)
    assert again.runner == "b" and again.attempts == 2
    assert statuses(again) == ["queued", "running", "lost", "running"]
    assert again.history[2].runner == "a", "the lost entry names the runner that was lost"


def test_a_job_that_lost_its_runners_max_attempts_times_fails() -> None:
    twice = claimed(claimed(job()), owner="b", now=T0 + 10)
    failed = t.claim(twice, owner="c", now=T0 + 20, lease_s=10, max_attempts=2, ttl_s=60)
    assert failed is not None and failed.status is Status.FAILED
    assert failed.error == JobError(code="attempts_exhausted", message="runners were lost 2 times")
    assert failed.callback is not None and failed.callback.status is CallbackStatus.PENDING, "its callback is due"


def test_only_the_lease_holder_records_and_only_once() -> None:
    running = claimed(job())
    assert t.succeed(running, owner="b", now=T0 + 1, result={"predictions": []}, ttl_s=60) is None
    done = t.succeed(running, owner="a", now=T0 + 1, result={"predictions": []}, ttl_s=60)
    assert done is not None and done.status is Status.SUCCEEDED
    error = JobError(code="model_error", message="x")
    assert t.fail(done, owner="a", now=T0 + 2, error=error, ttl_s=60) is None
    assert [s for s in statuses(done) if Status(s).terminal] == ["succeeded"]
    assert index_of(done) == Index(callback_at=T0 + 1, expires_at=T0 + 61)


def test_failure_records_its_code_in_the_history() -> None:
    error = JobError(code="model_error", message="boom")
    failed = t.fail(claimed(job()), owner="a", now=T0 + 1, error=error, ttl_s=60)
    assert failed is not None and failed.error == error and failed.result is None
    assert failed.history[-1].code == "model_error"


def test_release_gives_the_job_back_without_spending_an_attempt() -> None:
    running = claimed(job())
    released = t.release(running, owner="a", now=T0 + 1)
    assert released is not None and released.status is Status.QUEUED and released.attempts == 0
    assert released.history[-1].code == "runner_stopped"
    assert t.release(running, owner="b", now=T0 + 1) is None


def test_requeue_delays_the_next_run() -> None:
    running = claimed(job())
    again = t.requeue(running, owner="a", now=T0 + 1, delay_s=5, reason=JobError(code="deadline_exceeded", message=""))
    assert again is not None and index_of(again).run_at == T0 + 6
    assert t.claim(again, owner="b", now=T0 + 2, lease_s=10, max_attempts=3, ttl_s=60) is None
    assert t.run_kind(again) is t.RunKind.RETRY
    assert claimed(again, owner="b", now=T0 + 6, max_attempts=3).attempts == 2


def test_only_queued_jobs_cancel() -> None:
    canceled = t.cancel(job(), now=T0, ttl_s=60)
    assert canceled is not None and canceled.status is Status.CANCELED
    assert t.cancel(claimed(job()), now=T0, ttl_s=60) is None
    assert t.cancel(canceled, now=T0, ttl_s=60) is None


@pytest.mark.parametrize(
    ("outcome", "next_at", "status", "due"),
    [
        (t.Delivery.DELIVERED, None, CallbackStatus.DELIVERED, None),
        (t.Delivery.RETRY, T0 + 30, CallbackStatus.PENDING, T0 + 30),
        (t.Delivery.RETRY, None, CallbackStatus.DEAD_LETTER, None),
        (t.Delivery.REJECTED, None, CallbackStatus.DEAD_LETTER, None),
    ],
)
def test_callback_attempts(
    outcome: t.Delivery, next_at: float | None, status: CallbackStatus, due: float | None
) -> None:
    leased = t.claim_callback(succeeded(job()), now=T0, lease_s=15)
    assert leased is not None and index_of(leased).callback_at == T0 + 15
    assert t.claim_callback(leased, now=T0 + 1, lease_s=15) is None, "a leased callback is not taken twice"
    after = t.callback_attempted(leased, now=T0 + 1, outcome=outcome, status_code=None, error=None, next_at=next_at)
    assert after is not None and after.callback is not None
    assert after.callback.status is status and after.callback.attempts == 1
    assert index_of(after).callback_at == due


def test_redeliver_keeps_the_webhook_id_and_resets_the_budget() -> None:
    done = succeeded(job())
    assert t.redeliver(done, now=T0, ttl_s=60) is None, "still pending: nothing to redeliver"
    dead = t.callback_attempted(
        done, now=T0 + 1, outcome=t.Delivery.REJECTED, status_code=410, error=None, next_at=None
    )
    assert dead is not None
    again = t.redeliver(dead, now=T0 + 100, ttl_s=60)
    assert again is not None and again.callback is not None and done.callback is not None
    assert again.callback.webhook_id == done.callback.webhook_id
    assert (again.callback.status, again.callback.attempts, again.callback.redeliveries) == (
        CallbackStatus.PENDING,
        0,
        1,
    )
    assert again.expires_at == T0 + 160, "a redelivered job outlives its delivery"
    assert t.redeliver(job(callback=None), now=T0, ttl_s=60) is None


def test_the_stored_form_round_trips() -> None:
    doc = succeeded(job())
    assert decode(encode(doc)) == doc


def test_public_view_hides_scheduling_and_formats_times() -> None:
    view = public(claimed(job()))
    assert set(view) == {
        "id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "expires_at",
        "records",
        "attempts",
        "runner",
        "result",
        "error",
        "metadata",
        "model",
        "request_id",
        "idempotency_key",
        "callback",
        "history",
    }
    assert view["created_at"] == "1970-01-12T13:46:40.000Z"
    assert "due_at" not in view["callback"]
    assert view["history"][1] == {"status": "running", "at": "1970-01-12T13:46:40.000Z", "runner": "a", "attempt": 1}
