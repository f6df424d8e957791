"""Job runners in process: a fake model, the in-memory store and a virtual clock.

What the integration tests show with real processes (kill -9, two workers, Redis restarts), these
prove for every interleaving that matters, deterministically: leases, reclaim, requeue, hand-back on
stop, refused results, chunking, and exactly one terminal state however runners race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import pytest

from ferry.errors import CircuitOpen, InvalidInput, ModelError
from ferry.inference import Prediction
from ferry.jobs import transitions as t
from ferry.jobs.document import Job, ModelRef, Status, new_job
from ferry.jobs.runner import JobRunners
from ferry.metrics import Metrics
from ferry.resilience.deadline import Deadline
from ferry.settings import JobsSettings
from support.clock import VirtualClock
from support.memory_store import MemoryJobStore

MODEL = ModelRef(name="m", version="1")


class FakeScorer:
    """Scores records as their own value; ``fail`` decides per call what to raise, ``gate`` holds calls."""

    def __init__(self) -> None:
        self.ready = True
        self.calls: list[list[Any]] = []
        self.fail: Callable[[int], Exception | None] = lambda call: None
        self.gate: asyncio.Event | None = None

    def records_from_json(self, raw: bytes) -> list[Any]:
        records = orjson.loads(raw)
        if "bad" in records:
            raise InvalidInput("does not fit", details=[{"loc": ["records", records.index("bad")]}])
        return list(records)

    async def predict_records(self, records: list[Any], deadline: Deadline) -> Prediction:
        self.calls.append(records)
        error = self.fail(len(self.calls))
        if error is not None:
            raise error
        if self.gate is not None:
            await self.gate.wait()
        return Prediction(labels=list(records), probabilities=None, classes=None)


class Rig:
    """One store, one clock, one scorer; runners made on demand (each its own 'process')."""

    def __init__(self, **settings: Any) -> None:
        self.clock = VirtualClock()
        self.store = MemoryJobStore()
        self.scorer = FakeScorer()
        self.metrics = Metrics()
        self.settings = JobsSettings(
            **{"lease_s": 30, "max_attempts": 3, "retry_delay_s": 2, "run_timeout_s": 60, "poll_interval_s": 0.2}
            | settings
        )
        self.runners: list[JobRunners] = []

    def runner(self, name: str = "p1", count: int = 1, chunk_size: int = 2) -> JobRunners:
        runners = JobRunners(
            self.scorer,
            self.store,
            self.settings,
            chunk_size=chunk_size,
            metrics=self.metrics,
            identity=name,
            count=count,
            clock=self.clock,
        )
        self.runners.append(runners)
        return runners

    async def submit(self, records: list[Any]) -> str:
        job = new_job(
            now=self.clock.time(),
            records=len(records),
            callback_url=None,
            metadata=None,
            idempotency_key=None,
            request_hash="h",
            request_id="r",
            model=MODEL,
        )
        await self.store.insert(job, orjson.dumps(records))
        return job.id

    def job(self, job_id: str) -> Job:
        return self.store.jobs[job_id].job

    def finished(self, *job_ids: str) -> Callable[[], bool]:
        return lambda: all(self.job(i).status.terminal for i in job_ids)

    def count(self, name: str, *labels: str) -> float:
        metric = getattr(self.metrics, name)
        return float(metric.labels(*labels)._value.get())


def run(test: Callable[[Rig], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        rig = Rig(**settings)
        try:
            await test(rig)
        finally:
            for runners in rig.runners:
                await runners.stop()

    asyncio.run(main())


def statuses(job: Job) -> list[str]:
    return [h.status for h in job.history]


def test_a_job_runs_in_chunks_and_succeeds_in_order() -> None:
    async def test(rig: Rig) -> None:
        job_id = await rig.submit([1, 2, 3, 4, 5])
        rig.runner(chunk_size=2).start()
        await rig.clock.run_until(rig.finished(job_id), limit_s=5)
        job = rig.job(job_id)
        assert job.status is Status.SUCCEEDED and job.attempts == 1
        assert job.result == {"predictions": [{"prediction": v, "probabilities": None} for v in [1, 2, 3, 4, 5]]}
        assert rig.scorer.calls == [[1, 2], [3, 4], [5]], "chunks of the API's batch limit, in order"
        assert statuses(job) == ["queued", "running", "succeeded"]
        assert rig.count("jobs", "succeeded") == 1 and rig.count("job_runs", "first") == 1

    run(test)


def test_a_model_error_fails_the_job_with_its_code() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.fail = lambda call: ModelError()
        job_id = await rig.submit([1])
        rig.runner().start()
        await rig.clock.run_until(rig.finished(job_id), limit_s=5)
        job = rig.job(job_id)
        assert job.status is Status.FAILED and job.error is not None and job.error.code == "model_error"
        assert rig.count("jobs", "failed") == 1

    run(test)


def test_records_that_no_longer_fit_the_model_fail_as_invalid_records() -> None:
    async def test(rig: Rig) -> None:
        job_id = await rig.submit([1, "bad"])
        rig.runner().start()
        await rig.clock.run_until(rig.finished(job_id), limit_s=5)
        job = rig.job(job_id)
        assert job.error is not None and job.error.code == "invalid_records" and "records" in job.error.message
        assert rig.scorer.calls == [], "the model never saw them"

    run(test)


def test_a_briefly_open_breaker_is_waited_out_within_the_run() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.fail = lambda call: CircuitOpen(retry_after_s=3) if call <= 2 else None
        job_id = await rig.submit([1])
        rig.runner().start()
        took = await rig.clock.run_until(rig.finished(job_id), limit_s=30)
        job = rig.job(job_id)
        assert job.status is Status.SUCCEEDED and job.attempts == 1
        assert 6 <= took < 7, "it waited out Retry-After twice, then ran"

    run(test)


def test_a_model_unavailable_for_whole_runs_is_requeued_then_fails_attempts_exhausted() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.fail = lambda call: CircuitOpen(retry_after_s=5)
        job_id = await rig.submit([1])
        rig.runner().start()
        await rig.clock.run_until(
            lambda: rig.job(job_id).status is Status.QUEUED and rig.job(job_id).attempts, limit_s=70
        )
        requeued = rig.job(job_id)
        assert requeued.history[-1].code == "deadline_exceeded"
        assert requeued.available_at == pytest.approx(rig.clock.time() + 2, abs=0.1), "retried after retry_delay_s"
        await rig.clock.run_until(rig.finished(job_id), limit_s=200, step_s=0.5)
        job = rig.job(job_id)
        assert job.status is Status.FAILED and job.error is not None and job.error.code == "attempts_exhausted"
        assert job.attempts == 3 and rig.count("job_runs", "retry") == 2

    run(test, run_timeout_s=20)


def test_a_long_run_keeps_its_lease_so_no_other_runner_takes_it() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.gate = asyncio.Event()
        job_id = await rig.submit([1])
        rig.runner("p1").start()
        await rig.clock.run_until(lambda: rig.job(job_id).status is Status.RUNNING, limit_s=1)
        rig.runner("p2").start()
        await rig.clock.advance(100)  # more than three leases
        assert rig.job(job_id).runner == "p1:0" and rig.count("job_runs", "reclaim") == 0
        assert rig.job(job_id).lease_until is not None and rig.job(job_id).lease_until > rig.clock.time()
        rig.scorer.gate.set()
        await rig.clock.run_until(rig.finished(job_id), limit_s=1)
        assert rig.job(job_id).attempts == 1 and len(rig.scorer.calls) == 1

    run(test)


def test_a_job_whose_runner_died_is_reclaimed_when_its_lease_expires() -> None:
    async def test(rig: Rig) -> None:
        job_id = await rig.submit([1])
        # A runner of another process claims it and dies (kill -9): no renewal, no hand-back.
        await rig.store.update(
            job_id,
            lambda job: t.claim(job, owner="dead:0", now=rig.clock.time(), lease_s=30, max_attempts=3, ttl_s=60),
        )
        rig.runner("p2").start()
        await rig.clock.advance(29)
        assert rig.job(job_id).runner == "dead:0", "not before the lease ends"
        took = await rig.clock.run_until(rig.finished(job_id), limit_s=5)
        job = rig.job(job_id)
        assert job.status is Status.SUCCEEDED and job.attempts == 2 and took < 2
        assert statuses(job) == ["queued", "running", "lost", "running", "succeeded"]
        assert rig.count("job_runs", "reclaim") == 1

    run(test)


def test_a_stopping_runner_hands_its_job_back_at_once() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.gate = asyncio.Event()
        job_id = await rig.submit([1])
        first = rig.runner("p1")
        first.start()
        await rig.clock.run_until(lambda: rig.job(job_id).status is Status.RUNNING, limit_s=1)
        await first.stop()
        job = rig.job(job_id)
        assert job.status is Status.QUEUED and job.attempts == 0, "the cut-short run does not count"
        assert job.history[-1].code == "runner_stopped"
        rig.scorer.gate.set()
        rig.runner("p2").start()
        took = await rig.clock.run_until(rig.finished(job_id), limit_s=5)
        assert took < 1, "taken again at once, not after a lease"
        assert rig.job(job_id).attempts == 1

    run(test)


def test_a_runner_that_lost_its_lease_cannot_record_its_result() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.gate = asyncio.Event()
        job_id = await rig.submit([1])
        rig.runner("slow").start()
        await rig.clock.run_until(lambda: rig.job(job_id).status is Status.RUNNING, limit_s=1)

        # Another process reclaims it (say the slow runner's renewals could not reach the store).
        def take_over(job: Job) -> Job | None:
            expired = t.renew(job, owner=job.runner or "", now=rig.clock.time() - 31, lease_s=30)
            assert expired is not None
            return t.claim(expired, owner="other:0", now=rig.clock.time(), lease_s=30, max_attempts=3, ttl_s=60)

        await rig.store.update(job_id, take_over)
        rig.scorer.gate.set()
        await rig.clock.advance(1)
        job = rig.job(job_id)
        assert job.status is Status.RUNNING and job.runner == "other:0", "the slow runner's result was refused"
        assert [h.status for h in job.history] == ["queued", "running", "lost", "running"], "no terminal state"

    run(test)


def test_a_job_purged_while_it_runs_is_left_alone() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.gate = asyncio.Event()
        job_id = await rig.submit([1])
        runners = rig.runner()
        runners.start()
        await rig.clock.run_until(lambda: rig.job(job_id).status is Status.RUNNING, limit_s=1)
        rig.store.delete(job_id)
        rig.scorer.gate.set()
        await rig.clock.advance(1)
        assert job_id not in rig.store.jobs
        second = await rig.submit([2])
        await rig.clock.run_until(rig.finished(second), limit_s=5)  # the runner is still alive

    run(test)


def test_a_worker_without_its_model_takes_no_jobs() -> None:
    async def test(rig: Rig) -> None:
        rig.scorer.ready = False
        job_id = await rig.submit([1])
        rig.runner().start()
        await rig.clock.advance(10)
        assert rig.job(job_id).status is Status.QUEUED
        rig.scorer.ready = True
        await rig.clock.run_until(rig.finished(job_id), limit_s=1)

    run(test)


def test_racing_runners_run_every_job_exactly_once() -> None:
    async def test(rig: Rig) -> None:
        ids = [await rig.submit([i]) for i in range(60)]
        for p in range(3):
            rig.runner(f"p{p}", count=2).start()
        await rig.clock.run_until(rig.finished(*ids), limit_s=60)
        assert sorted(call[0] for call in rig.scorer.calls) == list(range(60)), "each job scored once"
        for job_id in ids:
            job = rig.job(job_id)
            assert job.attempts == 1 and [h.status for h in job.history].count("succeeded") == 1
        assert rig.count("jobs", "succeeded") == 60
        assert {rig.job(i).runner for i in ids} == {f"p{p}:{n}" for p in range(3) for n in range(2)}, "all worked"

    run(test)


def test_predictions_of_a_real_model_shape_fill_the_result() -> None:
    """Prediction.rows() is what a job stores: labels with per-class probabilities."""
    prediction = Prediction(labels=["a", "b"], probabilities=np.array([[0.9, 0.1], [0.2, 0.8]]), classes=["a", "b"])
    assert prediction.rows()[1] == {"prediction": "b", "probabilities": {"a": 0.2, "b": 0.8}}
