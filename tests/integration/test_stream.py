"""POST /api/v1/predict/stream (Server-Sent Events) against real gunicorn with 2 workers."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import joblib
import pytest

from support.metrics import counter, scrape
from support.models import TRUSTED_CARDLESS, PickyModel
from support.records import make_records
from support.server import Server

STREAM = "/api/v1/predict/stream"
BATCH = "/api/v1/predict/batch"
CHUNK_DELAY_S = 0.3  # the slow model's time per call, i.e. per chunk


@dataclass
class Event:
    name: str
    id: str | None
    data: dict
    at: float  # seconds since the request was sent


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)  # arrival times of ": ping" comments
    retry: list[tuple[int, str]] = field(default_factory=list)  # (events before it, value) of each retry field
    finished_at: float = 0.0

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


def read_events(lines: Iterator[str], started: float, stream: Stream, stop_after_chunks: int | None = None) -> None:
    """Parse the event-stream format as it arrives (event/id/data fields, comments, blank-line dispatch)."""
    name, event_id, data = "message", None, []
    for line in lines:
        now = time.perf_counter() - started
        if line.startswith(":"):
            assert line == ": ping", line
            stream.pings.append(now)
        elif line == "":
            if data or name != "message":
                stream.events.append(Event(name, event_id, json.loads("\n".join(data)), now))
                if stop_after_chunks is not None and len(stream.named("chunk")) >= stop_after_chunks:
                    return
            name, event_id, data = "message", None, []
        else:
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "id":
                event_id = value
            elif key == "data":
                data.append(value)
            elif key == "retry":
                stream.retry.append((len(stream.events), value))
            else:
                raise AssertionError(f"unexpected line {line!r}")


def post_stream(client: httpx.Client, body: object, stop_after_chunks: int | None = None, **kwargs: object) -> Stream:
    """POST and read the whole event stream (or up to ``stop_after_chunks`` chunk events, then hang up)."""
    started = time.perf_counter()
    with client.stream("POST", STREAM, json=body, timeout=30, **kwargs) as r:  # type: ignore[arg-type]
        stream = Stream(r.status_code, r.headers)
        if r.status_code != 200:
            r.read()
            stream.events.append(Event("http_error", None, r.json(), time.perf_counter() - started))
            return stream
        read_events(r.iter_lines(), started, stream, stop_after_chunks)
    stream.finished_at = time.perf_counter() - started
    return stream


def wait_streams_closed(server: Server, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(server)
        if counter(text, "ferry_sse_streams_open", stream="predict") == 0:
            return text
        assert time.monotonic() < deadline, "the stream never closed on the server"
        time.sleep(0.1)


# -- the default churn model: results, framing, limits ---------------------------------------------
@pytest.fixture(scope="module")
def churn_server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FERRY_API__MAX_BODY_BYTES": str(64 * 1024),  # the other routes' limit: far below a 2,000-record body
        "FERRY_STREAM__MAX_BODY_BYTES": str(1024 * 1024),
        "FERRY_STREAM__MAX_RECORDS": "3000",
    }
    srv = Server(tmp_path_factory.mktemp("stream"), churn_model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def test_stream_equals_batch_results_in_order(churn_server: Server, card: dict) -> None:
    records = make_records(card, 2000)
    with httpx.Client(base_url=churn_server.url) as client:
        expected = []
        for i in range(0, len(records), 200):  # /predict/batch within its own (64 KiB) body limit
            r = client.post(BATCH, json={"records": records[i : i + 200]})
            assert r.status_code == 200, r.text
            expected += r.json()["predictions"]
        assert len({json.dumps(p, sort_keys=True) for p in expected}) > 100  # distinct answers, so order matters
        before = scrape(churn_server)
        stream = post_stream(client, {"records": records, "chunk_size": 300}, headers={"X-Request-ID": "stream-a"})
        # the same body is over the limit of the other routes: the stream route has its own
        assert client.post(BATCH, json={"records": records[:1000]}).status_code == 413

    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["x-request-id"] == "stream-a"
    assert "content-length" not in stream.headers

    chunks = stream.named("chunk")
    assert [e.name for e in stream.events] == ["chunk"] * 7 + ["summary"]
    assert [c.data["offset"] for c in chunks] == list(range(0, 2000, 300))
    assert [c.id for c in chunks] == [str(min(o + 300, 2000)) for o in range(0, 2000, 300)]  # next offset
    assert [len(c.data["predictions"]) for c in chunks] == [300] * 6 + [200]
    assert [p for c in chunks for p in c.data["predictions"]] == expected
    assert not stream.pings  # the default heartbeat (10 s) never fired on a fast stream
    assert stream.retry == [(0, "3000")]  # once, before any event

    summary = stream.events[-1]
    assert summary.id == "2000"
    assert summary.data["records"] == 2000 and summary.data["chunks"] == 7
    assert summary.data["model"] == {"name": "churn", "version": card["version"]}
    assert summary.data["request_id"] == "stream-a"
    assert 0 < summary.data["duration_ms"] < stream.finished_at * 1000

    after = wait_streams_closed(churn_server)
    route = {"route": STREAM, "method": "POST"}
    assert (
        counter(after, "ferry_http_requests_total", **route, status_class="2xx")
        - counter(before, "ferry_http_requests_total", **route, status_class="2xx")
        == 1
    )
    sent = counter(after, "ferry_stream_chunks_total", outcome="sent") - counter(
        before, "ferry_stream_chunks_total", outcome="sent"
    )
    skipped = counter(after, "ferry_stream_chunks_total", outcome="skipped") - counter(
        before, "ferry_stream_chunks_total", outcome="skipped"
    )
    assert (sent, skipped) == (7, 0)
    (access,) = churn_server.requests(request_id="stream-a")  # exactly one access line
    assert (access["route"], access["status"], access["method"]) == (STREAM, 200, "POST")
    assert access["duration_ms"] >= summary.data["duration_ms"]  # measured to the end of the body


def test_default_chunk_size_and_the_openapi_example(churn_server: Server) -> None:
    spec = httpx.get(churn_server.url + "/openapi.json").json()
    operation = spec["paths"][STREAM]["post"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    (example,) = spec["components"]["schemas"]["StreamPredictRequest"]["examples"]
    with httpx.Client(base_url=churn_server.url) as client:
        stream = post_stream(client, example)
        assert [e.name for e in stream.events] == ["chunk"] * len(example["records"]) + ["summary"]
        big = post_stream(client, {"records": [example["records"][0]] * 1200})
    assert [c.data["offset"] for c in big.named("chunk")] == [0, 500, 1000]  # FERRY_STREAM__CHUNK_SIZE


def test_the_same_body_with_last_event_id_resumes_after_what_was_received(churn_server: Server, card: dict) -> None:
    records = make_records(card, 1000)
    body = {"records": records, "chunk_size": 300}
    with httpx.Client(base_url=churn_server.url) as client:
        whole = post_stream(client, body)
        cut = post_stream(client, body, stop_after_chunks=2)  # the connection breaks after two chunks
        last_id = cut.events[-1].id
        assert last_id == "600"
        resumed = post_stream(client, body, headers={"Last-Event-ID": last_id})
        only_summary = post_stream(client, body, headers={"Last-Event-ID": "1000"})  # the summary was lost
    assert [(e.name, e.id, e.data.get("offset")) for e in resumed.events] == [
        ("chunk", "900", 600),
        ("chunk", "1000", 900),
        ("summary", "1000", None),
    ]
    assert resumed.retry == [(0, "3000")]
    received = [p for e in [*cut.events, *resumed.events[:-1]] for p in e.data["predictions"]]
    assert received == [p for c in whole.named("chunk") for p in c.data["predictions"]]  # no gap, no repeat
    assert (resumed.events[-1].data["records"], resumed.events[-1].data["chunks"]) == (1000, 2)
    assert [(e.name, e.id) for e in only_summary.events] == [("summary", "1000")]


def test_invalid_requests_are_json_errors_before_any_stream(churn_server: Server, card: dict) -> None:
    url = churn_server.url + STREAM
    good = make_records(card, 10)
    bad_record = [*good[:5], {**good[5], "tenure_months": "12"}, *good[6:]]
    cases: list[tuple[str, dict, dict, int, str]] = [
        ("too many records", {"records": make_records(card, 3001)}, {}, 422, "batch_too_large"),
        ("bad record", {"records": bad_record}, {}, 422, "validation_error"),
        ("no records", {"records": []}, {}, 422, "validation_error"),
        ("chunk_size 0", {"records": good, "chunk_size": 0}, {}, 422, "validation_error"),
        ("chunk_size over the limit", {"records": good, "chunk_size": 501}, {}, 422, "validation_error"),
        ("chunk_size as text", {"records": good, "chunk_size": "5"}, {}, 422, "validation_error"),
        ("extra field", {"records": good, "stream": True}, {}, 422, "validation_error"),
        ("bad timeout", {"records": good}, {"X-Request-Timeout": "abc"}, 422, "validation_error"),
        ("Last-Event-ID not an offset", {"records": good}, {"Last-Event-ID": "chunk-3"}, 422, "validation_error"),
        ("Last-Event-ID past the records", {"records": good}, {"Last-Event-ID": "11"}, 422, "validation_error"),
    ]
    for what, body, headers, status, code in cases:
        r = httpx.post(url, json=body, headers=headers, timeout=30)
        assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), (what, r.text[:300])
        assert r.json()["code"] == code, what
        assert r.json()["request_id"] == r.headers["x-request-id"]
    too_many = httpx.post(url, json={"records": make_records(card, 3001)}, timeout=30).json()
    assert too_many["message"] == "at most 3000 records per request"  # the stream's limit, not the batch's
    assert httpx.post(url, json={"records": bad_record}).json()["details"][0]["loc"][:3] == ["body", "records", 5]
    # Records are validated a slice at a time (features.VALIDATION_SLICE): errors keep the records' own index.
    late = make_records(card, 2600)
    late[2345] = {**late[2345], "contract_type": "lifetime"}
    r = httpx.post(url, json={"records": late}, timeout=30)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")
    assert [d["loc"] for d in r.json()["details"]] == [["body", "records", 2345, "contract_type"]]

    over = json.dumps({"records": [good[0]] * 6000}).encode()  # ~1.2 MB, over FERRY_STREAM__MAX_BODY_BYTES
    assert len(over) > 1024 * 1024
    r = httpx.post(url, content=over, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")
    assert str(1024 * 1024) in r.json()["message"]
    chunked = httpx.post(url, content=iter([over[:600_000], over[600_000:]]))  # no Content-Length
    assert (chunked.status_code, chunked.json()["code"]) == (413, "payload_too_large")
    refused = churn_server.requests(at_least=2, path=STREAM, status=413)
    assert [(a["route"], a["status"]) for a in refused] == [(STREAM, 413)] * 2


# -- a slow model: streaming, heartbeats, disconnects, model errors --------------------------------
@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 numeric features, CHUNK_DELAY_S per call; fails any call holding 13.0 in the first column."""
    path = tmp_path_factory.mktemp("slow") / "slow.joblib"
    joblib.dump(PickyModel(delay_s=CHUNK_DELAY_S), path)
    return path


