"""Job runners: take jobs from the store, predict through the same path as requests, record the outcome.

At-least-once: a runner holds a lease on its job and renews it while it works. A runner that dies
(kill -9, OOM, node loss) stops renewing; when the lease runs out another runner takes the job
again, up to ``jobs.max_attempts`` runs. Every write is a transition applied by ``store.update``
(compare-and-set), so however runs overlap, exactly one terminal state is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ferry import tracing
from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.errors import CircuitOpen, DeadlineExceeded, FerryError, InvalidInput, ModelNotReady, Overloaded
from ferry.inference import Prediction
from ferry.jobs import transitions
from ferry.jobs.document import Job, JobError, Status
from ferry.jobs.loops import forever
from ferry.jobs.store import JobStore, Transition
from ferry.lifecycle import heartbeat
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.resilience.deadline import Deadline
from ferry.settings import JobsSettings

log = get_logger("ferry.jobs")

# Transient refusals of the inference path: wait and try the chunk again within the run's deadline.
UNAVAILABLE = (CircuitOpen, Overloaded, ModelNotReady)
# Due jobs a runner looks at per claim; it starts at a random one of them (see _claim).
CANDIDATES = 16
# How long a stopping runner waits for the hand-back of the job it was running.
RELEASE_TIMEOUT_S = 5.0


class Scorer(Protocol):
    """What a runner needs of the serving core (``ferry.core.Core`` in production)."""

    @property
    def ready(self) -> bool: ...

    def records_from_json(self, raw: bytes) -> list[Any]:
        """The stored records, validated for the served model; ``InvalidInput`` if they do not fit."""
        ...

    async def predict_records(self, records: list[Any], deadline: Deadline) -> Prediction: ...


class RunOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REQUEUE = "requeue"  # the model was unavailable for the whole run: run it again later
    GONE = "gone"  # the job was purged while it ran: nothing to record


@dataclass(frozen=True, slots=True)
class Run:
    """The outcome of one run, and what to record with it."""

    outcome: RunOutcome
    result: dict[str, Any] | None = None
    error: JobError | None = None


class JobRunners:
    """``count`` runner tasks of one process, each running one job at a time."""

    def __init__(
        self,
        scorer: Scorer,
        store: JobStore,
        settings: JobsSettings,
        *,
        chunk_size: int,
        metrics: Metrics,
        identity: str,
        count: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.scorer = scorer
        self.store = store
        self.settings = settings
        self.chunk_size = chunk_size  # records per model call: the API's batch limit
        self.metrics = metrics
        self.identity = identity
        self.count = count
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._releases: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(f"{self.identity}:{i}"), name=f"ferry-runner-{i}") for i in range(self.count)
        ]

    async def stop(self) -> None:
        """Cancel the runners; each hands its job back at once (see ``transitions.release``)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._releases:
            await asyncio.wait(self._releases, timeout=RELEASE_TIMEOUT_S)

    async def _loop(self, owner: str) -> None:
        await forever(lambda: self.run_one(owner), name="run", poll_s=self.settings.poll_interval_s, clock=self.clock)

    async def run_one(self, owner: str) -> bool:
        """Claim one due job, run it and record the outcome; False when there was nothing to run."""
        if not self.scorer.ready:
            return False  # a worker without its model takes no jobs; ready siblings do
        job = await self._claim(owner)
        if job is None:
            return False
        self.metrics.jobs_running.inc()
        lease = asyncio.create_task(self._keep_lease(job.id, owner))
        try:
            run = await self._traced_execute(job)
        except asyncio.CancelledError:
            # Stopping: hand the job back now rather than after its lease expires.
            self._releases.append(asyncio.create_task(self._release(job.id, owner)))
            raise
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
            self.metrics.jobs_running.dec()
        await self._record(job, owner, run)
        return True

    async def _claim(self, owner: str) -> Job | None:
        jobs = self.settings
        due = await self.store.due("run", self.clock.time(), CANDIDATES)
        # Runners that all start at the head of the queue collide on every claim; starting at a
        # random place among the earliest few keeps them on different jobs (FIFO within a window).
        random.shuffle(due)
        for job_id in due:
            updated = await self.store.update(
                job_id,
                lambda job: transitions.claim(
                    job,
                    owner=owner,
                    now=self.clock.time(),
                    lease_s=jobs.lease_s,
                    max_attempts=jobs.max_attempts,
                    ttl_s=jobs.result_ttl_s,
                ),
            )
            if updated is None:
                await self.store.forget(job_id)  # purged, but still in an index
                continue
            if updated.after is None:
                continue  # another runner was faster, or it is not due any more
            kind = transitions.run_kind(updated.before)
            self.metrics.job_runs.labels(kind.value).inc()
            if kind is transitions.RunKind.RECLAIM:
                log.warning("job_reclaimed", job_id=job_id, lost_runner=updated.before.runner)
            if updated.after.status.terminal:  # reclaimed once too often: failed instead of run
                self._finished(updated.after)
                continue
            return updated.after
        return None

    async def _keep_lease(self, job_id: str, owner: str) -> None:
        lease_s = self.settings.lease_s
        while True:
            await self.clock.sleep(lease_s / 3)
            heartbeat()
            updated = await self.store.update(
                job_id, lambda job: transitions.renew(job, owner=owner, now=self.clock.time(), lease_s=lease_s)
            )
            if updated is None or updated.after is None:
                return  # lost the job; the run's result will be refused when recorded

    async def _traced_execute(self, job: Job) -> Run:
        """``_execute`` in a ``job run`` span of the submitter's trace, with the job's ids bound for its log
        lines (a model_error of a job run names the request that submitted it)."""
        attributes: tracing.Attributes = {
            "ferry.job.id": job.id,
            "ferry.job.attempt": job.attempts,
            "ferry.job.records": job.records,
        }
        with tracing.span("job run", parent=job.traceparent, attributes=attributes) as span:
            ids = {"job_id": job.id, "request_id": job.request_id, "trace_id": span.trace_id}
            with structlog.contextvars.bound_contextvars(**{k: v for k, v in ids.items() if v is not None}):
                run = await self._execute(job)
            span.set("ferry.job.outcome", run.outcome.value)
            if run.error is not None:
                span.set("ferry.error.code", run.error.code)
                if run.outcome is RunOutcome.FAILED:
                    span.fail(run.error.code)
            return run

    async def _execute(self, job: Job) -> Run:
        raw = await self.store.records(job.id)
        if raw is None:
            return Run(RunOutcome.GONE)
        try:
            records = self.scorer.records_from_json(raw)
        except InvalidInput as exc:  # e.g. submitted for another model version during a rollout
            message = f"records do not fit the served model: {exc.message} {exc.details or ''}".strip()
            return Run(RunOutcome.FAILED, error=JobError(code="invalid_records", message=message[:2000]))
        timeout_s = self.settings.run_timeout_s
        ends = self.clock.monotonic() + timeout_s
        results: list[dict[str, Any]] = []
        for offset in range(0, len(records), self.chunk_size):
            part = records[offset : offset + self.chunk_size]
            while True:
                remaining = ends - self.clock.monotonic()
                if remaining <= 0:
                    error = DeadlineExceeded(f"the job did not finish within {timeout_s:g} s")
                    return Run(RunOutcome.REQUEUE, error=JobError(code=error.code, message=error.message))
                try:
                    prediction = await self.scorer.predict_records(part, Deadline.after(remaining))
                    break
                except DeadlineExceeded:
                    continue  # the run's time is up: requeued above
                except UNAVAILABLE as exc:
                    await self.clock.sleep(min(remaining, max(0.05, exc.retry_after_s or 0.5)))
                except FerryError as exc:
                    return Run(RunOutcome.FAILED, error=JobError(code=exc.code, message=exc.message))
            results.extend(prediction.rows())
        return Run(RunOutcome.SUCCEEDED, result={"predictions": results})

    async def _release(self, job_id: str, owner: str) -> None:
        await self.store.update(job_id, lambda job: transitions.release(job, owner=owner, now=self.clock.time()))

    def _transition(self, owner: str, run: Run) -> Transition:
        jobs = self.settings

        def record(job: Job) -> Job | None:
            now = self.clock.time()
            if run.outcome is RunOutcome.SUCCEEDED:
                assert run.result is not None
                return transitions.succeed(job, owner=owner, now=now, result=run.result, ttl_s=jobs.result_ttl_s)
            assert run.error is not None
            if run.outcome is RunOutcome.FAILED:
                return transitions.fail(job, owner=owner, now=now, error=run.error, ttl_s=jobs.result_ttl_s)
            if job.attempts >= jobs.max_attempts:  # REQUEUE, but this was the last run it gets
                error = JobError(
                    code="attempts_exhausted",
                    message=f"{job.attempts} runs did not finish; the last: {run.error.message}",
                )
                return transitions.fail(job, owner=owner, now=now, error=error, ttl_s=jobs.result_ttl_s)
            return transitions.requeue(job, owner=owner, now=now, delay_s=jobs.retry_delay_s, reason=run.error)

        return record

    async def _record(self, job: Job, owner: str, run: Run) -> None:
        if run.outcome is RunOutcome.GONE:
            return
        updated = await self.store.update(job.id, self._transition(owner, run))
        if updated is None:
            return  # purged meanwhile
        if updated.after is None:
            log.warning("job_result_discarded", job_id=job.id, runner=owner, reason="lease lost to another runner")
        elif updated.after.status.terminal:
            self._finished(updated.after)

    def _finished(self, job: Job) -> None:
        self.metrics.job_finished(job.status.value, (job.finished_at or job.created_at) - job.created_at)
        if job.error is not None and job.status is Status.FAILED:
            log.warning("job_failed", job_id=job.id, code=job.error.code)
