"""JobService, the callback deliverer and the housekeeper in process (in-memory store, virtual clock)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from ferry.auth import Principal
from ferry.errors import (
    CallbacksNotConfigured,
    IdempotencyKeyReused,
    JobConflict,
    JobNotFound,
    JobQuotaExceeded,
    JobStoreUnavailable,
)
from ferry.jobs import transitions as t
from ferry.jobs.callbacks import Attempt
from ferry.jobs.delivery import CallbackDeliverer
from ferry.jobs.document import CallbackStatus, Job, ModelRef, Status
from ferry.jobs.housekeeping import PURGE_INTERVAL_S, Housekeeper
from ferry.jobs.service import JobService
from ferry.metrics import Metrics
from ferry.settings import Settings
from support.clock import VirtualClock
from support.memory_store import MemoryJobStore

MODEL = ModelRef(name="m", version="1")
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK = "https://hooks.example.com/ferry"


def settings(**callbacks: Any) -> Settings:
    return Settings(
        callbacks={"signing_secret": SECRET, "max_attempts": 4, "backoff_base_s": 1, "backoff_max_s": 8} | callbacks,
        jobs={"result_ttl_s": 600, "poll_interval_s": 0.2},
    )


async def public_dns(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]  # every name is public here: these tests are not about SSRF


class Rig:
    def __init__(self, config: Settings | None = None) -> None:
        self.clock = VirtualClock()
        self.store = MemoryJobStore()
        self.metrics = Metrics()
        self.settings = config or settings()
        self.service = JobService(self.settings, self.store, self.metrics, self.clock, resolver=public_dns)

    async def submit(self, records: list[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        doc, _ = await self.service.submit(
            records or [1],
            callback_url=kwargs.pop("callback_url", None),
            metadata=kwargs.pop("metadata", None),
            idempotency_key=kwargs.pop("idempotency_key", None),
            request_id="r",
            model=MODEL,
        )
        return doc

    async def finish(self, job_id: str, status: Status = Status.SUCCEEDED) -> Job:
        now = self.clock.time()
        claimed = await self.store.update(
            job_id, lambda j: t.claim(j, owner="p", now=now, lease_s=30, max_attempts=3, ttl_s=600)
        )
        assert claimed is not None and claimed.after is not None
        done = await self.store.update(
            job_id, lambda j: t.succeed(j, owner="p", now=now, result={"predictions": []}, ttl_s=600)
        )
        assert done is not None and done.after is not None
        return done.after

    def job(self, job_id: str) -> Job:
        return self.store.jobs[job_id].job


def run(test: Callable[[Rig], Awaitable[None]], config: Settings | None = None) -> None:
    asyncio.run(test(Rig(config)))


# -- JobService ------------------------------------------------------------------------------------
def test_submit_is_idempotent_per_key_and_refuses_a_reused_key() -> None:
    async def test(rig: Rig) -> None:
        first, created = await rig.service.submit(
            [1, 2], callback_url=None, metadata={"a": 1}, idempotency_key="k1", request_id="r", model=MODEL
        )
        again, created_again = await rig.service.submit(
            [1, 2], callback_url=None, metadata={"a": 1}, idempotency_key="k1", request_id="r2", model=MODEL
        )
        assert created and not created_again and again["id"] == first["id"]
        assert first["status"] == "queued" and first["records"] == 2 and first["metadata"] == {"a": 1}
        with pytest.raises(IdempotencyKeyReused):
            await rig.submit([1, 3], idempotency_key="k1")
        assert await rig.store.records(first["id"]) == orjson.dumps([1, 2])
        assert rig.metrics.jobs_submitted._value.get() == 1

    run(test)


def test_cancel_only_while_queued_and_unknown_ids_are_not_found() -> None:
    async def test(rig: Rig) -> None:
        queued = await rig.submit()
        canceled = await rig.service.cancel(queued["id"])
        assert canceled["status"] == "canceled" and canceled["error"]["code"] == "canceled"
        running = await rig.submit()
        await rig.store.update(
            running["id"],
            lambda j: t.claim(j, owner="p", now=rig.clock.time(), lease_s=30, max_attempts=3, ttl_s=60),
        )
        with pytest.raises(JobConflict, match="a running job cannot be canceled"):
            await rig.service.cancel(running["id"])
        for missing in ("0" * 32, "not-a-job-id", "../../etc/passwd"):
            with pytest.raises(JobNotFound):
                await rig.service.cancel(missing)
            with pytest.raises(JobNotFound):
                await rig.service.get(missing)

    run(test)


def test_redeliver_says_why_it_cannot() -> None:
    async def test(rig: Rig) -> None:
        no_callback = await rig.submit()
        await rig.finish(no_callback["id"])
        with pytest.raises(JobConflict, match="no callback_url"):
            await rig.service.redeliver(no_callback["id"])
        pending = await rig.submit(callback_url=HOOK)
        with pytest.raises(JobConflict, match="has not finished"):
            await rig.service.redeliver(pending["id"])
        await rig.finish(pending["id"])
        with pytest.raises(JobConflict, match="already being delivered"):
            await rig.service.redeliver(pending["id"])

    run(test)


def test_a_callback_url_needs_a_signing_secret() -> None:
    async def test(rig: Rig) -> None:
        with pytest.raises(CallbacksNotConfigured):
            await rig.submit(callback_url=HOOK)

    run(test, Settings())


def test_follow_yields_each_change_and_ends_with_the_terminal_state() -> None:
    async def test(rig: Rig) -> None:
        job = await rig.submit()
        seen: list[str] = []

        async def follow() -> None:
            async for doc in rig.service.follow(job["id"], lambda: False):
                seen.append(doc["status"])

        follower = asyncio.create_task(follow())
        await rig.clock.advance(1)
        await rig.store.update(
            job["id"], lambda j: t.claim(j, owner="p", now=rig.clock.time(), lease_s=30, max_attempts=3, ttl_s=60)
        )
        await rig.clock.advance(1)
        await rig.store.update(job["id"], lambda j: t.renew(j, owner="p", now=rig.clock.time(), lease_s=30))
        await rig.clock.advance(1)
        await rig.store.update(
            job["id"],
            lambda j: t.succeed(j, owner="p", now=rig.clock.time(), result={"predictions": []}, ttl_s=60),
        )
        await rig.clock.advance(1)
        assert follower.done()
        assert seen == ["queued", "running", "succeeded"], "a lease renewal is not a change"

    run(test)


def test_follow_stops_when_the_server_is_stopping() -> None:
    async def test(rig: Rig) -> None:
        job = await rig.submit()
        stopping = False
        seen: list[str] = []

        async def follow() -> None:
            async for doc in rig.service.follow(job["id"], lambda: stopping):
                seen.append(doc["status"])

        follower = asyncio.create_task(follow())
        await rig.clock.advance(1)
        stopping = True
        await rig.clock.advance(1)
        assert follower.done() and seen == ["queued"]

    run(test)


def test_a_store_outage_is_job_store_unavailable() -> None:
    class DownStore(MemoryJobStore):
        async def get(self, job_id: str) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        async def insert(self, job: Job, records: bytes, quota: Any = None) -> Any:
            raise ConnectionRefusedError("redis down")

    async def test(rig: Rig) -> None:
        rig.service.store = DownStore()
        with pytest.raises(JobStoreUnavailable) as refused:
            await rig.service.get("0" * 32)
        assert refused.value.retry_after_s == 2
        with pytest.raises(JobStoreUnavailable):
            await rig.submit()

    run(test)


def test_update_gives_up_with_a_conflict_when_the_job_never_stops_changing() -> None:
    class Contended(MemoryJobStore):
        async def swap(self, old: Any, new: Job) -> Any:
            self.swaps += 1
            return None  # somebody else always wrote first

    async def test(rig: Rig) -> None:
        store = Contended()
        rig.service.store = store
        job = await rig.submit()
        with pytest.raises(JobConflict, match="kept changing"):
            await rig.service.cancel(job["id"])
        assert store.swaps == 20, "bounded: one policy, UPDATE_ATTEMPTS tries"

    run(test)


# -- callback delivery -------------------------------------------------------------------------------
class FakeSender:
    """Answers each attempt from a script: an outcome, a status code and an optional Retry-After."""

    def __init__(self, *script: tuple[t.Delivery, int | None, float | None]) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.closed = False

    async def deliver(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        self.sent.append((url, webhook_id, orjson.loads(body)))
        outcome, status, retry_after = self.script.pop(0) if self.script else (t.Delivery.DELIVERED, 200, None)
        return Attempt(outcome, status, None if status == 200 else f"HTTP {status}", retry_after, 0.01)

    async def aclose(self) -> None:
        self.closed = True


def deliverer(rig: Rig, sender: FakeSender) -> CallbackDeliverer:
    return CallbackDeliverer(
        rig.store, sender, rig.settings.callbacks, metrics=rig.metrics, poll_s=0.2, clock=rig.clock
    )


RETRY_503 = (t.Delivery.RETRY, 503, None)


def test_a_callback_is_retried_with_backoff_until_delivered_with_one_webhook_id() -> None:
    async def test(rig: Rig) -> None:
        sender = FakeSender(RETRY_503, RETRY_503, (t.Delivery.RETRY, 429, 5.0))
        job = await rig.submit(callback_url=HOOK)
        finished = await rig.finish(job["id"])
        worker = deliverer(rig, sender)
        worker.start()
        took = await rig.clock.run_until(lambda: len(sender.sent) == 4, limit_s=60)
        await rig.clock.advance(0.5)
        await worker.stop()
        callback = rig.job(job["id"]).callback
        assert callback is not None and callback.status is CallbackStatus.DELIVERED and callback.attempts == 4
        assert {webhook_id for _, webhook_id, _ in sender.sent} == {f"msg_{job['id']}"}
        assert took >= 5, "Retry-After is a lower bound of the wait"
        body = sender.sent[-1][2]
        assert body["type"] == "job.succeeded" and body["data"]["id"] == job["id"]
        assert body["data"]["finished_at"] is not None and finished.finished_at is not None
        assert sender.closed

    run(test)


def test_an_exhausted_budget_dead_letters_and_a_redelivery_starts_afresh() -> None:
    async def test(rig: Rig) -> None:
        sender = FakeSender(*[RETRY_503] * 4)
        job = await rig.submit(callback_url=HOOK)
        await rig.finish(job["id"])
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.run_until(
            lambda: (cb := rig.job(job["id"]).callback) is not None and cb.status is CallbackStatus.DEAD_LETTER,
            limit_s=120,
        )
        assert len(sender.sent) == 4 and rig.metrics.callback_dead_letters._value.get() == 1
        redelivered = await rig.service.redeliver(job["id"])
        assert redelivered["callback"]["status"] == "pending" and redelivered["callback"]["attempts"] == 0
        await rig.clock.run_until(
            lambda: (cb := rig.job(job["id"]).callback) is not None and cb.status is CallbackStatus.DELIVERED,
            limit_s=5,
        )
        await worker.stop()
        assert len(sender.sent) == 5

    run(test)


def test_a_rejected_callback_is_not_retried() -> None:
    async def test(rig: Rig) -> None:
        sender = FakeSender((t.Delivery.REJECTED, 410, None))
        job = await rig.submit(callback_url=HOOK)
        await rig.finish(job["id"])
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.advance(60)
        await worker.stop()
        callback = rig.job(job["id"]).callback
        assert callback is not None and callback.status is CallbackStatus.DEAD_LETTER
        assert len(sender.sent) == 1 and callback.last_status_code == 410

    run(test)


def test_a_callback_older_than_its_max_age_is_dead_lettered() -> None:
    async def test(rig: Rig) -> None:
        sender = FakeSender(*[RETRY_503] * 3)
        job = await rig.submit(callback_url=HOOK)
        await rig.finish(job["id"])
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.run_until(
            lambda: (cb := rig.job(job["id"]).callback) is not None and cb.status is CallbackStatus.DEAD_LETTER,
            limit_s=60,
        )
        await worker.stop()
        assert len(sender.sent) < 4, "the age limit ended it before the attempt budget"

    run(test, settings(max_age_s=0.5))


def test_a_deliverer_that_died_mid_attempt_leaves_the_callback_due_after_its_lease() -> None:
    async def test(rig: Rig) -> None:
        job = await rig.submit(callback_url=HOOK)
        await rig.finish(job["id"])
        lease_s = rig.settings.callbacks.timeout_s + 5
        taken = await rig.store.update(job["id"], lambda j: t.claim_callback(j, now=rig.clock.time(), lease_s=lease_s))
        assert taken is not None and taken.after is not None  # ... and its deliverer dies
        sender = FakeSender()
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.advance(lease_s - 1)
        assert sender.sent == [], "not while the dead deliverer's lease runs"
        await rig.clock.run_until(lambda: len(sender.sent) == 1, limit_s=2)
        await rig.clock.advance(0.5)
        await worker.stop()
        callback = rig.job(job["id"]).callback
        assert callback is not None and callback.status is CallbackStatus.DELIVERED

    run(test)


# -- housekeeping ----------------------------------------------------------------------------------
def test_housekeeper_reports_the_queue_and_purges_expired_jobs_once_a_minute() -> None:
    async def test(rig: Rig) -> None:
        keeper = Housekeeper(rig.store, rig.metrics, rig.clock)
        old = await rig.submit()
        await rig.clock.advance(31)
        await rig.submit()
        finished = await rig.submit()
        await rig.store.update(finished["id"], lambda j: replace(t.cancel(j, now=rig.clock.time(), ttl_s=1) or j))
        keeper.start()
        await rig.clock.advance(1)
        assert rig.metrics.jobs_queue_depth._value.get() == 2
        assert rig.metrics.jobs_oldest_queued_age._value.get() == pytest.approx(31, abs=0.5)
        assert finished["id"] in rig.store.jobs, "not yet expired at the first purge"
        await rig.clock.advance(PURGE_INTERVAL_S - 5)
        assert finished["id"] in rig.store.jobs, "purges run once per interval"
        await rig.clock.advance(10)
        await keeper.stop()
        assert finished["id"] not in rig.store.jobs and old["id"] in rig.store.jobs

    run(test)


# -- ownership and quotas --------------------------------------------------------------------------
ALICE = Principal("alice", frozenset({"jobs"}))
BOB = Principal("bob", frozenset({"jobs"}))
OPS = Principal("ops", frozenset({"admin"}))


async def submit_as(rig: Rig, principal: Principal | None, key: str | None = None, records: Any = None) -> Any:
    return await rig.service.submit(
        records or [1],
        callback_url=None,
        metadata=None,
        idempotency_key=key,
        request_id="r",
        model=MODEL,
        principal=principal,
    )


def test_another_principals_job_is_not_found_everywhere() -> None:
    async def test(rig: Rig) -> None:
        doc, _ = await submit_as(rig, ALICE)
        job_id = doc["id"]
        for call in (rig.service.get, rig.service.cancel, rig.service.redeliver):
            with pytest.raises(JobNotFound):
                await call(job_id, BOB)
        with pytest.raises(JobNotFound):
            await anext(rig.service.follow(job_id, lambda: True, BOB))
        assert rig.job(job_id).status is Status.QUEUED, "bob's cancel changed nothing"
        assert (await rig.service.get(job_id, OPS))["id"] == job_id
        assert (await rig.service.cancel(job_id, ALICE))["status"] == "canceled"

    run(test)


def test_idempotency_keys_are_scoped_per_principal() -> None:
    async def test(rig: Rig) -> None:
        (a, a_new), (b, b_new) = await submit_as(rig, ALICE, "k"), await submit_as(rig, BOB, "k", [2])
        assert a_new and b_new and a["id"] != b["id"]
        again, again_new = await submit_as(rig, ALICE, "k")
        assert again["id"] == a["id"] and not again_new
        with pytest.raises(IdempotencyKeyReused):
            await submit_as(rig, BOB, "k", [3])
        anonymous, _ = await submit_as(rig, None, "k")
        assert anonymous["id"] not in (a["id"], b["id"])

    run(test)


def test_queue_quotas_in_all_and_per_principal() -> None:
    config = settings().model_copy(
        update={"jobs": settings().jobs.model_copy(update={"max_queued": 5, "max_queued_per_principal": 2})}
    )

    async def test(rig: Rig) -> None:
        await submit_as(rig, ALICE)
        await submit_as(rig, ALICE)
        with pytest.raises(JobQuotaExceeded) as caught:
            await submit_as(rig, ALICE)
        assert caught.value.status == 429 and caught.value.retry_after_s == config.jobs.quota_retry_after_s
        await submit_as(rig, BOB)
        await submit_as(rig, BOB)
        await submit_as(rig, None)
        with pytest.raises(JobQuotaExceeded):
            await submit_as(rig, None)  # 5 queued in all
        first = next(iter(rig.store.jobs))
        await rig.finish(first)  # a finished job leaves the queue
        await submit_as(rig, None)

    run(test, config)


class SlowReceiverSender(FakeSender):
    """Receivers on 'slow.example.com' take 15 s (virtual) to answer, others answer at once."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.delivered_at: dict[str, float] = {}

    async def deliver(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        host = url.split("/")[2]
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.most[host] = max(self.most.get(host, 0), self.in_flight[host])
        try:
            if host.startswith("slow"):
                await self.clock.sleep(15)
            self.delivered_at[webhook_id] = self.clock.monotonic()
            return await super().deliver(url, webhook_id, body)
        finally:
            self.in_flight[host] -= 1


def test_a_slow_receiver_delays_no_other_receivers_callbacks() -> None:
    async def test(rig: Rig) -> None:
        sender = SlowReceiverSender(rig.clock)
        slow = [await rig.submit(callback_url="https://slow.example.com/hook") for _ in range(40)]
        fast = [await rig.submit(callback_url=f"https://fast.example.com:{8443 + i}/hook") for i in range(3)]
        for job in [*slow, *fast]:
            await rig.finish(job["id"])
        ended = rig.clock.monotonic()
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.run_until(lambda: all(f"msg_{j['id']}" in sender.delivered_at for j in fast), limit_s=5)
        late = max(sender.delivered_at[f"msg_{j['id']}"] for j in fast) - ended
        assert late <= 0.5, f"fast receivers waited {late} s behind the slow one"
        assert sender.most == {"slow.example.com": 2} | {f"fast.example.com:{8443 + i}": 1 for i in range(3)}
        await rig.clock.run_until(lambda: len(sender.delivered_at) == 43, limit_s=400, step_s=1)
        assert sender.most["slow.example.com"] == 2, "at most max_per_host at a time to one receiver"
        await worker.stop()

    run(test, settings(max_per_host=2, max_in_flight=8))


def test_attempts_in_flight_are_capped_per_process() -> None:
    async def test(rig: Rig) -> None:
        sender = SlowReceiverSender(rig.clock)
        jobs = [await rig.submit(callback_url=f"https://slow{i}.example.com/hook") for i in range(10)]
        for job in jobs:
            await rig.finish(job["id"])
        worker = deliverer(rig, sender)
        worker.start()
        await rig.clock.advance(1)
        assert worker.in_flight == 4 and sum(sender.in_flight.values()) == 4
        await rig.clock.run_until(lambda: len(sender.delivered_at) == 10, limit_s=100, step_s=1)
        await worker.stop()

    run(test, settings(max_per_host=2, max_in_flight=4))
