"""The callback deliverer: takes due callbacks from the store, sends one attempt each, and records
what happened (delivered, retried later with backoff, or dead-lettered).

The schedule lives here (attempt budget, backoff, max age); ``callbacks.CallbackSender`` sends one
signed POST and reports the outcome. A deliverer holds a short lease on the callback while it sends,
so one that dies mid-attempt leaves the callback due again for another.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import orjson

from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.jobs import transitions
from ferry.jobs.callbacks import Attempt, next_delay
from ferry.jobs.document import CallbackStatus, Job, iso, public
from ferry.jobs.loops import forever
from ferry.jobs.store import JobStore
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.settings import CallbacksSettings

log = get_logger("ferry.jobs")
CANDIDATES = 16
# A delivery lease outlasts one attempt's timeout by this much.
LEASE_MARGIN_S = 5.0


class Sender(Protocol):
    """Sends one signed attempt (``callbacks.CallbackSender`` in production)."""

    async def deliver(self, url: str, webhook_id: str, body: bytes) -> Attempt: ...

    async def aclose(self) -> None: ...


def payload(job: Job, now: float) -> bytes:
    """The callback body: the finished job as the API shows it."""
    return orjson.dumps({"type": f"job.{job.status.value}", "timestamp": iso(now), "data": public(job)})


class CallbackDeliverer:
    def __init__(
        self,
        store: JobStore,
        sender: Sender,
        settings: CallbacksSettings,
        *,
        metrics: Metrics,
        poll_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.sender = sender
        self.settings = settings
        self.metrics = metrics
        self.poll_s = poll_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = forever(self.deliver_one, name="callback", poll_s=self.poll_s, clock=self.clock)
        self._task = asyncio.create_task(loop, name="ferry-callbacks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sender.aclose()

    async def deliver_one(self) -> bool:
        """Send one due callback; False when none was due."""
        lease_s = self.settings.timeout_s + LEASE_MARGIN_S
        for job_id in await self.store.due("callback", self.clock.time(), CANDIDATES):
            updated = await self.store.update(
                job_id, lambda job: transitions.claim_callback(job, now=self.clock.time(), lease_s=lease_s)
            )
            if updated is None:
                await self.store.forget(job_id)
                continue
            if updated.after is None:
                continue  # another deliverer has it, or it is not due any more
            await self._attempt(updated.after)
            return True
        return False

    async def _attempt(self, job: Job) -> None:
        callback = job.callback
        assert callback is not None
        attempt = await self.sender.deliver(callback.url, callback.webhook_id, payload(job, self.clock.time()))
        now = self.clock.time()
        number = callback.attempts + 1
        next_at = self._next_attempt_at(job, attempt, number, now)
        updated = await self.store.update(
            job.id,
            lambda current: transitions.callback_attempted(
                current,
                now=now,
                outcome=attempt.outcome,
                status_code=attempt.status_code,
                error=attempt.error,
                next_at=next_at,
            ),
        )
        after = None if updated is None else updated.after
        if after is not None and after.callback is not None and after.callback.status is CallbackStatus.DEAD_LETTER:
            self.metrics.callback_dead_letters.inc()
            log.error(
                "callback_dead_lettered",
                job_id=job.id,
                webhook_id=callback.webhook_id,
                attempts=number,
                last_status_code=attempt.status_code,
                last_error=attempt.error,
            )

    def _next_attempt_at(self, job: Job, attempt: Attempt, number: int, now: float) -> float | None:
        """When to try again after a retryable failure; None: dead-letter (budget or age spent)."""
        settings = self.settings
        if attempt.outcome is not transitions.Delivery.RETRY or number >= settings.max_attempts:
            return None
        delay = next_delay(
            number, base_s=settings.backoff_base_s, max_s=settings.backoff_max_s, retry_after_s=attempt.retry_after_s
        )
        if now + delay - (job.finished_at or now) > settings.max_age_s:
            return None
        return now + delay