@pytest.fixture(scope="module")
def slow_server(slow_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("slow-srv"), slow_model, env=TRUSTED_CARDLESS | {"FERRY_STREAM__HEARTBEAT_S": "0.1"}
    ).start()
    warm_up(srv)
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def warm_up(server: Server) -> None:
    """One model call in every worker first: the first call imports scikit-learn (~1 s, more on a busy
    machine), which would blur the timing assertions."""
    statuses: list[int] = []

    def call() -> None:
        statuses.append(httpx.post(server.url + "/api/v1/predict", json={"record": [0, 0, 0]}, timeout=60).status_code)

    for _ in range(10):
        callers = [threading.Thread(target=call) for _ in range(4)]  # fresh connections: spread over workers
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert set(statuses) == {200}, statuses
        served = {r["pid"] for r in server.records() if r.get("event") == "request" and r["status"] == 200}
        if served >= set(server.worker_pids()):
            return
    raise AssertionError("the requests never reached both workers")


def rows(n: int) -> list[list[float]]:
    return [[i * 0.1, 1.0, -2.0] for i in range(n)]


def test_each_chunk_is_sent_when_scored_with_heartbeats_between(slow_server: Server) -> None:
    with httpx.Client(base_url=slow_server.url) as client:
        stream = post_stream(client, {"records": rows(10), "chunk_size": 1})
    chunks = stream.named("chunk")
    assert [c.data["offset"] for c in chunks] == list(range(10))
    assert stream.events[-1].name == "summary"
    # 10 chunks x 0.3 s: the first arrives after about one chunk, not after all of them
    assert stream.finished_at > 10 * CHUNK_DELAY_S * 0.85, stream.finished_at
    assert chunks[0].at < 1.5, chunks[0].at
    assert chunks[-1].at - chunks[0].at > 2.0  # they really came one by one
    # a ": ping" every 0.1 s while a chunk is being scored: ~2 per chunk
    assert len(stream.pings) >= 10, stream.pings
    gaps_with_ping = sum(any(a.at < p < b.at for p in stream.pings) for a, b in itertools.pairwise(chunks))
    assert gaps_with_ping >= 6, stream.pings


