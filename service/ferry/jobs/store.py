"""The job store contract, and the choice of store from settings.

A store keeps JSON documents under a version number and four indexes (see ``state.Index``). It
never decides anything about a job: every change is read, computed by ``state``, and written back
with :meth:`JobStore.swap`, which succeeds only if nobody wrote the job in between. Two runners that
race for the same job therefore cannot both win, and a runner whose lease was taken over cannot
overwrite the new owner's work: exactly one terminal state is ever recorded.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass

import redis.exceptions

from ferry.jobs.state import Doc, Index, index_of
from ferry.settings import JobsSettings


@dataclass(frozen=True)
class Versioned:
    doc: Doc
    version: int


@dataclass(frozen=True)
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
    async def insert(self, doc: Doc, records: bytes) -> Versioned:
        """Store a new job and its input (JSON bytes). With an idempotency key already in use,
        store nothing and return the existing job instead (its id differs from ``doc``'s)."""

    @abstractmethod
    async def get(self, job_id: str) -> Versioned | None: ...

    @abstractmethod
    async def records(self, job_id: str) -> bytes | None:
        """The job's input as submitted (JSON array of records)."""

    @abstractmethod
    async def swap(self, old: Versioned, new: Doc) -> Versioned | None:
        """Replace ``old`` by ``new`` (re-indexed from ``new``) if the stored version is still
        ``old.version``; None when another writer got there first or the job is gone."""

    @abstractmethod
    async def due(self, kind: str, now: float, limit: int) -> list[str]:
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

    @staticmethod
    def index(doc: Doc) -> Index:
        return index_of(doc)


# What a store raises when its backend is down or refuses: the API answers 503, runners retry.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, redis.exceptions.RedisError, OSError)


def open_store(settings: JobsSettings) -> JobStore:
    """The configured store (not yet opened)."""
    if settings.store == "redis":
        from ferry.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url.get_secret_value(), settings.redis_prefix)
    from ferry.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.sqlite_path)
