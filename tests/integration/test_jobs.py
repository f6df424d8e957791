"""Async jobs end to end: real gunicorn (2 workers), real SQLite file and real redis-server, a real
local callback receiver."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from ferry import webhooks
from ferry.jobs.redis_store import RedisJobStore
from ferry_client.protocol import TERMINAL_JOB_STATUSES
from support.models import TRUSTED_CARDLESS, SlowModel
from support.receiver import Receiver
from support.server import Server, free_port

SECRET = webhooks.generate_secret()
TERMINAL = TERMINAL_JOB_STATUSES
# Callback allowlists name a port, never a whole host: every Receiver of this module listens on this one.
RECEIVER_PORT = free_port()


def receiver(**kw: Any) -> Receiver:
    return Receiver(port=RECEIVER_PORT, **kw)


def job_env(store: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        "FERRY_CALLBACKS__SIGNING_SECRET": SECRET,
        "FERRY_CALLBACKS__ALLOW_HTTP": "true",
        "FERRY_CALLBACKS__ALLOW_HOSTS": f'["127.0.0.1:{RECEIVER_PORT}"]',
        "FERRY_CALLBACKS__BACKOFF_BASE_S": "0.2",
        "FERRY_CALLBACKS__BACKOFF_MAX_S": "0.5",
        "FERRY_JOBS__POLL_INTERVAL_S": "0.05",
        "FERRY_JOBS__LEASE_S": "2",
        "FERRY_JOBS__STORE": store,
    }
    if store == "redis":
        assert redis_url is not None
        env |= {"FERRY_JOBS__REDIS_URL": redis_url, "FERRY_JOBS__REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    return env | extra


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return job_env(request.param, redis_url)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store_server(
    request: pytest.FixtureRequest, churn_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per store, default job settings, for the tests that only submit jobs and read them
    back: a start less per test (those needing other settings or killing processes start their own)."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    workdir = tmp_path_factory.mktemp(f"jobs-{request.param}")
    srv = Server(workdir, churn_model, env=job_env(request.param, redis_url)).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.joblib"
    joblib.dump(SlowModel(delay_s=3.0), path)
    return path


def submit(url: str, records: list[Any], **body: Any) -> httpx.Response:
    headers = {"idempotency-key": body.pop("key")} if "key" in body else {}
    return httpx.post(f"{url}/api/v1/jobs", json={"records": records, **body}, headers=headers, timeout=30)


def wait_terminal(url: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['status']}")


def terminal_entries(job: dict[str, Any]) -> list[str]:
    return [h["status"] for h in job["history"] if h["status"] in TERMINAL]


@pytest.fixture
def server_with(tmp_path: Path, churn_model: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(env: dict[str, str], model: Path | None = None, **kw: Any) -> Server:
        if model is not None:  # the module's test models are card-less pickles
            env = TRUSTED_CARDLESS | env
        srv = Server(tmp_path / f"srv{len(started)}", model or churn_model, env=env, **kw).start()
        started.append(srv)
        return srv

    yield start
    running = [srv for srv in started if srv.process is not None and srv.process.poll() is None]
    for srv in running:  # all at once: each drains for a second or two
        srv.signal()
    for srv in running:
        srv.wait_exit(30)


def test_a_job_submitted_through_one_worker_is_visible_through_the_other(store_server, record) -> None:
    srv = store_server
    created = submit(srv.url, [record, record], metadata={"batch": "b1"})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/api/v1/jobs/{job_id}"
    job = wait_terminal(srv.url, job_id)
    assert job["status"] == "succeeded" and job["metadata"] == {"batch": "b1"}
    assert len(job["result"]["predictions"]) == 2
    pids: set[int] = set()
    for _ in range(200):  # a new connection each time: the kernel picks the worker, so read until both did
        assert httpx.get(f"{srv.url}/api/v1/jobs/{job_id}", timeout=10).json()["status"] == "succeeded"
        pids = {
            r["pid"] for r in srv.records() if r.get("event") == "request" and r.get("path") == f"/api/v1/jobs/{job_id}"
        }
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"every read went to one worker ({pids}); cannot show cross-worker visibility"
    post_pid = next(  # this test's submission: the shared server logs other tests' too
        r["pid"]
        for r in srv.records()
        if r.get("event") == "request" and r.get("request_id") == created.headers["x-request-id"]
    )
    assert post_pid in pids


def test_idempotency_cancel_and_not_found(server_with, store_env, record) -> None:
    srv = server_with(store_env | {"FERRY_JOBS__RUNNERS": "0"})  # nothing runs: jobs stay queued
    first = submit(srv.url, [record], key="order-1")
    again = submit(srv.url, [record], key="order-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit(srv.url, [record, record], key="order-1")
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    job_id = first.json()["id"]
    canceled = httpx.delete(f"{srv.url}/api/v1/jobs/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    twice = httpx.delete(f"{srv.url}/api/v1/jobs/{job_id}")
    assert (twice.status_code, twice.json()["code"]) == (409, "job_conflict")
    events = httpx.get(f"{srv.url}/api/v1/jobs/{job_id}/events", timeout=10)
    assert events.text.count("event: status") == 1 and '"status":"canceled"' in events.text
    missing = httpx.get(f"{srv.url}/api/v1/jobs/{uuid.uuid4().hex}")
    assert (missing.status_code, missing.json()["code"]) == (404, "job_not_found")
    many = [record] * 1500  # validated a slice at a time: an error keeps the record's own index
    many[1234] = {**record, "contract_type": "lifetime"}
    invalid = submit(srv.url, many)
    assert (invalid.status_code, invalid.json()["code"]) == (422, "validation_error")
    assert [d["loc"] for d in invalid.json()["details"]] == [["body", "records", 1234, "contract_type"]]


def test_events_stream_follows_the_job_to_its_end(server_with, slow_model) -> None:
    srv = server_with(job_env("sqlite", None, FERRY_JOBS__LEASE_S="5"), model=slow_model)
    job_id = submit(srv.url, [[1.0, 2.0, 3.0]]).json()["id"]
    statuses = []
    with httpx.stream("GET", f"{srv.url}/api/v1/jobs/{job_id}/events", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: "):
                statuses.append(httpx.Response(200, content=line[6:]).json()["status"])
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert statuses == list(dict.fromkeys(statuses)), f"an event repeated a status: {statuses}"


def test_callback_retried_until_delivered_with_one_webhook_id(store_server, record) -> None:
    srv = store_server
    with receiver(answer=lambda n: (503, {}) if n < 3 else (200, {})) as hook:
        job_id = submit(srv.url, [record], callback_url=hook.url).json()["id"]
        received = hook.wait_for(4)
        job = wait_terminal(srv.url, job_id)
        deadline = time.monotonic() + 10
        while job["callback"]["status"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
            job = httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json()
    assert {r.headers["webhook-id"] for r in received} == {f"msg_{job_id}"}
    last = received[-1]
    webhooks.verify(last.body, last.headers, SECRET)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(last.body, last.headers, webhooks.generate_secret())
    payload = httpx.Response(200, content=last.body).json()
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id
    assert payload["data"]["result"] == job["result"]
    assert job["callback"] | {"last_attempt_at": None, "delivered_at": None} == job["callback"] | {
        "status": "delivered",
        "attempts": 4,
        "last_status_code": 200,
        "last_attempt_at": None,
        "delivered_at": None,
    }


def test_dead_letter_then_redeliver(server_with, record) -> None:
    env = job_env("sqlite", None, FERRY_CALLBACKS__MAX_ATTEMPTS="2")
    srv = server_with(env)
    answers = {"status": 500}
    with receiver(answer=lambda n: (answers["status"], {})) as hook:
        job_id = submit(srv.url, [record], callback_url=hook.url).json()["id"]
        hook.wait_for(2)
        deadline = time.monotonic() + 10
        while (job := httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json())["callback"]["status"] != "dead_letter":
            assert time.monotonic() < deadline, job["callback"]
            time.sleep(0.1)
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "ferry_callback_dead_letters_total 1.0" in metrics
        answers["status"] = 204
        again = httpx.post(f"{srv.url}/api/v1/jobs/{job_id}/callback/redeliver")
        assert again.status_code == 202 and again.json()["callback"]["status"] == "pending"
        received = hook.wait_for(3)
    assert received[-1].headers["webhook-id"] == received[0].headers["webhook-id"] == f"msg_{job_id}"
    webhooks.verify(received[-1].body, received[-1].headers, SECRET)


def test_a_job_survives_kill_9_of_its_runner(server_with, store_env, slow_model) -> None:
    srv = server_with(store_env, model=slow_model)
    with receiver() as hook:
        job_id = submit(srv.url, [[1.0, 2.0, 3.0]], callback_url=hook.url).json()["id"]
        deadline = time.monotonic() + 20
        while (job := httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json())["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the 3 s model call
        # Job documents name an opaque runner id; only the log maps it to a process.
        runner_id = job["runner"].split(":")[0]
        assert str(os.getpid()) not in job["runner"] and socket.gethostname() not in job["runner"]
        starts = [r for r in srv.records() if r.get("event") == "worker_started" and r.get("runner_id") == runner_id]
        runner_pid = starts[0]["pid"]
        assert runner_pid in srv.worker_pids()
        os.kill(runner_pid, signal.SIGKILL)
        job = wait_terminal(srv.url, job_id, timeout=60)
        hook.wait_for(1)
        time.sleep(1.0)  # a duplicate delivery, if any, would arrive now
    assert job["status"] == "succeeded", job
    assert terminal_entries(job) == ["succeeded"], "exactly one terminal state"
    assert job["attempts"] == 2 and "lost" in [h["status"] for h in job["history"]]
    assert {r.headers["webhook-id"] for r in hook.requests} == {f"msg_{job_id}"}
    assert 'ferry_job_runs_total{kind="reclaim"} 1.0' in httpx.get(f"{srv.url}/metrics").text


def submit_many(url: str, records: list[Any], count: int) -> list[str]:
    """``count`` submissions, 32 at a time (one shared client: a client per call costs a TLS context)."""
    with (
        httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=32)) as client,
        concurrent.futures.ThreadPoolExecutor(32) as pool,
    ):
        responses = list(pool.map(lambda _: client.post("/api/v1/jobs", json={"records": records}), range(count)))
    assert all(r.status_code == 202 for r in responses), {r.status_code for r in responses}
    return [r.json()["id"] for r in responses]


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return {job_id: client.get(f"/api/v1/jobs/{job_id}").json()["status"] for job_id in ids}


def wait_all(url: str, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = statuses(url, ids)
        if all(s in TERMINAL for s in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_a_thousand_concurrent_jobs_all_finish(server_with, record) -> None:
    srv = server_with(job_env("sqlite", None, FERRY_JOBS__RUNNERS="2"))
    ids = submit_many(srv.url, [record], 1000)
    assert len(set(ids)) == 1000
    final = wait_all(srv.url, ids, timeout=120)
    assert set(final.values()) == {"succeeded"}, {s: list(final.values()).count(s) for s in set(final.values())}


def test_redis_restart_of_every_ferry_process_loses_no_job(server_with, redis_url, tmp_path) -> None:
    model = tmp_path / "fast-slow.joblib"
    joblib.dump(SlowModel(delay_s=0.02), model)
    env = job_env("redis", redis_url)
    api = server_with(env | {"FERRY_JOBS__RUNNERS": "0"}, model=model)
    ids = submit_many(api.url, [[1.0, 2.0, 3.0]], 1000)
    worker_env = env | {"FERRY_JOBS__RUNNERS": "2"}
    worker = server_with(worker_env, model=model, command="worker")
    deadline = time.monotonic() + 60
    while sum(s == "succeeded" for s in statuses(api.url, ids[:200]).values()) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert worker.stop() == 0 and api.stop() == 0  # every ferry process, mid-way
    done_at_restart = sum(s in TERMINAL for s in stored_statuses(env, ids).values())
    assert 0 < done_at_restart < 1000, done_at_restart
    server_with(worker_env, model=model, command="worker")
    api2 = server_with(env | {"FERRY_JOBS__RUNNERS": "2"}, model=model)
    final = wait_all(api2.url, ids, timeout=120)
    assert set(final.values()) == {"succeeded"}, {s: list(final.values()).count(s) for s in set(final.values())}
    jobs = [httpx.get(f"{api2.url}/api/v1/jobs/{i}").json() for i in ids[:50]]
    assert all(terminal_entries(j) == ["succeeded"] for j in jobs)


def stored_statuses(env: dict[str, str], ids: list[str]) -> dict[str, str]:
    """Read the jobs straight from Redis while no ferry process runs."""
    store = RedisJobStore(env["FERRY_JOBS__REDIS_URL"], env["FERRY_JOBS__REDIS_PREFIX"])

    async def read() -> dict[str, str]:
        await store.open()
        try:
            found = {job_id: await store.get(job_id) for job_id in ids}
        finally:
            await store.close()
        return {job_id: v.job.status.value if v else "missing" for job_id, v in found.items()}

    return asyncio.run(read())


def test_callback_urls_to_private_addresses_are_refused_unless_allowlisted(server_with, record) -> None:
    env = job_env("sqlite", None, FERRY_CALLBACKS__ALLOW_HTTP="false", FERRY_JOBS__RUNNERS="0")
    srv = server_with(env | {"FERRY_CALLBACKS__ALLOW_HOSTS": '["127.0.0.1:443"]'})
    for url in (
        "https://127.0.0.2/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://localhost/hook",  # a name that resolves to loopback
        "https://2130706433/hook",  # 127.0.0.1 written as one number
        "http://example.com/hook",  # http without FERRY_CALLBACKS__ALLOW_HTTP
        "https://user:pw@example.com/hook",
    ):
        refused = submit(srv.url, [record], callback_url=url)
        assert (refused.status_code, refused.json()["code"]) == (422, "callback_url_forbidden"), (url, refused.text)
    allowed = submit(srv.url, [record], callback_url="https://127.0.0.1/hook")
    assert allowed.status_code == 202, allowed.text
    assert allowed.json()["callback"]["webhook_id"] == f"msg_{allowed.json()['id']}"


def test_an_unreachable_job_store_is_a_503_not_a_500(server_with, record) -> None:
    from support.server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    srv = server_with(job_env("redis", dead))
    refused = submit(srv.url, [record])
    assert (refused.status_code, refused.json()["code"]) == (503, "job_store_unavailable"), refused.text
    assert refused.headers["retry-after"] == "2"
    lookup = httpx.get(f"{srv.url}/api/v1/jobs/{uuid.uuid4().hex}")
    assert (lookup.status_code, lookup.json()["code"]) == (503, "job_store_unavailable")
    assert httpx.get(f"{srv.url}/readyz").status_code == 200, "predictions do not depend on the job store"
    assert httpx.post(f"{srv.url}/api/v1/predict", json={"record": record}).status_code == 200
