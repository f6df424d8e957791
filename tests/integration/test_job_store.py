"""One contract, three stores: every test runs against SQLite, a real redis-server, and the in-memory
store the in-process tests use (so the fake is proven to behave like the real ones)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ferry.errors import JobQuotaExceeded, JobStoreFull
from ferry.jobs import transitions as t
from ferry.jobs.document import Job, ModelRef, new_job
from ferry.jobs.redis_store import RedisJobStore
from ferry.jobs.sqlite_store import SCHEMA, SqliteJobStore
from ferry.jobs.store import JobStore, Quota
from support.memory_store import MemoryJobStore

MODEL = ModelRef(name="m", version="1")


@pytest.fixture(params=["sqlite", "redis", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], JobStore]:
    """A factory: every call is a new store object (another process, as far as the store knows)
    over the same data."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda: RedisJobStore(url, prefix)
    if request.param == "memory":
        shared = MemoryJobStore()
        return lambda: shared
    return lambda: SqliteJobStore(tmp_path / "jobs.sqlite3")


def run(make_store: Callable[[], JobStore], body: Callable[..., Awaitable[Any]], stores: int = 1) -> Any:
    async def main() -> Any:
        opened = [make_store() for _ in range(stores)]
        for store in opened:
            await store.open()
        try:
            return await body(*opened)
        finally:
            for store in opened:
                await store.close()

    return asyncio.run(main())


def job(now: float | None = None, *, key: str | None = None, callback: str | None = None, h: str = "h") -> Job:
    now = time.time() if now is None else now
    return new_job(
        now=now,
        records=1,
        callback_url=callback,
        metadata={"k": "v"},
        idempotency_key=key,
        request_hash=h,
        request_id="r",
        model=MODEL,
    )


def claim(doc: Job, owner: str = "a", now: float | None = None, lease_s: float = 30) -> Job:
    claimed = t.claim(
        doc, owner=owner, now=time.time() if now is None else now, lease_s=lease_s, max_attempts=3, ttl_s=60
    )
    assert claimed is not None
    return claimed


