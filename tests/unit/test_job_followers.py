"""Job event followers: one shared poll per job, fan-out, and the per-process stream cap
(in-memory store, virtual clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ferry.errors import TooManyStreams
from ferry.jobs import transitions as t
from ferry.jobs.document import ModelRef, new_job
from ferry.jobs.followers import JobFollowers
from support.clock import VirtualClock
from support.memory_store import MemoryJobStore

POLL_S = 0.2


class CountingStore(MemoryJobStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, job_id: str):
        self.gets += 1
        return await super().get(job_id)


def run(
    test: Callable[[VirtualClock, CountingStore, JobFollowers], Awaitable[None]], max_streams: int = 10_000
) -> None:
    async def main() -> None:
        clock, store = VirtualClock(), CountingStore()
        await test(clock, store, JobFollowers(store, poll_s=POLL_S, max_streams=max_streams, clock=clock))

    asyncio.run(main())


async def _job(store: MemoryJobStore, clock: VirtualClock) -> str:
    job = new_job(
        now=clock.time(),
        records=1,
        callback_url=None,
        metadata=None,
        idempotency_key=None,
        request_hash="h",
        request_id="r",
        model=ModelRef(name="m", version="1"),
    )
    await store.insert(job, b"[[1]]")
    return job.id


def test_a_thousand_followers_of_one_job_share_one_poll_and_all_see_every_change() -> None:
    async def test(clock: VirtualClock, store: CountingStore, followers: JobFollowers) -> None:
        job_id = await _job(store, clock)
        first = (await store.get(job_id)).job  # type: ignore[union-attr]
        seen: list[list[str]] = [[] for _ in range(1000)]

        async def follow(into: list[str]) -> None:
            async for job in followers.follow(first, lambda: False):
                into.append(job.status.value)

        tasks = [asyncio.create_task(follow(into)) for into in seen]
        await clock.advance(1)
        store.gets = 0
        await clock.advance(10)  # 50 poll intervals without a change
        assert store.gets == 50, "one poll per interval for all 1000 followers"
        assert followers.watched_jobs == 1
        await store.update(
            job_id, lambda j: t.claim(j, owner="p", now=clock.time(), lease_s=30, max_attempts=3, ttl_s=60)
        )
        await clock.advance(1)
        await store.update(job_id, lambda j: t.renew(j, owner="p", now=clock.time(), lease_s=30))
        await clock.advance(1)
        await store.update(
            job_id, lambda j: t.succeed(j, owner="p", now=clock.time(), result={"predictions": []}, ttl_s=60)
        )
        await clock.advance(1)
        assert all(task.done() for task in tasks)
        assert all(s == ["queued", "running", "succeeded"] for s in seen)
        assert followers.watched_jobs == 0
        gets = store.gets
        await clock.advance(10)
        assert store.gets == gets, "the poll stopped with the job's end"

    run(test)


def test_the_poll_stops_when_the_last_follower_leaves_and_restarts_for_a_new_one() -> None:
    async def test(clock: VirtualClock, store: CountingStore, followers: JobFollowers) -> None:
        job_id = await _job(store, clock)
        first = (await store.get(job_id)).job  # type: ignore[union-attr]

        async def follow() -> None:
            async for _ in followers.follow(first, lambda: False):
                pass

        tasks = [asyncio.create_task(follow()) for _ in range(3)]
        await clock.advance(1)
        for task in tasks:
            task.cancel()
        await clock.advance(1)
        assert followers.watched_jobs == 0
        gets = store.gets
        await clock.advance(5)
        assert store.gets == gets
        again = asyncio.create_task(follow())
        await clock.advance(1)
        assert followers.watched_jobs == 1 and store.gets > gets
        again.cancel()
        await clock.advance(1)

    run(test)


def test_followers_end_when_the_server_stops_or_the_job_is_gone() -> None:
    async def test(clock: VirtualClock, store: CountingStore, followers: JobFollowers) -> None:
        stopping = False
        ids = [await _job(store, clock) for _ in range(2)]
        firsts = [(await store.get(i)).job for i in ids]  # type: ignore[union-attr]

        async def follow(first) -> list[str]:
            return [job.status.value async for job in followers.follow(first, lambda: stopping)]

        stopped = asyncio.create_task(follow(firsts[0]))
        gone = asyncio.create_task(follow(firsts[1]))
        await clock.advance(1)
        store.delete(ids[1])
        await clock.advance(1)
        assert gone.done() and gone.result() == ["queued"]
        assert not stopped.done()
        stopping = True
        await clock.advance(1)
        assert stopped.done() and stopped.result() == ["queued"]

    run(test)


def test_streams_beyond_the_cap_are_refused_and_released_slots_are_reused() -> None:
    async def test(clock: VirtualClock, store: CountingStore, followers: JobFollowers) -> None:
        releases = [followers.reserve() for _ in range(3)]
        with pytest.raises(TooManyStreams) as refused:
            followers.reserve()
        assert refused.value.status == 503 and refused.value.retry_after_s
        releases[0]()
        releases[0]()  # twice is once
        assert followers.open_streams == 2
        followers.reserve()
        with pytest.raises(TooManyStreams):
            followers.reserve()

    run(test, max_streams=3)
