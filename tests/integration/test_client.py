"""ferry_client (sync, async, fan-out, streams, jobs) and the `ferry predict` / `ferry jobs` commands,
against the real service. No HTTP mocks: a recording transport only wraps httpx's real one."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from ferry.card import Feature
from ferry.features import FeatureSchema
from ferry_client import AsyncClient, Client, FerryClientError
from ferry_client.protocol import record_row
from support.records import make_records
from support.server import REPO, Server, free_port

SEED = 20261127
NO_JOB = "0" * 32  # a well-formed job id that names no job


# -- helpers ---------------------------------------------------------------------------------------


def in_process(churn_model: Path, card: dict, records: list[dict]) -> list[dict]:
    """What the served model answers, computed here: the same rows through the same schema."""
    estimator = joblib.load(churn_model)
    schema = FeatureSchema([Feature(**f) for f in card["features"]])
    rows = schema.rows_from_records([schema.record_type.model_validate(r) for r in records])
    proba = estimator.predict_proba(rows).tolist()
    labels = estimator.predict(rows).tolist()
    classes = [str(c) for c in estimator.classes_]
    return [
        {"prediction": str(label), "probabilities": dict(zip(classes, p, strict=True))}
        for label, p in zip(labels, proba, strict=True)
    ]


class Recorder:
    """Every request a client sent: start/end times, status, Retry-After, body digest, error code."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def enter(self) -> float:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return time.monotonic()

    def leave(self, request: httpx.Request, started: float, response: httpx.Response | None) -> None:
        code = None
        if response is not None and response.status_code >= 400:
            with contextlib.suppress(ValueError):
                code = response.json().get("code")
        with self._lock:
            self.in_flight -= 1
            self.calls.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "body": hashlib.sha256(request.content).hexdigest(),
                    "start": started,
                    "end": time.monotonic(),
                    "status": None if response is None else response.status_code,
                    "retry_after": None if response is None else response.headers.get("retry-after"),
                    "code": code,
                }
            )

    def to(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"] == path]


class RecordingTransport(httpx.BaseTransport):
    def __init__(self, recorder: Recorder) -> None:
        self.inner = httpx.HTTPTransport()
        self.recorder = recorder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = self.recorder.enter()
        response = None
        try:
            response = self.inner.handle_request(request)
            if response.status_code >= 400:
                response.read()
            return response
        finally:
            self.recorder.leave(request, started, response)

    def close(self) -> None:
        self.inner.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    def __init__(self, recorder: Recorder) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = self.recorder.enter()
        response = None
        try:
            response = await self.inner.handle_async_request(request)
            if response.status_code >= 400:
                await response.aread()
            return response
        finally:
            self.recorder.leave(request, started, response)

    async def aclose(self) -> None:
        await self.inner.aclose()


def write_faults(path: Path, **faults: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults))
    tmp.replace(path)


def write_csv(path: Path, card: dict, records: list[dict]) -> None:
    names = [f["name"] for f in card["features"]]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for record in records:
            writer.writerow([str(record[n]).lower() if isinstance(record[n], bool) else record[n] for n in names])


def ferry_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["PYTHONPATH"] = str(REPO / "service")
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start(workdir: Path, model: Path, env: dict[str, str] | None = None) -> Server:
    return Server(workdir, model, env={"FERRY_JOBS__SQLITE_PATH": str(workdir / "jobs.sqlite3"), **(env or {})})