def test_insert_get_and_records(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        doc = job()
        stored = await store.insert(doc, b'[{"x": 1}]')
        assert stored.version == 1
        found = await store.get(doc.id)
        assert found is not None and found.job == doc
        assert await store.records(doc.id) == b'[{"x": 1}]'
        assert await store.get(uuid.uuid4().hex) is None

    run(make_store, body)


def test_same_idempotency_key_returns_the_first_job(make_store: Callable[[], JobStore]) -> None:
    async def body(a: JobStore, b: JobStore) -> None:
        first, second = job(key="k"), job(key="k")
        results = await asyncio.gather(a.insert(first, b"[]"), b.insert(second, b"[]"))
        ids = {r.job.id for r in results}
        assert len(ids) == 1, "two jobs for one Idempotency-Key"

    run(make_store, body, stores=2)


def test_swap_is_compare_and_set(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        stored = await store.insert(job(), b"[]")
        mine = await store.swap(stored, claim(stored.job, "a"))
        assert mine is not None and mine.version == 2
        assert await store.swap(stored, claim(stored.job, "b")) is None, "a stale version must not win"
        found = await store.get(stored.job.id)
        assert found is not None and found.job.runner == "a"

    run(make_store, body)


def test_exactly_one_of_many_racing_runners_claims_a_job(make_store: Callable[[], JobStore]) -> None:
    async def body(*stores: JobStore) -> None:
        stored = await stores[0].insert(job(), b"[]")

        # Every runner reads the queued job first, then all write: only the compare-and-set decides.
        reads = [await s.get(stored.job.id) for s in stores]
        assert all(r is not None and r.version == 1 for r in reads)
        wins = await asyncio.gather(
            *(s.swap(r, claim(r.job, f"r{i}")) for i, (s, r) in enumerate(zip(stores, reads, strict=True)) if r)
        )
        assert sum(w is not None for w in wins) == 1

    run(make_store, body, stores=4)


def test_due_holds_queued_jobs_and_expired_leases_only(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        now = time.time()
        queued = await store.insert(job(now), b"[]")
        leased = await store.insert(job(now), b"[]")
        await store.swap(leased, claim(leased.job, "a", now=now, lease_s=30))
        expiring = await store.insert(job(now), b"[]")
        await store.swap(expiring, claim(expiring.job, "b", now=now, lease_s=0.5))
        due_now = await store.due("run", now + 0.1, 10)
        assert due_now == [queued.job.id]
        due_later = await store.due("run", now + 1, 10)
        assert set(due_later) == {queued.job.id, expiring.job.id}, "a dead runner's job must come back"

    run(make_store, body)


def test_queue_stats(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        assert (await store.stats()).queued == 0
        first = await store.insert(job(1000.0), b"[]")
        await store.insert(job(2000.0), b"[]")
        await store.swap(first, claim(first.job, "a"))
        stats = await store.stats()
        assert stats.queued == 1 and stats.oldest_queued_at == 2000.0

    run(make_store, body)


def test_callback_index_follows_delivery(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        now = time.time()
        stored = await store.insert(job(now, callback="https://example.com/h"), b"[]")
        running = await store.swap(stored, claim(stored.job, "a", now=now))
        assert running is not None and await store.due("callback", now + 1, 10) == []
        done = t.succeed(running.job, owner="a", now=now, result={"predictions": []}, ttl_s=60)
        assert done is not None
        finished = await store.swap(running, done)
        assert finished is not None and await store.due("callback", now + 0.01, 10) == [stored.job.id]
        leased = t.claim_callback(finished.job, now=now + 0.01, lease_s=15)
        assert leased is not None
        leased_v = await store.swap(finished, leased)
        assert leased_v is not None and await store.due("callback", now + 1, 10) == []
        assert await store.due("callback", now + 16, 10) == [stored.job.id], "a dead deliverer's lease expires"
        delivered = t.callback_attempted(
            leased_v.job, now=now + 1, outcome=t.Delivery.DELIVERED, status_code=200, error=None, next_at=None
        )
        assert delivered is not None and await store.swap(leased_v, delivered) is not None
        assert await store.due("callback", now + 100, 10) == []

    run(make_store, body)


def test_finished_jobs_expire(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        now = time.time()
        stored = await store.insert(job(now), b"[]")
        canceled = t.cancel(stored.job, now=now, ttl_s=0.5)
        assert canceled is not None
        assert await store.swap(stored, canceled) is not None
        kept = await store.insert(job(now), b"[]")
        await asyncio.sleep(0.7)
        await store.purge(time.time())
        assert await store.get(stored.job.id) is None, "a finished job outlived its TTL"
        assert await store.get(kept.job.id) is not None, "a queued job never expires"

    run(make_store, body)


def test_forget_drops_a_vanished_job_from_the_redis_indexes(redis_url: str) -> None:
    """Redis only: a SQLite row cannot vanish from its own index, a Redis hash can (TTL, manual DEL)."""
    store = RedisJobStore(redis_url, f"t{uuid.uuid4().hex[:8]}")

    async def body(store: JobStore) -> None:
        assert isinstance(store, RedisJobStore)
        stored = await store.insert(job(), b"[]")
        await store.redis.delete(store._key("job", stored.job.id))
        assert await store.due("run", time.time() + 1, 10) == [stored.job.id]
        await store.forget(stored.job.id)
        assert await store.due("run", time.time() + 1, 10) == []

    run(lambda: store, body)


def test_update_applies_every_concurrent_writer_once(make_store: Callable[[], JobStore]) -> None:
    """Eight writers (eight stores: eight processes, as far as the store knows) change the same job at
    once; update() re-reads after a lost compare-and-set, so no write is lost and none is doubled."""

    async def body(*stores: JobStore) -> None:
        stored = await stores[0].insert(job(), b"[]")

        def mark(i: int) -> Callable[[Job], Job | None]:
            return lambda doc: replace(doc, metadata={**doc.metadata, f"w{i}": len(doc.metadata)})

        results = await asyncio.gather(*(s.update(stored.job.id, mark(i)) for i, s in enumerate(stores)))
        assert all(r is not None and r.after is not None for r in results)
        final = await stores[0].get(stored.job.id)
        assert final is not None and final.version == 1 + len(stores)
        marks = sorted(v for k, v in final.job.metadata.items() if k.startswith("w"))
        assert marks == list(range(1, 1 + len(stores))), "each write saw the one before it"

    run(make_store, body, stores=8)


def test_update_reports_a_refused_transition_and_a_missing_job(make_store: Callable[[], JobStore]) -> None:
    async def body(store: JobStore) -> None:
        stored = await store.insert(job(), b"[]")
        running = await store.update(stored.job.id, lambda doc: claim(doc, "a"))
        assert running is not None and running.after is not None and running.before == stored.job
        refused = await store.update(stored.job.id, lambda doc: t.cancel(doc, now=time.time(), ttl_s=60))
        assert refused is not None and refused.after is None and refused.before == running.after
        assert await store.update(uuid.uuid4().hex, lambda doc: doc) is None

    run(make_store, body)


def _open_store(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # every process opens the fresh file at the same moment
    try:
        asyncio.run(SqliteJobStore(Path(path)).open())
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_fresh_sqlite_file_together_never_fail(tmp_path: Path) -> None:
    """Before the bounded retry, 8 of 200 three-process starts failed with "database is locked"
    (switching a fresh file to WAL does not wait on the busy timeout)."""
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(60):
        barrier, results = context.Barrier(3), context.Queue()
        path = tmp_path / f"r{round_}" / "jobs.sqlite3"
        processes = [context.Process(target=_open_store, args=(str(path), barrier, results)) for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
        failures += [r for r in (results.get(timeout=5) for _ in processes) if r != "ok"]
    assert failures == []


def owned(owner: str | None, key: str | None = None) -> Job:
    return replace(job(key=key), owner=owner)


def test_idempotency_keys_are_per_owner(make_store) -> None:
    async def body(store: JobStore) -> None:
        a = await store.insert(owned("alice", "k"), b"[1]")
        b = await store.insert(owned("bob", "k"), b"[1]")
        anonymous = await store.insert(owned(None, "k"), b"[1]")
        assert len({a.job.id, b.job.id, anonymous.job.id}) == 3
        replay = await store.insert(owned("alice", "k"), b"[1]")
        assert replay.job.id == a.job.id and replay.job.owner == "alice"
        # An owner whose name ends where another's key begins cannot collide ("a b" + "c" vs "a" + "b c").
        assert (await store.insert(owned("a b", "c"), b"[1]")).job.id != (
            await store.insert(owned("a", "b"), b"[1]")
        ).job.id

    run(make_store, body)


def test_quotas_refuse_atomically_with_the_insert(make_store) -> None:
    quota = Quota(max_queued=4, max_queued_owner=2, max_bytes=1 << 30, retry_after_s=7)

    async def body(store: JobStore) -> None:
        first = await store.insert(owned("alice"), b"[1]", quota)
        await store.insert(owned("alice"), b"[1]", quota)
        with pytest.raises(JobQuotaExceeded) as caught:
            await store.insert(owned("alice"), b"[1]", quota)
        assert caught.value.retry_after_s == 7
        await store.insert(owned("bob"), b"[1]", quota)
        await store.insert(owned(None), b"[1]", quota)
        with pytest.raises(JobQuotaExceeded):
            await store.insert(owned(None), b"[1]", quota)  # 4 queued in all
        # A job that leaves the queue frees a place, in all and for its owner.
        assert await store.update(first.job.id, lambda j: claim(j)) is not None
        await store.insert(owned("alice"), b"[1]", quota)
        with pytest.raises(JobStoreFull):
            await store.insert(owned("carol"), b"[1]", replace(quota, max_queued=100, max_bytes=1))

    run(make_store, body)


def test_a_sqlite_file_from_before_job_owners_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA.replace("    owner TEXT,\n", ""))
    assert "owner" not in {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}

    async def body() -> None:
        stores = [SqliteJobStore(path), SqliteJobStore(path)]
        await asyncio.gather(*(store.open() for store in stores))  # two workers upgrading together
        try:
            stored = await stores[0].insert(owned("alice", "k"), b"[1]")
            assert (await stores[1].get(stored.job.id)) is not None
        finally:
            for store in stores:
                await store.close()

    asyncio.run(body())


def test_an_owners_bytes_are_capped_until_its_jobs_expire(make_store) -> None:
    records = b"[" + b"1," * 499 + b"1]"  # 1,000 bytes
    per_job = 2 * len(records) + 1000  # input twice (the result to come) and a generous document
    quota = Quota(max_queued=100, max_queued_owner=100, max_bytes=1 << 30, retry_after_s=7, max_bytes_owner=2 * per_job)

    async def body(store: JobStore) -> None:
        first = await store.insert(owned("alice"), records, quota)
        await store.insert(owned("alice"), records, quota)
        with pytest.raises(JobStoreFull) as caught:
            await store.insert(owned("alice"), records, quota)
        assert caught.value.retry_after_s == 7 and "your jobs" in caught.value.message
        await store.insert(owned("bob"), records, quota)  # another owner's share is its own
        await store.insert(owned(None), records, quota)  # no owner: only the store-wide limit
        # A job that ended and expired no longer counts.
        ended = await store.update(first.job.id, lambda j: t.cancel(j, now=time.time() - 120, ttl_s=60))
        assert ended is not None and ended.after is not None
        await store.purge(time.time())
        await store.insert(owned("alice"), records, quota)

    run(make_store, body)
