"""Queue gauges and the purge of expired jobs.

Runs in every process, runners or not: a queue that nobody works on is exactly what the backlog
alert must see.
"""

from __future__ import annotations

import asyncio
import contextlib

from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.jobs.store import JobStore
from ferry.logging import get_logger
from ferry.metrics import Metrics

log = get_logger("ferry.jobs")
STATS_INTERVAL_S = 2.0
PURGE_INTERVAL_S = 60.0


class Housekeeper:
    def __init__(self, store: JobStore, metrics: Metrics, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_purge: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="ferry-jobs-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # a store outage must not end the gauges for good
                log.error("jobs_loop_error", loop="housekeeping", error=f"{type(exc).__name__}: {exc}")
            await self.clock.sleep(STATS_INTERVAL_S)

    async def tick(self) -> None:
        """Refresh the queue gauges; purge expired jobs once per ``PURGE_INTERVAL_S``."""
        stats = await self.store.stats()
        now = self.clock.time()
        self.metrics.jobs_queue_depth.set(stats.queued)
        oldest = stats.oldest_queued_at
        self.metrics.jobs_oldest_queued_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        started = self.clock.monotonic()
        if self._last_purge is None or started - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = started
            purged = await self.store.purge(now)
            if purged:
                log.info("jobs_purged", count=purged)