# -- servers ---------------------------------------------------------------------------------------
class Hooks:
    """A callback receiver on 127.0.0.1: the first delivery of a job is refused with 400 (so the
    callback is dead-lettered and can be redelivered), later ones are accepted with 204."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hooks.deliveries.append({"headers": dict(self.headers.items()), "body": body})
                self.send_response(400 if len(hooks.deliveries) == 1 else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < n:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} callback deliveries, expected {n}"
            time.sleep(0.05)
        return self.deliveries

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def srv(churn_model: Path, tmp_path_factory: pytest.TempPathFactory, hooks: Hooks) -> Iterator[Server]:
    """The real service, 2 workers, callbacks to the local receiver allowed."""
    secret = "whsec_" + base64.b64encode(b"ferry-client-tests-signing-key!!").decode()
    env = {
        "FERRY_CALLBACKS__SIGNING_SECRET": secret,
        "FERRY_CALLBACKS__ALLOW_HTTP": "true",
        "FERRY_CALLBACKS__ALLOW_HOSTS": f'["127.0.0.1:{hooks.httpd.server_address[1]}"]',
        "FERRY_CALLBACKS__BACKOFF_BASE_S": "0.1",
        "FERRY_CALLBACKS__BACKOFF_MAX_S": "0.5",
    }
    server = start(tmp_path_factory.mktemp("client"), churn_model, env).start()
    yield server
    assert server.stop() == 0, server.output()[-2000:]


@pytest.fixture(scope="module")
def slow_srv(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every model call takes 100 ms and nothing may queue for the model: concurrent calls are shed
    with 503 `overloaded` and Retry-After."""
    workdir = tmp_path_factory.mktemp("slow")
    faults = workdir / "faults.json"
    write_faults(faults, latency_ms=100)
    env = {"FERRY_INFERENCE__MAX_QUEUE": "0", "FERRY_FAULTS__ENABLED": "true", "FERRY_FAULTS__FILE": str(faults)}
    server = start(workdir, churn_model, env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def records(card: dict) -> list[dict]:
    return make_records(card, 10_000, SEED)


@pytest.fixture(scope="module")
def expected(churn_model: Path, card: dict, records: list[dict]) -> list[dict]:
    return in_process(churn_model, card, records)


# -- predictions, models, health -------------------------------------------------------------------
def test_predict_batch_v2_models_ready(srv: Server, churn_model: Path, card: dict, records: list[dict]) -> None:
    some = records[:1200]
    want = in_process(churn_model, card, some)
    recorder = Recorder()
    with Client(srv.url, transport=RecordingTransport(recorder)) as client:
        assert client.ready() is True
        one = client.predict(some[0])
        assert {k: one[k] for k in ("prediction", "probabilities")} == want[0]
        assert one["model"] == {"name": card["name"], "version": card["version"]}
        assert one["request_id"]
        assert client.predict_batch(some) == want  # 3 requests of at most 500
        assert len(recorder.to("/api/v1/predict/batch")) == 3
        assert client.predict_batch(some[:7], batch_size=2) == want[:7]

        v2 = client.infer_v2(card["name"], [record_row(r, card["features"]) for r in some[:5]])
        outputs = {o["name"]: o for o in v2["outputs"]}
        assert outputs["predict"]["data"] == [w["prediction"] for w in want[:5]]
        classes = card["classes"]
        proba = outputs["predict_proba"]["data"]
        assert [proba[i * len(classes) : (i + 1) * len(classes)] for i in range(5)] == [
            [w["probabilities"][c] for c in classes] for w in want[:5]
        ]
        tensor = {"name": "input-0", "shape": [1, len(card["features"])], "datatype": "FP64"}
        raw = client.infer_v2(
            card["name"], [{**tensor, "data": record_row(some[0], card["features"])}], outputs=["predict"], id="abc"
        )
        assert raw["id"] == "abc" and [o["name"] for o in raw["outputs"]] == ["predict"]

        assert [m["name"] for m in client.models()] == [card["name"]]
        assert [f["name"] for f in client.model_card()["features"]] == [f["name"] for f in card["features"]]
        assert client.model_card(card["name"], section="classes") == {
            "name": card["name"],
            "version": card["version"],
            "classes": card["classes"],
        }

    async def run() -> None:
        async with AsyncClient(srv.url) as client:
            assert await client.ready() is True
            answer = await client.predict(some[1])
            assert {k: answer[k] for k in ("prediction", "probabilities")} == want[1]
            assert await client.predict_batch(some[:600]) == want[:600]
            v2 = await client.infer_v2(card["name"], [record_row(some[1], card["features"])], outputs=["predict"])
            assert v2["outputs"][0]["data"] == [want[1]["prediction"]]
            assert (await client.models())[0]["name"] == card["name"]
            assert (await client.model_card())["classes"] == card["classes"]

    asyncio.run(run())

    nobody = f"http://127.0.0.1:{free_port()}"
    with Client(nobody, max_retries=0) as client:
        assert client.ready() is False


def test_error_answers_carry_code_message_and_request_id(srv: Server, card: dict, record: dict) -> None:
    recorder = Recorder()
    with Client(srv.url, headers={"X-Request-ID": "client-test-1"}, transport=RecordingTransport(recorder)) as client:
        with pytest.raises(FerryClientError) as caught:
            client.predict({**record, "contract_type": "forever"})
        error = caught.value
        assert (error.status, error.code, error.request_id) == (422, "validation_error", "client-test-1")
        assert error.message and any("contract_type" in d["loc"] for d in error.details)
        assert "422 validation_error" in str(error) and "client-test-1" in str(error)

        with pytest.raises(FerryClientError) as caught:
            client.predict_batch([record] * 1001, batch_size=1001)
        assert (caught.value.status, caught.value.code) == (422, "batch_too_large")

        # Under /v2 the message comes from the protocol's "error" field.
        with pytest.raises(FerryClientError) as caught:
            client.infer_v2(card["name"], [[1.0, 2.0]])
        assert caught.value.status == 400 and caught.value.code and caught.value.message
        assert caught.value.request_id == "client-test-1"
        with pytest.raises(FerryClientError) as caught:
            client.infer_v2("no-such-model", [record_row(record, card["features"])])
        assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    # none of these was retried: one request each
    assert len(recorder.calls) == 4, recorder.calls


# -- fan-out ---------------------------------------------------------------------------------------
def test_fan_out_of_10000_rows_matches_the_model_in_input_order(
    srv: Server, records: list[dict], expected: list[dict]
) -> None:
    progress: list[tuple[int, int]] = []
    recorder = Recorder()

    async def run() -> list[dict]:
        async with AsyncClient(srv.url, transport=AsyncRecordingTransport(recorder)) as client:
            return await client.predict_many(
                records, batch_size=500, concurrency=8, on_progress=lambda done, total: progress.append((done, total))
            )

    results = asyncio.run(run())
    assert len(results) == len(records)
    assert results == expected  # same labels, bit-identical probabilities, input order
    batches = recorder.to("/api/v1/predict/batch")
    assert len(batches) == 20 and {c["status"] for c in batches} == {200}
    assert 1 < recorder.peak <= 8, f"peak {recorder.peak} requests in flight"
    assert [p[1] for p in progress] == [10_000] * 20
    assert [p[0] for p in progress] == sorted(p[0] for p in progress) and progress[-1] == (10_000, 10_000)


def test_sync_predict_many_runs_the_async_fan_out(srv: Server, records: list[dict], expected: list[dict]) -> None:
    with Client(srv.url) as client:
        assert client.predict_many(records[:1500], batch_size=100, concurrency=4) == expected[:1500]

        async def inside_a_loop() -> None:
            with pytest.raises(RuntimeError, match="AsyncClient"):
                client.predict_many(records[:10])

        asyncio.run(inside_a_loop())


def test_shed_calls_are_retried_after_retry_after(
    slow_srv: Server, churn_model: Path, card: dict, records: list[dict], expected: list[dict]
) -> None:
    some, want = records[:800], expected[:800]
    recorder = Recorder()

    async def run() -> list[dict]:
        async with AsyncClient(slow_srv.url, max_retries=30, transport=AsyncRecordingTransport(recorder)) as client:
            return await client.predict_many(some, batch_size=50, concurrency=8)

    assert asyncio.run(run()) == want
    calls = recorder.to("/api/v1/predict/batch")
    shed = [c for c in calls if c["status"] == 503]
    assert shed, "no call was shed: the test did not exercise retries"
    assert {c["code"] for c in shed} == {"overloaded"}
    assert {c["status"] for c in calls} == {200, 503}
    assert sum(c["status"] == 200 for c in calls) == 16
    for call in shed:
        retry_after = float(call["retry_after"])
        after = [c for c in calls if c["body"] == call["body"] and c["start"] > call["start"]]
        assert after, "a shed batch was never sent again"
        waited = min(c["start"] for c in after) - call["end"]
        assert waited >= retry_after - 0.01, f"retried after {waited:.3f} s, Retry-After was {retry_after} s"


# -- CLI: ferry predict ----------------------------------------------------------------------------
def test_cli_predict_csv_end_to_end(srv: Server, card: dict, records: list[dict], tmp_path: Path) -> None:
    some = records[:2000]
    rows = tmp_path / "rows.csv"
    write_csv(rows, card, some)
    out = tmp_path / "preds.csv"
    done = ferry_cli(
        "predict", "--url", srv.url, "--file", str(rows), "--concurrency", "8", "--batch-size", "300",
        "--out", str(out), "--progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2,000/2,000 rows" in done.stderr and "rows/s" in done.stderr
    with Client(srv.url) as client:
        batch = client.predict_batch(some)
    classes = card["classes"]
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["line", "prediction", *(f"proba_{c}" for c in classes)]
        got = list(reader)
    assert len(got) == 2000 and [r["line"] for r in got] == [str(i + 2) for i in range(2000)]  # header: line 1
    assert [r["prediction"] for r in got] == [b["prediction"] for b in batch]
    assert [[float(r[f"proba_{c}"]) for c in classes] for r in got] == [
        [b["probabilities"][c] for c in classes] for b in batch
    ]

    # JSON Lines in, JSON Lines out (stdout), no progress line when stderr is not a terminal
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in some[:50]))
    done = ferry_cli("predict", "--url", srv.url, "--file", str(jsonl))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines == [
        {"line": i + 1, "prediction": b["prediction"], **{f"proba_{c}": b["probabilities"][c] for c in classes}}
        for i, b in enumerate(batch[:50])
    ]


