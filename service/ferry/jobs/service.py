"""What the API does with jobs: submit, read, cancel, redeliver, follow. Knows nothing of HTTP."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import orjson

from ferry import tracing
from ferry.auth import Principal
from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.errors import (
    CallbacksNotConfigured,
    IdempotencyKeyReused,
    JobConflict,
    JobNotFound,
    JobStoreUnavailable,
)
from ferry.jobs import transitions
from ferry.jobs.document import Job, ModelRef, new_job, public
from ferry.jobs.followers import JobFollowers
from ferry.jobs.ssrf import Resolver, check_callback_url
from ferry.jobs.store import STORE_ERRORS, JobStore, Quota, Transition, Updated
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.settings import Settings

log = get_logger("ferry.jobs")
P = ParamSpec("P")
R = TypeVar("R")


def _store_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A store that is down becomes 503 job_store_unavailable, never a 500."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except STORE_ERRORS as exc:
            log.error("job_store_unavailable", error=f"{type(exc).__name__}: {exc}")
            raise JobStoreUnavailable(retry_after_s=2) from exc

    return wrapper


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        resolver: Resolver | None = None,  # DNS for the callback URL check; None: the system's
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.resolver = resolver
        self.followers = JobFollowers(
            store,
            poll_s=settings.jobs.poll_interval_s,
            max_streams=settings.connections.max_event_streams,
            clock=clock,
        )

    @_store_errors
    async def submit(
        self,
        records: list[Any],
        *,
        callback_url: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        request_id: str,
        model: ModelRef,
        principal: Principal | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a job owned by ``principal``; returns its public document and whether it was created
        now (False: the same principal sent the same Idempotency-Key before, and this is that job).
        Raises ``JobQuotaExceeded`` / ``JobStoreFull`` (429) when the queue or the store is full."""
        callbacks = self.settings.callbacks
        if callback_url is not None:
            if not callbacks.signing_secret:
                raise CallbacksNotConfigured()
            await check_callback_url(
                callback_url,
                allow_http=callbacks.allow_http,
                allow_hosts=callbacks.allow_hosts,
                resolver=self.resolver,
            )
        payload = orjson.dumps(records)
        request_hash = hashlib.sha256(
            orjson.dumps({"callback_url": callback_url, "metadata": metadata}, option=orjson.OPT_SORT_KEYS) + payload
        ).hexdigest()
        job = new_job(
            now=self.clock.time(),
            records=len(records),
            callback_url=callback_url,
            metadata=metadata,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            request_id=request_id,
            model=model,
            owner=None if principal is None else principal.name,
            traceparent=tracing.traceparent(),
        )
        stored = await self.store.insert(job, payload, self.quota)
        created = stored.job.id == job.id
        if not created and stored.job.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if created:
            self.metrics.jobs_submitted.inc()
        return public(stored.job), created

    @property
    def quota(self) -> Quota:
        jobs = self.settings.jobs
        return Quota(
            max_queued=jobs.max_queued,
            max_queued_owner=jobs.max_queued_per_principal,
            max_bytes=jobs.max_store_bytes,
            max_bytes_owner=jobs.max_store_bytes_per_principal,
            retry_after_s=jobs.quota_retry_after_s,
        )

    async def _load(self, job_id: str, principal: Principal | None) -> Job:
        found = await self.store.get(job_id) if _plausible_id(job_id) else None
        # Another principal's job answers exactly like a job that does not exist: no id oracle.
        if found is None or not _visible(found.job, principal):
            raise JobNotFound()
        return found.job

    async def _update(self, job_id: str, principal: Principal | None, transition: Transition) -> Updated:
        # The owner never changes, so checking it before the compare-and-set loop is race-free.
        await self._load(job_id, principal)
        updated = await self.store.update(job_id, transition)
        if updated is None:
            raise JobNotFound()
        return updated

    @_store_errors
    async def get(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        return public(await self._load(job_id, principal))

    @_store_errors
    async def cancel(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        ttl_s = self.settings.jobs.result_ttl_s
        updated = await self._update(
            job_id, principal, lambda job: transitions.cancel(job, now=self.clock.time(), ttl_s=ttl_s)
        )
        if updated.after is None:
            raise JobConflict(f"a {updated.before.status} job cannot be canceled (only queued jobs can)")
        job = updated.after
        self.metrics.job_finished(job.status.value, (job.finished_at or job.created_at) - job.created_at)
        return public(job)

    @_store_errors
    async def redeliver(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        ttl_s = self.settings.jobs.result_ttl_s
        updated = await self._update(
            job_id, principal, lambda job: transitions.redeliver(job, now=self.clock.time(), ttl_s=ttl_s)
        )
        if updated.after is None:
            before = updated.before
            why = (
                "the job has no callback_url"
                if before.callback is None
                else "the job has not finished"
                if not before.status.terminal
                else "its callback is already being delivered"
            )
            raise JobConflict(f"cannot redeliver: {why}")
        return public(updated.after)

    @_store_errors
    async def load(self, job_id: str, principal: Principal | None = None) -> Job:
        """The job (404 job_not_found, also when ``principal`` may not see it), e.g. to start following it."""
        return await self._load(job_id, principal)

    async def follow(
        self,
        job_id: str,
        is_stopping: Callable[[], bool],
        principal: Principal | None = None,
        first: Job | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's document each time its status changes, ending with its terminal state (or when
        ``is_stopping()`` turns true). Polls the store, so it sees changes made by any process; all
        followers of one job in this process share one poll (``JobFollowers``). ``first``: the job as
        just loaded for ``principal``, to start from without reading it again."""
        current = first if first is not None else await self._load(job_id, principal)
        async for job in self.followers.follow(current, is_stopping):
            yield public(job)


def _visible(job: Job, principal: Principal | None) -> bool:
    """Authentication off: every job. On: the principal's own jobs; every job for 'admin'."""
    return principal is None or principal.is_admin or job.owner == principal.name


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
