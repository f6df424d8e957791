"""What a hostile client can make the job path hold or reveal: store size, callback targets, receiver
replies, metadata shape. Real service, 2 workers, SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry import webhooks
from support.receiver import Receiver
from support.server import Server, free_port

MAX_STORE = 16 * 1024 * 1024
RECEIVER_PORT = free_port()
SECRET_REPLY = b"internal-admin-page: token=s3cr3t-from-the-receiver"


@pytest.fixture(scope="module")
def srv(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FERRY_JOBS__MAX_STORE_BYTES": str(MAX_STORE),
        "FERRY_CALLBACKS__SIGNING_SECRET": webhooks.generate_secret(),
        "FERRY_CALLBACKS__ALLOW_HTTP": "true",
        "FERRY_CALLBACKS__ALLOW_HOSTS": f'["127.0.0.1:{RECEIVER_PORT}"]',
        "FERRY_CALLBACKS__MAX_ATTEMPTS": "1",
        "FERRY_JOBS__POLL_INTERVAL_S": "0.05",
    }
    server = Server(tmp_path_factory.mktemp("limits"), churn_model, env=env).start()
    yield server
    assert server.stop() == 0, server.output()[-2000:]


def submit(url: str, records: list[Any], **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/jobs", json={"records": records, **body}, timeout=30)


def test_a_callback_to_another_port_of_an_allowlisted_host_is_refused(srv: Server, record: dict) -> None:
    for port in (RECEIVER_PORT + 1, 22, 6379, srv.port):
        response = submit(srv.url, [record], callback_url=f"http://127.0.0.1:{port}/hook")
        assert (response.status_code, response.json()["code"]) == (422, "callback_url_forbidden"), port
    assert submit(srv.url, [record], callback_url=f"http://127.0.0.1:{RECEIVER_PORT}/hook").status_code == 202


def test_a_receivers_reply_body_never_reaches_the_job(srv: Server, record: dict) -> None:
    with Receiver(
        port=RECEIVER_PORT, answer=lambda n: (400, {"content-type": "text/plain"}), reply=SECRET_REPLY
    ) as hook:
        job_id = submit(srv.url, [record], callback_url=hook.url).json()["id"]
        hook.wait_for(1)
        job: dict[str, Any] = {}
        for _ in range(100):
            job = httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json()
            if job["callback"]["status"] == "dead_letter":
                break
            time.sleep(0.1)
    assert job["callback"]["status"] == "dead_letter", job["callback"]
    assert job["callback"]["last_status_code"] == 400 and job["callback"]["last_error"] == "HTTP 400"
    events = httpx.get(f"{srv.url}/api/v1/jobs/{job_id}/events", timeout=10).text
    for text in (str(job), events):
        assert "s3cr3t" not in text and "internal-admin-page" not in text


@pytest.mark.parametrize("depth", [33, 254, 300, 5000])
def test_deep_metadata_is_422_not_500(srv: Server, record: dict, depth: int) -> None:
    body = b'{"records": [' + httpx.Request("POST", "/", json=record).content + b'], "metadata": '
    body += b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1) + b"}"
    response = httpx.post(f"{srv.url}/api/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), (depth, response.text[:300])
    assert response.json()["code"] in ("validation_error", "malformed_json")


def test_huge_metadata_is_422(srv: Server, record: dict) -> None:
    response = submit(srv.url, [record], metadata={"blob": "x" * 5000})
    assert (response.status_code, response.json()["code"]) == (422, "validation_error"), response.text[:300]


def test_the_store_stays_under_its_size_limit(srv: Server, record: dict) -> None:
    """Jobs of 10,000 records, one after another: once the store is full they get 429 job_store_full
    with Retry-After, and the SQLite files (database + write-ahead log) never pass the limit, measured
    after every answer and once the accepted jobs have finished (their results are stored by then)."""
    records = [record] * 10_000
    files = [srv.workdir / "jobs.sqlite3", srv.workdir / "jobs.sqlite3-wal"]
    statuses: list[int] = []
    sizes: list[int] = []
    refusals: list[httpx.Response] = []
    accepted: list[str] = []
    for _ in range(12):
        response = submit(srv.url, records)
        statuses.append(response.status_code)
        if response.status_code == 429:
            refusals.append(response)
        else:
            accepted.append(response.json()["id"])
        sizes.append(sum(f.stat().st_size for f in files if f.exists()))
    deadline = time.monotonic() + 30
    for job_id in accepted:
        while httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, job_id
            time.sleep(0.2)
    sizes.append(sum(f.stat().st_size for f in files if f.exists()))
    print(f"statuses {statuses}; store bytes {sizes}; limit {MAX_STORE}")
    assert refusals, f"never refused: {statuses}"
    assert all(r.json()["code"] == "job_store_full" and int(r.headers["retry-after"]) >= 1 for r in refusals)
    assert statuses.count(202) >= 2, statuses
    assert max(sizes) <= MAX_STORE, sizes
    assert httpx.get(srv.url + "/readyz").status_code == 200