def test_cli_predict_reports_errors(srv: Server, card: dict, records: list[dict], tmp_path: Path) -> None:
    rows = tmp_path / "bad.csv"
    write_csv(rows, card, [*records[:5], {**records[5], "contract_type": "forever"}])
    done = ferry_cli("predict", "--url", srv.url, "--file", str(rows), "--out", str(tmp_path / "out.csv"))
    assert done.returncode == 2  # a record the server refused: the input, told by its line
    assert "line 7: contract_type" in done.stderr and "422 validation_error" in done.stderr
    assert not (tmp_path / "out.csv").exists()

    rows.write_text("tenure_months,color\n1,red\n")
    done = ferry_cli("predict", "--url", srv.url, "--file", str(rows))
    assert done.returncode == 2
    assert "missing column(s)" in done.stderr and "unknown column(s) color" in done.stderr

    write_csv(rows, card, records[:3])
    text = rows.read_text().splitlines()
    text[2] = text[2].replace(text[2].split(",")[0], "ten", 1)
    rows.write_text("\n".join(text) + "\n")
    done = ferry_cli("predict", "--url", srv.url, "--file", str(rows))
    assert done.returncode == 2 and ": line 3: tenure_months: 'ten' is not a number" in done.stderr

    nobody = f"http://127.0.0.1:{free_port()}"
    done = ferry_cli("predict", "--url", nobody, "--retries", "0", "--file", str(rows))
    assert done.returncode == 1 and "transport_error" in done.stderr


