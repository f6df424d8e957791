"""What the API does with jobs: submit, read, cancel, redeliver, follow. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import orjson

from ferry.errors import (
    CallbacksNotConfigured,
    IdempotencyKeyReused,
    JobConflict,
    JobNotFound,
    JobStoreUnavailable,
)
from ferry.jobs import state
from ferry.jobs.ssrf import check_callback_url
from ferry.jobs.store import STORE_ERRORS, JobStore, Versioned
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.settings import Settings

log = get_logger("ferry.jobs")
P = ParamSpec("P")
R = TypeVar("R")

# Optimistic writes retry when another process changed the job in between.
SWAP_TRIES = 20


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
    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics

    @_store_errors
    async def submit(
        self,
        records: list[dict[str, Any]],
        *,
        callback_url: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        request_id: str,
        model: dict[str, str],
    ) -> tuple[state.Doc, bool]:
        """Queue a job; returns its public document and whether it was created now (False: the
        same Idempotency-Key was seen before, and this is that job)."""
        callbacks = self.settings.callbacks
        if callback_url is not None:
            if not callbacks.signing_secret:
                raise CallbacksNotConfigured()
            await check_callback_url(callback_url, allow_http=callbacks.allow_http, allow_hosts=callbacks.allow_hosts)
        payload = orjson.dumps(records)
        request_hash = hashlib.sha256(
            orjson.dumps({"callback_url": callback_url, "metadata": metadata}, option=orjson.OPT_SORT_KEYS) + payload
        ).hexdigest()
        now = time.time()
        doc = state.with_internal(
            state.new_job(
                now=now,
                records=len(records),
                callback_url=callback_url,
                metadata=metadata,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                request_id=request_id,
                model=model,
            ),
            now,
        )
        stored = await self.store.insert(doc, payload)
        created = stored.doc["id"] == doc["id"]
        if not created and stored.doc["request_hash"] != request_hash:
            raise IdempotencyKeyReused()
        if created:
            self.metrics.jobs_submitted.inc()
        return state.public(stored.doc), created

    async def _load(self, job_id: str) -> Versioned:
        found = await self.store.get(job_id) if _plausible_id(job_id) else None
        if found is None:
            raise JobNotFound()
        return found

    @_store_errors
    async def get(self, job_id: str) -> state.Doc:
        return state.public((await self._load(job_id)).doc)

    @_store_errors
    async def cancel(self, job_id: str) -> state.Doc:
        for _ in range(SWAP_TRIES):
            current = await self._load(job_id)
            new = state.cancel(current.doc, now=time.time(), ttl_s=self.settings.jobs.result_ttl_s)
            if new is None:
                raise JobConflict(f"a {current.doc['status']} job cannot be canceled (only queued jobs can)")
            if await self.store.swap(current, new) is not None:
                self.metrics.jobs.labels("canceled").inc()
                self.metrics.job_duration.labels("canceled").observe(new["finished_at"] - new["created_at"])
                return state.public(new)
        raise JobConflict("the job kept changing; try again")

    @_store_errors
    async def redeliver(self, job_id: str) -> state.Doc:
        for _ in range(SWAP_TRIES):
            current = await self._load(job_id)
            new = state.redeliver(current.doc, now=time.time(), ttl_s=self.settings.jobs.result_ttl_s)
            if new is None:
                doc = current.doc
                why = (
                    "the job has no callback_url"
                    if not doc.get("callback")
                    else "the job has not finished"
                    if doc["status"] not in state.TERMINAL
                    else "its callback is already being delivered"
                )
                raise JobConflict(f"cannot redeliver: {why}")
            if await self.store.swap(current, new) is not None:
                return state.public(new)
        raise JobConflict("the job kept changing; try again")

    async def follow(self, job_id: str, is_stopping: Any) -> AsyncIterator[state.Doc]:
        """The job's document each time it changes, ending with its terminal state (or when
        ``is_stopping()`` turns true). Polls the store, so it sees changes made by any process."""
        current = await self._load(job_id)
        yield state.public(current.doc)
        seen = _change(current.doc)
        while current.doc["status"] not in state.TERMINAL and not is_stopping():
            await asyncio.sleep(self.settings.jobs.poll_interval_s)
            try:
                found = await self.store.get(job_id)
            except STORE_ERRORS:
                return  # the client reconnects; the stream's start answers 503 while the store is down
            if found is None:
                return
            current = found
            if _change(found.doc) != seen:  # lease renewals change the version, not the status
                seen = _change(found.doc)
                yield state.public(found.doc)


def _change(doc: state.Doc) -> tuple[str, int]:
    return doc["status"], len(doc["history"])


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
