"""The job store contract, and the choice of store from settings.

A store keeps job documents under a version number and four indexes (``document.Index``). It never
decides anything about a job: every change is a pure transition (``jobs.transitions``) applied by
:meth:`JobStore.update`, which reads the job, computes the next document and writes it back only if
nobody wrote the job in between (compare-and-set on the version), reading again when somebody did.
Two runners that race for the same job therefore cannot both win, and a runner whose lease was taken
over cannot overwrite the new owner's work: exactly one terminal state is ever recorded.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.exceptions

from ferry.errors import JobConflict, JobQuotaExceeded, JobStoreFull
from ferry.jobs.document import Index, Job, idempotency_scope, index_of
from ferry.settings import JobsSettings

# A transition: the next document, or None when the change does not apply in the job's state.
Transition = Callable[[Job], Job | None]
DueKind = Literal["run", "callback"]

# How often update() reads again after losing a compare-and-set, and the most it sleeps in between.
# Writers hold a job for microseconds, so losing 20 times in a row means something is wrong.
UPDATE_ATTEMPTS = 20
UPDATE_BACKOFF_S = 0.005


@dataclass(frozen=True, slots=True)
class Versioned:
    job: Job
    version: int


@dataclass(frozen=True, slots=True)
class Updated:
    """What :meth:`JobStore.update` did: ``after`` is the stored document, or None when the
    transition refused the job as it was (``before``)."""

    before: Job
    after: Job | None


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits an insert must keep, checked atomically with it. The ``*_owner`` limits apply to the
    job's owner (jobs without an owner: only the store-wide ones). An owner's bytes: every job it holds
    (until purged), input plus document, plus its input once more while the result is still to come."""

    max_queued: int
    max_queued_owner: int
    max_bytes: int
    retry_after_s: float
    max_bytes_owner: int = 1 << 62

    def queue_full(self, owned: bool) -> JobQuotaExceeded:
        which = "your jobs waiting to run" if owned else "jobs waiting to run"
        return JobQuotaExceeded(f"too many {which}; retry later", retry_after_s=self.retry_after_s)

    def store_full(self, owned: bool = False) -> JobStoreFull:
        if owned:
            return JobStoreFull(
                "your jobs hold your share of the job store; retry after they expire", retry_after_s=self.retry_after_s
            )
        return JobStoreFull(retry_after_s=self.retry_after_s)


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    oldest_queued_at: float | None


class JobStore(ABC):
    """Async job storage. Implementations: ``SqliteJobStore``, ``RedisJobStore``."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def insert(self, job: Job, records: bytes, quota: Quota | None = None) -> Versioned:
        """Store a new job and its input (JSON bytes). With an idempotency key already in use (in the
        job owner's namespace, ``document.idempotency_scope``), store nothing and return the existing
        job instead (its id differs from ``job``'s). With a ``quota``, raise ``JobQuotaExceeded`` or
        ``JobStoreFull`` instead of storing a job that would exceed it."""

    @abstractmethod
    async def get(self, job_id: str) -> Versioned | None: ...

    @abstractmethod
    async def records(self, job_id: str) -> bytes | None:
        """The job's input as submitted (JSON array of records)."""

    @abstractmethod
    async def swap(self, old: Versioned, new: Job) -> Versioned | None:
        """Replace ``old`` by ``new`` (re-indexed from ``new``) if the stored version is still
        ``old.version``; None when another writer got there first or the job is gone.
        Callers use :meth:`update`; stores implement this."""

    @abstractmethod
    async def due(self, kind: DueKind, now: float, limit: int) -> list[str]:
        """Ids whose ``run_at`` (kind 'run') or ``callback_at`` (kind 'callback') is ``<= now``,
        earliest first."""

    @abstractmethod
    async def stats(self) -> QueueStats: ...

    @abstractmethod
    async def purge(self, now: float) -> int:
        """Delete finished jobs whose ``expires_at`` has passed; returns how many."""

    @abstractmethod
    async def forget(self, job_id: str) -> None:
        """Drop a job that no longer exists from every index."""

    async def update(self, job_id: str, transition: Transition) -> Updated | None:
        """Apply ``transition`` to the job and store the result atomically; None if there is no
        such job. The one compare-and-set loop of the job path: on a lost race it reads the job
        again and re-applies the transition to what is there now (so ``transition`` must be pure
        and read any clock itself), up to ``UPDATE_ATTEMPTS`` times, then raises ``JobConflict``."""
        for attempt in range(UPDATE_ATTEMPTS):
            current = await self.get(job_id)
            if current is None:
                return None
            new = transition(current.job)
            if new is None or await self.swap(current, new) is not None:
                return Updated(current.job, new)
            if attempt:  # read again at once the first time; then jitter, so colliding writers fall out of step
                await asyncio.sleep(random.uniform(0, UPDATE_BACKOFF_S * min(attempt, 4)))
        raise JobConflict("the job kept changing under concurrent writers; try again")

    @staticmethod
    def index(job: Job) -> Index:
        return index_of(job)

    @staticmethod
    def idempotency(job: Job) -> str | None:
        return idempotency_scope(job)


# What a store raises when its backend is down or refuses: the API answers 503, runners retry.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, redis.exceptions.RedisError, OSError)


def open_store(settings: JobsSettings) -> JobStore:
    """The configured store (not yet opened)."""
    if settings.store == "redis":
        from ferry.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url.get_secret_value(), settings.redis_prefix)
    from ferry.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.sqlite_path)
