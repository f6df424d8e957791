"""Runners: take jobs from the store, predict through the same path as requests, record the
outcome, and deliver callbacks.

At-least-once: a runner holds a lease on its job and renews it while it works. A runner that dies
(kill -9, OOM, node loss) stops renewing; when the lease runs out another runner takes the job
again, up to ``jobs.max_attempts`` runs. Every write is a compare-and-set (``store.swap``), so
however runs overlap, exactly one terminal state is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from typing import Any

import orjson
from pydantic import ValidationError

from ferry.core import Core
from ferry.errors import CircuitOpen, DeadlineExceeded, FerryError, ModelNotReady, Overloaded
from ferry.jobs import state
from ferry.jobs.callbacks import CallbackSender, next_delay
from ferry.jobs.store import JobStore, Versioned
from ferry.lifecycle import heartbeat
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.resilience.deadline import Deadline

log = get_logger("ferry.jobs")

# Transient refusals of the inference path: wait and try the chunk again within the run's deadline.
UNAVAILABLE = (CircuitOpen, Overloaded, ModelNotReady)
STATS_INTERVAL_S = 2.0
PURGE_INTERVAL_S = 60.0
CANDIDATES = 16


class Runners:
    """The runner tasks of one process: ``count`` job runners and one callback deliverer."""

    def __init__(self, core: Core, store: JobStore, count: int) -> None:
        self.core = core
        self.store = store
        self.count = count
        self.settings = core.settings
        self.metrics = core.metrics
        self.sender = CallbackSender(self.settings.callbacks, self.metrics)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[Any]] = []
        self._releases: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        self._tasks = [
            *(
                asyncio.create_task(self._run_jobs(f"{self.identity}:{i}"), name=f"ferry-runner-{i}")
                for i in range(self.count)
            ),
            asyncio.create_task(self._deliver_callbacks(), name="ferry-callbacks"),
        ]

    async def stop(self) -> None:
        """Cancel the tasks. A job cut off here keeps its lease until it expires, then another
        runner (or this pod's successor) runs it again."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._releases:
            await asyncio.wait(self._releases, timeout=5.0)
        await self.sender.aclose()

    # -- loops -------------------------------------------------------------------------------
    async def _forever(self, step: Any, what: str) -> None:
        """Run ``step`` until cancelled; it returns True when it did work (loop at once) and False
        when idle (sleep a poll interval). A store outage is logged and retried, never fatal."""
        poll = self.settings.jobs.poll_interval_s
        while True:
            try:
                busy = await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a runner must survive store/network errors
                log.error("jobs_loop_error", loop=what, error=f"{type(exc).__name__}: {exc}")
                busy = False
                await asyncio.sleep(min(5.0, poll * 10))
            if not busy:
                await asyncio.sleep(poll)

    async def _run_jobs(self, owner: str) -> None:
        await self._forever(lambda: self._run_one(owner), "run")

    async def _deliver_callbacks(self) -> None:
        await self._forever(self._deliver_one, "callback")

    # -- jobs --------------------------------------------------------------------------------
    async def _claim(self, owner: str) -> Versioned | None:
        jobs = self.settings.jobs
        due = await self.store.due("run", time.time(), CANDIDATES)
        # Runners that all start at the head of the queue collide on every claim; starting at a
        # random place among the earliest few keeps them on different jobs (FIFO within a window).
        random.shuffle(due)
        for job_id in due:
            current = await self.store.get(job_id)
            if current is None:
                await self.store.forget(job_id)
                continue
            claimed = state.claim(
                current.doc,
                owner=owner,
                now=time.time(),
                lease_s=jobs.lease_s,
                max_attempts=jobs.max_attempts,
                ttl_s=jobs.result_ttl_s,
            )
            if claimed is None:
                continue
            new, kind = claimed
            stored = await self.store.swap(current, new)
            if stored is None:
                continue  # another runner was faster
            self.metrics.job_runs.labels(kind).inc()
            if kind == "reclaim":
                log.warning("job_reclaimed", job_id=job_id, lost_runner=current.doc["runner"])
            if new["status"] in state.TERMINAL:
                self._count_terminal(new)
                continue
            return stored
        return None

    async def _run_one(self, owner: str) -> bool:
        if not self.core.holder.ready:
            return False  # a worker without its model takes no jobs; ready siblings do
        claimed = await self._claim(owner)
        if claimed is None:
            return False
        self.metrics.jobs_running.inc()
        lease = asyncio.create_task(self._keep_lease(claimed, owner))
        try:
            outcome = await self._execute(claimed.doc["id"])
        except asyncio.CancelledError:
            # Stopping: hand the job back now rather than after its lease expires.
            self._releases.append(asyncio.create_task(self._release(claimed.doc["id"], owner)))
            raise
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
            self.metrics.jobs_running.dec()
        await self._record(claimed.doc["id"], owner, outcome)
        return True

    async def _keep_lease(self, claimed: Versioned, owner: str) -> None:
        lease_s = self.settings.jobs.lease_s
        current = claimed
        while True:
            await asyncio.sleep(lease_s / 3)
            heartbeat()
            for _ in range(3):
                fresh = await self.store.get(current.doc["id"])
                new = None if fresh is None else state.renew(fresh.doc, owner=owner, now=time.time(), lease_s=lease_s)
                if fresh is None or new is None:
                    return  # lost the job; the run's result will be refused by the store
                stored = await self.store.swap(fresh, new)
                if stored is not None:
                    current = stored
                    break

    async def _execute(self, job_id: str) -> tuple[str, Any]:
        """('succeeded', result) | ('failed', error) | ('requeue', error)."""
        raw = await self.store.records(job_id)
        if raw is None:
            return "gone", None
        try:
            records = self.core.schema.records_adapter.validate_json(raw)
        except ValidationError as exc:  # e.g. submitted for another model during a rollout
            return "failed", {
                "code": "invalid_records",
                "message": f"records do not fit the served model: {exc}"[:2000],
            }
        jobs = self.settings.jobs
        chunk = self.settings.api.max_batch_size
        run_deadline = time.monotonic() + jobs.run_timeout_s
        results: list[dict[str, Any]] = []
        for offset in range(0, len(records), chunk):
            part = records[offset : offset + chunk]
            while True:
                remaining = run_deadline - time.monotonic()
                if remaining <= 0:
                    error = DeadlineExceeded(f"the job did not finish within {jobs.run_timeout_s} s")
                    return "requeue", {"code": error.code, "message": error.message}
                try:
                    prediction = await self.core.predict_records(
                        part, Deadline(at=time.monotonic() + remaining, budget_s=remaining)
                    )
                    break
                except DeadlineExceeded:
                    continue  # the run's time is up: requeued above
                except UNAVAILABLE as exc:
                    await asyncio.sleep(min(remaining, max(0.05, exc.retry_after_s or 0.5)))
                except FerryError as exc:
                    return "failed", {"code": exc.code, "message": exc.message}
            results.extend(prediction.rows())
        return "succeeded", {"predictions": results}

    async def _release(self, job_id: str, owner: str) -> None:
        for _ in range(5):
            current = await self.store.get(job_id)
            new = None if current is None else state.release(current.doc, owner=owner, now=time.time())
            if current is None or new is None or await self.store.swap(current, new) is not None:
                return

    async def _record(self, job_id: str, owner: str, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        jobs = self.settings.jobs
        for _ in range(20):
            current = await self.store.get(job_id)
            if current is None:
                return
            now = time.time()
            if kind == "requeue" and current.doc["attempts"] >= jobs.max_attempts:
                kind = "failed"
            if kind == "requeue":
                new = state.requeue(current.doc, owner=owner, now=now, delay_s=jobs.retry_delay_s, reason=value)
            elif kind == "succeeded":
                new = state.complete(
                    current.doc, owner=owner, now=now, status="succeeded", result=value, ttl_s=jobs.result_ttl_s
                )
            else:
                new = state.complete(
                    current.doc, owner=owner, now=now, status="failed", error=value, ttl_s=jobs.result_ttl_s
                )
            if new is None:
                log.warning("job_result_discarded", job_id=job_id, runner=owner, reason="lease lost to another runner")
                return
            if await self.store.swap(current, new) is not None:
                if new["status"] in state.TERMINAL:
                    self._count_terminal(new)
                return

    def _count_terminal(self, doc: state.Doc) -> None:
        self.metrics.jobs.labels(doc["status"]).inc()
        self.metrics.job_duration.labels(doc["status"]).observe(max(0.0, doc["finished_at"] - doc["created_at"]))
        if doc["status"] == "failed":
            log.warning("job_failed", job_id=doc["id"], code=doc["error"]["code"])

    # -- callbacks ---------------------------------------------------------------------------
    async def _deliver_one(self) -> bool:
        callbacks = self.settings.callbacks
        lease_s = callbacks.timeout_s + 5
        for job_id in await self.store.due("callback", time.time(), CANDIDATES):
            current = await self.store.get(job_id)
            if current is None:
                await self.store.forget(job_id)
                continue
            new = state.claim_callback(current.doc, now=time.time(), lease_s=lease_s)
            if new is None:
                continue
            claimed = await self.store.swap(current, new)
            if claimed is None:
                continue
            await self._attempt(claimed)
            return True
        return False

    async def _attempt(self, claimed: Versioned) -> None:
        callbacks = self.settings.callbacks
        doc = claimed.doc
        callback = doc["callback"]
        body = orjson.dumps(
            {"type": f"job.{doc['status']}", "timestamp": state.iso(time.time()), "data": state.public(doc)}
        )
        attempt = await self.sender.deliver(callback["url"], callback["webhook_id"], body)
        now = time.time()
        number = callback["attempts"] + 1
        next_at: float | None = None
        if attempt.outcome == "retry" and number < callbacks.max_attempts:
            delay = next_delay(
                number,
                base_s=callbacks.backoff_base_s,
                max_s=callbacks.backoff_max_s,
                retry_after_s=attempt.retry_after_s,
            )
            if now + delay - doc["finished_at"] <= callbacks.max_age_s:
                next_at = now + delay
        for _ in range(20):
            new = state.callback_attempted(
                claimed.doc,
                now=now,
                outcome=attempt.outcome,
                status_code=attempt.status_code,
                error=attempt.error,
                next_at=next_at,
            )
            if await self.store.swap(claimed, new) is not None:
                break
            fresh = await self.store.get(doc["id"])  # a lease renewal or redeliver raced us
            if fresh is None:
                return
            claimed = fresh
        status = new["callback"]["status"]
        if status == "dead_letter":
            self.metrics.callback_dead_letters.inc()
            log.error(
                "callback_dead_lettered",
                job_id=doc["id"],
                webhook_id=callback["webhook_id"],
                attempts=number,
                last_status_code=attempt.status_code,
                last_error=attempt.error,
            )


class Housekeeper:
    """Queue gauges and the purge of expired jobs. Runs in every process, runners or not: a queue
    that nobody works on is exactly what the backlog alert must see."""

    def __init__(self, store: JobStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="ferry-jobs-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        last_purge = 0.0
        while True:
            try:
                stats = await self.store.stats()
                self.metrics.jobs_queue_depth.set(stats.queued)
                age = 0.0 if stats.oldest_queued_at is None else max(0.0, time.time() - stats.oldest_queued_at)
                self.metrics.jobs_oldest_queued_age.set(age)
                if time.monotonic() - last_purge > PURGE_INTERVAL_S:
                    last_purge = time.monotonic()
                    purged = await self.store.purge(time.time())
                    if purged:
                        log.info("jobs_purged", count=purged)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("jobs_loop_error", loop="housekeeping", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(STATS_INTERVAL_S)
