"""Followers of job event streams: one store poll per followed job and process, fanned out to all.

Each ``GET /api/v1/jobs/{id}/events`` used to poll the store every ``jobs.poll_interval_s`` on its
own: 3,000 streams were 15,000 store reads a second and took predictions to a 1.6 s p99. Here every
follower of one job shares one poll task (started by the first follower, stopped with the last); a
follower wakes only when the job's status changes or its watch ends, so an idle stream costs nothing
between changes. The number of open streams per process is capped (``connections.max_event_streams``):
:meth:`JobFollowers.reserve` refuses beyond it with 503 ``too_many_streams``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.errors import TooManyStreams
from ferry.jobs.document import Job
from ferry.jobs.store import STORE_ERRORS, JobStore


def change_of(job: Job) -> tuple[str, int]:
    """What a follower is told about: status changes (lease renewals change only the version)."""
    return job.status.value, len(job.history)


@dataclass(eq=False)
class _Watch:
    job: Job
    followers: int = 0
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def publish(self, job: Job | None, *, end: bool = False) -> None:
        if job is not None:
            self.job = job
        self.ended = self.ended or end
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


class JobFollowers:
    """The job watches of one process. ``polls`` counts store reads, for tests and metrics."""

    def __init__(self, store: JobStore, *, poll_s: float, max_streams: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.poll_s = poll_s
        self.max_streams = max_streams
        self.clock = clock
        self.open_streams = 0
        self.polls = 0
        self._watches: dict[str, _Watch] = {}

    @property
    def watched_jobs(self) -> int:
        return len(self._watches)

    def reserve(self) -> Callable[[], None]:
        """Count one more open stream, or refuse it (503); returns the release, safe to call twice."""
        if self.open_streams >= self.max_streams:
            raise TooManyStreams(retry_after_s=5)
        self.open_streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_streams -= 1

        return release

    async def follow(self, first: Job, is_stopping: Callable[[], bool]) -> AsyncIterator[Job]:
        """``first``, then the job each time its status changes; ends after a terminal state, when the
        job is gone or the store fails (the client reconnects), or when ``is_stopping()`` turns true."""
        yield first
        if first.status.terminal or is_stopping():
            return
        watch = self._watches.get(first.id)
        if watch is None:
            watch = self._watches[first.id] = _Watch(first)
            watch.task = asyncio.create_task(self._poll(first.id, watch, is_stopping), name="ferry-job-watch")
        watch.followers += 1
        seen = change_of(first)
        try:
            while True:
                if change_of(watch.job) != seen:
                    seen = change_of(watch.job)
                    yield watch.job
                    if watch.job.status.terminal:
                        return
                    continue
                if watch.ended:
                    return
                await watch.changed.wait()
        finally:
            watch.followers -= 1
            if watch.followers == 0:
                if self._watches.get(first.id) is watch:
                    del self._watches[first.id]
                if watch.task is not None and not watch.task.done():
                    watch.task.cancel()

    async def _poll(self, job_id: str, watch: _Watch, is_stopping: Callable[[], bool]) -> None:
        try:
            while not watch.ended:
                await self.clock.sleep(self.poll_s)
                if is_stopping():
                    watch.publish(None, end=True)
                    return
                self.polls += 1
                try:
                    found = await self.store.get(job_id)
                except STORE_ERRORS:
                    watch.publish(None, end=True)
                    return
                if found is None:
                    watch.publish(None, end=True)
                    return
                job = found.job
                if change_of(job) != change_of(watch.job):
                    watch.publish(job, end=job.status.terminal)
        finally:
            with contextlib.suppress(KeyError):
                if self._watches[job_id] is watch:
                    del self._watches[job_id]