# -- streamed predictions --------------------------------------------
def test_stream_yields_chunks_then_a_summary(srv: Server, records: list[dict], expected: list[dict]) -> None:
    some, want = records[:2345], expected[:2345]
    with Client(srv.url) as client:
        events = list(client.stream(some, chunk_size=300))
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert [c["offset"] for c in chunks] == list(range(0, 2345, 300))
    assert [p for c in chunks for p in c["predictions"]] == want
    assert events[-1]["event"] == "summary" and events[-1]["data"]["records"] == 2345

    async def run() -> list[dict]:
        async with AsyncClient(srv.url) as client:
            return [e async for e in client.stream(some[:700])]

    events = asyncio.run(run())
    assert [p for e in events if e["event"] == "chunk" for p in e["data"]["predictions"]] == want[:700]
    assert events[-1]["event"] == "summary"


def test_stream_errors_raise(srv: Server, tmp_path: Path, record: dict) -> None:
    # invalid input: the usual JSON 422, before any event
    with Client(srv.url) as client, pytest.raises(FerryClientError) as caught:
        list(client.stream([record, {**record, "num_products": 0}]))
    assert (caught.value.status, caught.value.code) == (422, "validation_error")

    # a chunk the model fails on: `event: failed`, its offset in the caller's records
    from support.models import TRUSTED_CARDLESS, PickyModel

    path = tmp_path / "picky.joblib"
    joblib.dump(PickyModel(delay_s=0.01), path)
    rows = [[13.0 if i == 250 else 1000.0 + i, 1.0, 2.0] for i in range(450)]
    with start(tmp_path, path, TRUSTED_CARDLESS) as picky, Client(picky.url) as client:
        seen: list[dict] = []
        with pytest.raises(FerryClientError) as caught:
            seen.extend(client.stream(rows, chunk_size=100))
        assert caught.value.code == "model_error" and caught.value.offset == 200
        assert caught.value.status is None and caught.value.request_id
        assert [e["data"]["offset"] for e in seen] == [0, 100]