def test_client_disconnect_stops_the_work(slow_server: Server) -> None:
    before = wait_streams_closed(slow_server)
    total = 20  # 20 chunks x 0.3 s = 6 s of model time if the stream ran to the end
    with httpx.Client(base_url=slow_server.url) as client:
        stream = post_stream(client, {"records": rows(total), "chunk_size": 1}, stop_after_chunks=1)
        left = time.perf_counter()
        assert [e.name for e in stream.events] == ["chunk"]
    # the response was not read to its end: leaving the block closed the connection
    after = wait_streams_closed(slow_server)
    assert time.perf_counter() - left < 3.0

    def delta(text: str, name: str, **labels: str) -> float:
        return counter(text, name, **labels) - counter(before, name, **labels)

    sent = delta(after, "ferry_stream_chunks_total", outcome="sent")
    skipped = delta(after, "ferry_stream_chunks_total", outcome="skipped")
    assert sent + skipped == total
    assert 1 <= sent <= 3 and skipped >= total - 3, (sent, skipped)
    time.sleep(2 * CHUNK_DELAY_S)  # a model call already running when the client left may still finish
    calls = counter(scrape(slow_server), "ferry_model_calls_total")
    assert calls - counter(before, "ferry_model_calls_total") <= 3
    time.sleep(5 * CHUNK_DELAY_S)  # ... but no further chunk is ever scored
    assert counter(scrape(slow_server), "ferry_model_calls_total") == calls
    ended = [r for r in slow_server.records() if r.get("event") == "stream_ended"]
    assert ended[-1]["outcome"] == "disconnected" and ended[-1]["sent"] == sent
    request_id = stream.headers["x-request-id"]
    (access,) = slow_server.requests(request_id=request_id)
    assert (access["route"], access["status"]) == (STREAM, 200)


