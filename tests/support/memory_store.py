"""An in-memory job store for in-process tests: the same contract as SQLite and Redis (the contract
suite in tests/integration/test_job_store.py runs against it too), no I/O, so a virtual clock can
drive runners through leases and retries deterministically."""

from __future__ import annotations

import asyncio

from ferry.jobs.document import Job, encode
from ferry.jobs.store import DueKind, JobStore, QueueStats, Quota, Versioned


class MemoryJobStore(JobStore):
    def __init__(self) -> None:
        self.jobs: dict[str, Versioned] = {}
        self.inputs: dict[str, bytes] = {}
        self.keys: dict[str, str] = {}  # idempotency key -> job id
        self.swaps = 0  # compare-and-sets attempted (a test can see contention)
        self.lost_swaps = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def insert(self, job: Job, records: bytes, quota: Quota | None = None) -> Versioned:
        await asyncio.sleep(0)  # a real store yields here: let racing callers interleave
        key = self.idempotency(job)
        if key is not None and key in self.keys:
            return self.jobs[self.keys[key]]
        if quota is not None:
            queued = [v.job for v in self.jobs.values() if self.index(v.job).queued_since is not None]
            if len(queued) >= quota.max_queued:
                raise quota.queue_full(owned=False)
            if job.owner is not None and sum(j.owner == job.owner for j in queued) >= quota.max_queued_owner:
                raise quota.queue_full(owned=True)
            if sum(map(len, self.inputs.values())) + len(records) > quota.max_bytes:
                raise quota.store_full()
            if job.owner is not None:
                held = sum(
                    len(self.inputs[i]) * (1 if v.job.status.terminal else 2) + len(encode(v.job))
                    for i, v in self.jobs.items()
                    if v.job.owner == job.owner
                )
                if held + 2 * len(records) + len(encode(job)) > quota.max_bytes_owner:
                    raise quota.store_full(owned=True)
        stored = Versioned(job, 1)
        self.jobs[job.id] = stored
        self.inputs[job.id] = records
        if key is not None:
            self.keys[key] = job.id
        return stored

    async def get(self, job_id: str) -> Versioned | None:
        await asyncio.sleep(0)
        return self.jobs.get(job_id)

    async def records(self, job_id: str) -> bytes | None:
        return self.inputs.get(job_id)

    async def swap(self, old: Versioned, new: Job) -> Versioned | None:
        await asyncio.sleep(0)
        self.swaps += 1
        current = self.jobs.get(old.job.id)
        if current is None or current.version != old.version:
            self.lost_swaps += 1
            return None
        stored = Versioned(new, old.version + 1)
        self.jobs[new.id] = stored
        return stored

    async def due(self, kind: DueKind, now: float, limit: int) -> list[str]:
        scored = []
        for job_id, stored in self.jobs.items():
            index = self.index(stored.job)
            at = index.run_at if kind == "run" else index.callback_at
            if at is not None and at <= now:
                scored.append((at, job_id))
        return [job_id for _, job_id in sorted(scored)[:limit]]

    async def stats(self) -> QueueStats:
        queued = [i.queued_since for i in (self.index(v.job) for v in self.jobs.values()) if i.queued_since is not None]
        return QueueStats(len(queued), min(queued) if queued else None)

    async def purge(self, now: float) -> int:
        gone = [
            job_id
            for job_id, stored in self.jobs.items()
            if (index := self.index(stored.job)).expires_at is not None
            and index.expires_at <= now
            and index.callback_at is None
        ]
        for job_id in gone:
            self.delete(job_id)
        return len(gone)

    async def forget(self, job_id: str) -> None:
        pass  # nothing is indexed apart from the document

    def delete(self, job_id: str) -> None:
        """Drop a job as a purge would (tests: a job that vanishes while it runs)."""
        stored = self.jobs.pop(job_id, None)
        self.inputs.pop(job_id, None)
        if stored is not None and stored.job.idempotency_key is not None:
            self.keys.pop(stored.job.idempotency_key, None)