def test_stream_resumes_after_a_worker_shutdown(slow_srv: Server, records: list[dict], expected: list[dict]) -> None:
    some, want = records[:1000], expected[:1000]  # 20 chunks of 50, 100 ms each
    recorder = Recorder()
    chunks: list[dict] = []
    signalled = False
    with Client(slow_srv.url, max_retries=10, transport=RecordingTransport(recorder)) as client:
        for event in client.stream(some, chunk_size=50):
            if event["event"] == "chunk":
                chunks.append(event["data"])
                if not signalled:  # stop both workers gracefully; gunicorn starts new ones
                    signalled = True
                    for pid in slow_srv.worker_pids():
                        os.kill(pid, signal.SIGTERM)
    assert [c["offset"] for c in chunks] == list(range(0, 1000, 50))  # no gap, no repeat
    assert [p for c in chunks for p in c["predictions"]] == want
    streams = recorder.to("/api/v1/predict/stream")
    assert len(streams) >= 2, "the stream was never resumed"
    ended = [r.get("outcome") for r in slow_srv.records() if r.get("event") == "stream_ended"]
    assert "shutdown" in ended, ended  # resumed after `event: shutdown`, not after a cut connection


# -- jobs ------------------------------------------------------------
def test_job_submit_wait_and_follow(srv: Server, records: list[dict], expected: list[dict]) -> None:
    some, want = records[:300], expected[:300]
    with Client(srv.url) as client:
        job = client.submit_job(some, metadata={"batch": "a"})
        assert job["status"] in ("queued", "running", "succeeded") and job["metadata"] == {"batch": "a"}
        done = client.wait_job(job["id"], timeout=60, poll_interval=0.1)
        assert done["status"] == "succeeded", done
        assert done["result"]["predictions"] == want
        assert done["history"][-1]["status"] == "succeeded"
        assert client.get_job(job["id"]) == done
        # following a finished job: its terminal state as one event
        assert client.wait_job(job["id"], timeout=10, use_events=True)["status"] == "succeeded"

    async def run() -> dict:
        async with AsyncClient(srv.url) as client:
            job = await client.submit_job(some[:20])
            return await client.wait_job(job["id"], timeout=60, use_events=True)

    done = asyncio.run(run())
    assert done["status"] == "succeeded" and done["result"]["predictions"] == want[:20]


def test_job_idempotency_and_errors(srv: Server, records: list[dict]) -> None:
    with Client(srv.url) as client:
        first = client.submit_job(records[:3], idempotency_key="client-key-1")
        again = client.submit_job(records[:3], idempotency_key="client-key-1")
        assert again["id"] == first["id"]
        with pytest.raises(FerryClientError) as caught:
            client.submit_job(records[:4], idempotency_key="client-key-1")
        assert (caught.value.status, caught.value.code) == (409, "idempotency_key_reused")
        # without a key, each call gets a fresh one: two calls, two jobs
        assert client.submit_job(records[:3])["id"] != client.submit_job(records[:3])["id"]

        with pytest.raises(FerryClientError) as caught:
            client.get_job(NO_JOB)
        assert (caught.value.status, caught.value.code) == (404, "job_not_found") and caught.value.request_id
        client.wait_job(first["id"], timeout=60)
        with pytest.raises(FerryClientError) as caught:
            client.cancel_job(first["id"])
        assert (caught.value.status, caught.value.code) == (409, "job_conflict")