def test_a_failing_chunk_ends_the_stream_with_a_failed_event(slow_server: Server) -> None:
    records = rows(10)
    records[5][0] = 13.0  # poison for PickyModel: the chunk at offset 4 (records 4 and 5) fails
    before = scrape(slow_server)
    with httpx.Client(base_url=slow_server.url) as client:
        stream = post_stream(client, {"records": records, "chunk_size": 2})
    assert stream.status == 200
    assert [(e.name, e.id) for e in stream.events] == [("chunk", "2"), ("chunk", "4"), ("failed", "4")]
    error = stream.events[-1].data
    assert (error["code"], error["offset"]) == ("model_error", 4)
    assert error["request_id"] == stream.headers["x-request-id"] and "poison" not in error["message"]
    after = wait_streams_closed(slow_server)
    assert (
        counter(after, "ferry_errors_total", route=STREAM, code="model_error")
        - counter(before, "ferry_errors_total", route=STREAM, code="model_error")
        == 1
    ), "the chunk's error counts against the stream route, not the predict routes"
    assert (
        counter(after, "ferry_stream_chunks_total", outcome="skipped")
        - counter(before, "ferry_stream_chunks_total", outcome="skipped")
        == 3
    )


def test_deadline_applies_per_chunk(slow_server: Server) -> None:
    with httpx.Client(base_url=slow_server.url) as client:
        # 1 s per chunk: each 0.3 s chunk makes it although the stream takes > 1.5 s in all
        ok = post_stream(client, {"records": rows(5), "chunk_size": 1}, headers={"X-Request-Timeout": "1"})
        assert [e.name for e in ok.events] == ["chunk"] * 5 + ["summary"]
        assert ok.finished_at > 1.2  # the stream as a whole outlived the 1 s
        late = post_stream(client, {"records": rows(3), "chunk_size": 1}, headers={"X-Request-Timeout": "0.1"})
    assert [(e.name, e.data.get("code")) for e in late.events] == [("failed", "deadline_exceeded")]


# -- shutdown -------------------------------------------------------------------------------------------
def test_sigterm_ends_open_streams_with_a_shutdown_event(slow_model: Path, tmp_path: Path) -> None:
    server = Server(tmp_path, slow_model, env=TRUSTED_CARDLESS).start()
    warm_up(server)
    grace_s = int(server.env["FERRY_SERVER__GRACEFUL_TIMEOUT_S"])
    try:
        started = time.perf_counter()
        stream = Stream(0, httpx.Headers())
        with (
            httpx.Client(base_url=server.url) as client,
            client.stream("POST", STREAM, json={"records": rows(40), "chunk_size": 1}, timeout=30) as r,
        ):
            stream.status, stream.headers = r.status_code, r.headers
            lines = r.iter_lines()
            read_events(lines, started, stream, stop_after_chunks=1)
            server.signal(signal.SIGTERM)
            signalled = time.perf_counter() - started
            read_events(lines, started, stream)
        exit_code = server.process.wait(timeout=grace_s + 5)  # type: ignore[union-attr]
        exited = time.perf_counter() - started - signalled
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert stream.status == 200
    names = [e.name for e in stream.events]
    assert names[-1] == "shutdown" and set(names[:-1]) == {"chunk"}, stream.events
    chunks = stream.named("chunk")
    assert [c.data["offset"] for c in chunks] == list(range(len(chunks)))
    shutdown = stream.events[-1]
    assert shutdown.data["next_offset"] == len(chunks) == int(shutdown.id or -1) < 40
    assert shutdown.at - signalled < 3.0  # after the chunk in progress (0.3 s), not after the stream (12 s)
    assert exit_code == 0, server.output()[-2000:]
    assert exited < grace_s, exited
    ended = [r for r in server.records() if r.get("event") == "stream_ended"]
    assert [e["outcome"] for e in ended] == ["shutdown"]
    (access,) = server.requests(request_id=stream.headers["x-request-id"])
    assert (access["route"], access["status"]) == (STREAM, 200)
