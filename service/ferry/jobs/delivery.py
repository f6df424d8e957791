"""The callback deliverer: takes due callbacks from the store, sends one attempt each, and records
what happened (delivered, retried later with backoff, or dead-lettered).

The schedule lives here (attempt budget, backoff, max age); ``callbacks.CallbackSender`` sends one
signed POST and reports the outcome. A deliverer holds a short lease on the callback while it sends,
so one that dies mid-attempt leaves the callback due again for another.

Attempts run concurrently: up to ``callbacks.max_in_flight`` per process, and at most
``callbacks.max_per_host`` to one receiver (``host:port``). A callback whose receiver has no free slot
is left due in the store and the dispatcher looks further down the due list, so a slow receiver
holds its own slots for at most ``callbacks.timeout_s`` each and never delays another's callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Protocol
from urllib.parse import urlsplit

import orjson

from ferry import tracing
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
# The due list is read further (doubling) while every candidate waits for a busy receiver, up to this.
MAX_CANDIDATES = 4096
_DEFAULT_PORTS = {"https": 443, "http": 80}
# A delivery lease outlasts one attempt's timeout by this much.
LEASE_MARGIN_S = 5.0


class Sender(Protocol):
    """Sends one signed attempt (``callbacks.CallbackSender`` in production)."""

    async def deliver(self, url: str, webhook_id: str, body: bytes) -> Attempt: ...

    async def aclose(self) -> None: ...


def receiver_of(url: str) -> str:
    """The ``host:port`` a callback URL is sent to: the unit of the per-receiver limit."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return url
    return f"{(parts.hostname or '').lower()}:{port}"


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
        self._attempts: set[asyncio.Task[None]] = set()
        self._per_receiver: Counter[str] = Counter()
        self._receiver_of: dict[str, str] = {}  # job id -> receiver, for jobs seen waiting for a slot

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    def start(self) -> None:
        loop = forever(self.dispatch, name="callback", poll_s=self.poll_s, clock=self.clock)
        self._task = asyncio.create_task(loop, name="ferry-callbacks")

    async def stop(self) -> None:
        """Stop dispatching and cancel attempts in progress (their leases expire; the callbacks are due again)."""
        tasks = [t for t in (self._task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.aclose()

    async def deliver_one(self) -> bool:
        """Start due attempts and wait for them (tests); False when none was due."""
        started = await self.dispatch()
        while self._attempts:
            await asyncio.wait(set(self._attempts))
        return started

    async def dispatch(self) -> bool:
        """Start an attempt for each due callback whose receiver has a free slot, while slots last.
        True when at least one started (look again at once), False when there was nothing to start."""
        settings = self.settings
        lease_s = settings.timeout_s + LEASE_MARGIN_S
        limit = CANDIDATES
        while len(self._attempts) < settings.max_in_flight:
            due = await self.store.due("callback", self.clock.time(), limit)
            started = False
            for job_id in due:
                if len(self._attempts) >= settings.max_in_flight:
                    return True
                known = self._receiver_of.get(job_id)
                if known is not None and self._per_receiver[known] >= settings.max_per_host:
                    continue  # its receiver is busy: leave it due, look at the next one
                if known is None:
                    found = await self.store.get(job_id)
                    if found is None or found.job.callback is None:
                        await self.store.forget(job_id)
                        continue
                    known = self._receiver_of[job_id] = receiver_of(found.job.callback.url)
                    if self._per_receiver[known] >= settings.max_per_host:
                        continue
                updated = await self.store.update(
                    job_id, lambda job: transitions.claim_callback(job, now=self.clock.time(), lease_s=lease_s)
                )
                if updated is None:
                    await self.store.forget(job_id)
                    self._receiver_of.pop(job_id, None)
                    continue
                if updated.after is None:
                    continue  # another deliverer has it, or it is not due any more
                self._receiver_of.pop(job_id, None)
                self._start(updated.after, known)
                started = True
            if started:
                return True
            if len(due) < limit or limit >= MAX_CANDIDATES:
                break
            limit *= 2  # every candidate waits for a busy receiver: look further down the list
        if not self._attempts or len(self._receiver_of) > MAX_CANDIDATES:
            self._receiver_of.clear()  # forget jobs that others delivered meanwhile
        return False

    def _start(self, job: Job, receiver: str) -> None:
        self._per_receiver[receiver] += 1
        task = asyncio.create_task(self._attempt(job), name="ferry-callback-attempt")
        self._attempts.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._attempts.discard(finished)
            self._per_receiver[receiver] -= 1
            if self._per_receiver[receiver] <= 0:
                del self._per_receiver[receiver]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("callback_attempt_failed", job_id=job.id, error=repr(finished.exception()))

        task.add_done_callback(done)

    async def _attempt(self, job: Job) -> None:
        callback = job.callback
        assert callback is not None
        number = callback.attempts + 1
        attributes: tracing.Attributes = {
            "ferry.job.id": job.id,
            "ferry.callback.attempt": number,
            "webhook.id": callback.webhook_id,
        }
        # Current while the POST is built, so the sender puts this span's traceparent on it.
        with tracing.span("callback attempt", parent=job.traceparent, client=True, attributes=attributes) as span:
            attempt = await self.sender.deliver(callback.url, callback.webhook_id, payload(job, self.clock.time()))
            span.set("ferry.callback.outcome", attempt.outcome.value)
            if attempt.status_code is not None:
                span.set("http.response.status_code", attempt.status_code)
            if attempt.outcome is not transitions.Delivery.DELIVERED:
                span.fail(attempt.error or attempt.outcome.value)
        now = self.clock.time()
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
