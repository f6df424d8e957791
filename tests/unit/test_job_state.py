"""The job state machine (jobs/state.py): every transition, as pure functions."""

from __future__ import annotations

import pytest

from ferry.jobs import state

T0 = 1_000_000.0


def job(callback: str | None = "https://example.com/h") -> state.Doc:
    doc = state.new_job(
        now=T0,
        records=2,
        callback_url=callback,
        metadata=None,
        idempotency_key="k",
        request_hash="h",
        request_id="r",
        model={"name": "m", "version": "1"},
    )
    return state.with_internal(doc, T0)


def claimed(doc: state.Doc, owner: str = "a", now: float = T0, lease_s: float = 10) -> state.Doc:
    out = state.claim(doc, owner=owner, now=now, lease_s=lease_s, max_attempts=2, ttl_s=60)
    assert out is not None
    return out[0]


def statuses(doc: state.Doc) -> list[str]:
    return [h["status"] for h in doc["history"]]


def test_a_queued_job_is_claimed_and_its_index_follows() -> None:
    doc = job()
    assert state.index_of(doc) == state.Index(run_at=T0, queued_since=T0)
    out = state.claim(doc, owner="a", now=T0, lease_s=10, max_attempts=2, ttl_s=60)
    assert out is not None and out[1] == "first"
    running = out[0]
    assert running["status"] == "running" and running["attempts"] == 1 and running["runner"] == "a"
    assert state.index_of(running) == state.Index(run_at=T0 + 10)
    assert doc["status"] == "queued", "transitions never mutate their input"


def test_a_running_job_is_not_taken_until_its_lease_expires() -> None:
    running = claimed(job())
    assert state.claim(running, owner="b", now=T0 + 9, lease_s=10, max_attempts=2, ttl_s=60) is None
    out = state.claim(running, owner="b", now=T0 + 10, lease_s=10, max_attempts=2, ttl_s=60)
    assert out is not None and out[1] == "reclaim"
    assert out[0]["runner"] == "b" and out[0]["attempts"] == 2
    assert statuses(out[0]) == ["queued", "running", "lost", "running"]


def test_a_job_that_lost_its_runners_max_attempts_times_fails() -> None:
    twice = claimed(claimed(job()), owner="b", now=T0 + 10)
    out = state.claim(twice, owner="c", now=T0 + 20, lease_s=10, max_attempts=2, ttl_s=60)
    assert out is not None
    failed = out[0]
    assert failed["status"] == "failed" and failed["error"]["code"] == "attempts_exhausted"
    assert failed["callback"]["status"] == "pending", "a failed job's callback is scheduled too"


def test_only_the_lease_holder_completes_and_only_once() -> None:
    running = claimed(job())
    assert state.complete(running, owner="b", now=T0 + 1, status="succeeded", ttl_s=60) is None
    done = state.complete(running, owner="a", now=T0 + 1, status="succeeded", result={"predictions": []}, ttl_s=60)
    assert done is not None and done["status"] == "succeeded"
    assert state.complete(done, owner="a", now=T0 + 2, status="failed", ttl_s=60) is None
    assert [s for s in statuses(done) if s in state.TERMINAL] == ["succeeded"]
    assert state.index_of(done) == state.Index(callback_at=T0 + 1, expires_at=T0 + 61)


def test_release_gives_the_job_back_without_spending_an_attempt() -> None:
    running = claimed(job())
    released = state.release(running, owner="a", now=T0 + 1)
    assert released is not None and released["status"] == "queued" and released["attempts"] == 0
    assert state.release(running, owner="b", now=T0 + 1) is None


def test_requeue_delays_the_next_run() -> None:
    running = claimed(job())
    again = state.requeue(running, owner="a", now=T0 + 1, delay_s=5, reason={"code": "deadline_exceeded"})
    assert again is not None and state.index_of(again).run_at == T0 + 6
    assert state.claim(again, owner="b", now=T0 + 2, lease_s=10, max_attempts=3, ttl_s=60) is None
    out = state.claim(again, owner="b", now=T0 + 6, lease_s=10, max_attempts=3, ttl_s=60)
    assert out is not None and out[1] == "retry"


def test_only_queued_jobs_cancel() -> None:
    canceled = state.cancel(job(), now=T0, ttl_s=60)
    assert canceled is not None and canceled["status"] == "canceled"
    assert state.cancel(claimed(job()), now=T0, ttl_s=60) is None
    assert state.cancel(canceled, now=T0, ttl_s=60) is None


@pytest.mark.parametrize(
    ("outcome", "next_at", "status", "due"),
    [
        ("delivered", None, "delivered", None),
        ("retry", T0 + 30, "pending", T0 + 30),
        ("retry", None, "dead_letter", None),
        ("rejected", None, "dead_letter", None),
    ],
)
def test_callback_attempts(outcome: str, next_at: float | None, status: str, due: float | None) -> None:
    done = state.complete(claimed(job()), owner="a", now=T0, status="succeeded", ttl_s=60)
    assert done is not None
    leased = state.claim_callback(done, now=T0, lease_s=15)
    assert leased is not None and state.index_of(leased).callback_at == T0 + 15
    assert state.claim_callback(leased, now=T0 + 1, lease_s=15) is None, "a leased callback is not taken twice"
    after = state.callback_attempted(leased, now=T0 + 1, outcome=outcome, status_code=None, error=None, next_at=next_at)
    assert after["callback"]["status"] == status and after["callback"]["attempts"] == 1
    assert state.index_of(after).callback_at == due


def test_redeliver_keeps_the_webhook_id_and_resets_the_budget() -> None:
    done = state.complete(claimed(job()), owner="a", now=T0, status="succeeded", ttl_s=60)
    assert done is not None
    assert state.redeliver(done, now=T0, ttl_s=60) is None, "still pending: nothing to redeliver"
    dead = state.callback_attempted(done, now=T0 + 1, outcome="rejected", status_code=410, error=None, next_at=None)
    again = state.redeliver(dead, now=T0 + 100, ttl_s=60)
    assert again is not None
    assert again["callback"]["webhook_id"] == done["callback"]["webhook_id"]
    assert (again["callback"]["status"], again["callback"]["attempts"], again["callback"]["redeliveries"]) == (
        "pending",
        0,
        1,
    )
    assert again["expires_at"] == T0 + 160, "a redelivered job outlives its delivery"
    assert state.redeliver(job(callback=None), now=T0, ttl_s=60) is None


def test_public_view_hides_internals_and_formats_times() -> None:
    view = state.public(claimed(job()))
    assert not [k for k in view if k.startswith("_")] and "request_hash" not in view
    assert view["created_at"] == "1970-01-12T13:46:40.000Z"
    assert not [k for k in view["callback"] if k.startswith("_")]