def test_job_cancel_and_wait_timeout(churn_model: Path, tmp_path: Path, records: list[dict]) -> None:
    # no runners: jobs stay queued
    with start(tmp_path, churn_model, {"FERRY_JOBS__RUNNERS": "0"}) as server, Client(server.url) as client:
        job = client.submit_job(records[:5])
        for use_events in (False, True):
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="queued"):
                client.wait_job(job["id"], timeout=0.7, poll_interval=0.1, use_events=use_events)
            assert time.monotonic() - started < 5

        async def timeout() -> None:
            async with AsyncClient(server.url) as aclient:
                with pytest.raises(TimeoutError):
                    await aclient.wait_job(job["id"], timeout=0.5, use_events=True)
                with pytest.raises(TimeoutError):
                    await aclient.wait_job(job["id"], timeout=0.5)

        asyncio.run(timeout())
        canceled = client.cancel_job(job["id"])
        assert canceled["status"] == "canceled"
        assert client.wait_job(job["id"], timeout=5)["status"] == "canceled"

        other = client.submit_job(records[:5])
        assert json.loads(ferry_cli("jobs", "status", "--url", server.url, other["id"]).stdout)["status"] == "queued"
        done = ferry_cli("jobs", "wait", "--url", server.url, other["id"], "--timeout", "0.5")
        assert done.returncode == 3 and "still queued" in done.stderr  # exit 3: --timeout passed
        done = ferry_cli("jobs", "cancel", "--url", server.url, other["id"])
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == "canceled"
        done = ferry_cli("jobs", "wait", "--url", server.url, other["id"], "--events")
        assert done.returncode == 1 and json.loads(done.stdout)["status"] == "canceled"


def test_job_callback_redelivery(srv: Server, hooks: Hooks, records: list[dict]) -> None:
    with Client(srv.url) as client:
        job = client.submit_job(records[:4], callback_url=hooks.url)
        assert client.wait_job(job["id"], timeout=60)["status"] == "succeeded"
        first = hooks.wait_for(1)[0]  # refused with 400: dead-lettered
        assert job["id"] in first["body"].decode()
        deadline = time.monotonic() + 20
        while True:  # redeliverable once the first delivery has been given up
            try:
                again = client.redeliver_callback(job["id"])
                break
            except FerryClientError as exc:
                assert exc.status == 409 and time.monotonic() < deadline, exc
                time.sleep(0.2)
        assert again["id"] == job["id"]
        second = hooks.wait_for(2)[1]
        headers = {k.lower(): v for k, v in second["headers"].items()}
        assert headers["webhook-id"] == {k.lower(): v for k, v in first["headers"].items()}["webhook-id"]


def test_cli_jobs(srv: Server, card: dict, records: list[dict], expected: list[dict], tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    write_csv(rows, card, records[:40])
    done = ferry_cli("jobs", "submit", "--url", srv.url, "--file", str(rows), "--metadata", '{"n": 40}', "--wait")
    assert done.returncode == 0, done.stderr
    rows_out = [json.loads(line) for line in done.stdout.splitlines()]  # --wait: predictions, JSON Lines on stdout
    assert [r.pop("line") for r in rows_out] == list(range(2, 42))
    assert rows_out == [
        {"prediction": e["prediction"], **{f"proba_{c}": p for c, p in e["probabilities"].items()}}
        for e in expected[:40]
    ]
    done = ferry_cli("jobs", "submit", "--url", srv.url, "--file", str(rows), "--metadata", '{"n": 40}')
    assert done.returncode == 0 and json.loads(done.stdout)["status"] in ("queued", "running", "succeeded")
    assert json.loads(done.stdout)["metadata"] == {"n": 40}
    job_id = json.loads(done.stdout)["id"]
    done = ferry_cli("jobs", "wait", "--url", srv.url, job_id, "--events", "--timeout", "60")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "succeeded"
    done = ferry_cli("jobs", "cancel", "--url", srv.url, job_id)
    assert done.returncode == 1 and "409 job_conflict" in done.stderr
    done = ferry_cli("jobs", "status", "--url", srv.url, NO_JOB)
    assert done.returncode == 1 and "404 job_not_found" in done.stderr
