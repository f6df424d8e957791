"""Server-Sent Events framing, heartbeat merging and disconnect handling (ferry.api.sse), in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from ferry.api import sse
from ferry_client.sse import iter_events


def run(coro: Any, timeout: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_encode_frames_fields_and_compact_json() -> None:
    frame = sse.encode({"offset": 500, "predictions": [{"prediction": "stay"}]}, event="chunk", id=500)
    assert frame == b'event: chunk\nid: 500\ndata: {"offset":500,"predictions":[{"prediction":"stay"}]}\n\n'
    assert sse.encode("a\nb", retry_ms=3000) == b"retry: 3000\ndata: a\ndata: b\n\n"  # one data line per line
    assert sse.encode(b"raw") == b"data: raw\n\n"
    assert sse.encode(event="end") == b"event: end\n\n"
    assert sse.encode("") == b"data: \n\n"
    assert orjson.loads(sse.encode([1.5, None]).split(b"data: ", 1)[1]) == [1.5, None]


def test_encode_refuses_line_breaks_in_fields() -> None:
    with pytest.raises(ValueError):
        sse.encode({}, event="chunk\ndata: forged")
    with pytest.raises(ValueError):
        sse.encode({}, id="1\r2")
    with pytest.raises(ValueError):
        sse.comment("ping\n")


def test_comment_is_a_comment_line() -> None:
    assert sse.comment() == sse.PING == b": ping\n\n"
    assert sse.comment("keep-alive") == b": keep-alive\n\n"


async def _slow(items: list[bytes], delay_s: float) -> AsyncIterator[bytes]:
    for item in items:
        await asyncio.sleep(delay_s)
        yield item


def test_heartbeat_fills_the_gaps_between_slow_events() -> None:
    async def go() -> list[bytes]:
        return [x async for x in sse.with_heartbeat(_slow([b"a", b"b"], 0.5), 0.1)]

    out = run(go())
    assert [x for x in out if x != sse.PING] == [b"a", b"b"]  # events unchanged, in order
    assert out[-1] == b"b"
    first, second = out.index(b"a"), out.index(b"b")
    assert first >= 2 and second - first - 1 >= 2  # ~4 pings per 0.5 s gap; 2 even on a busy machine
    assert first <= 6  # and not a flood


def test_no_heartbeat_when_events_come_fast() -> None:
    async def go() -> list[bytes]:
        return [x async for x in sse.with_heartbeat(_slow([b"a", b"b", b"c"], 0), 5)]

    assert run(go()) == [b"a", b"b", b"c"]


class Producer:
    """An event source that yields one event, then waits forever; records how it ended."""

    def __init__(self) -> None:
        self.cancelled = False
        self.closed = False

    async def events(self) -> AsyncIterator[bytes]:
        try:
            yield sse.encode({"n": 1}, event="chunk", id=0)
            await asyncio.Event().wait()  # "a chunk being computed" that never ends
            yield sse.encode({"n": 2}, event="chunk", id=1)  # pragma: no cover - never reached
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


def test_closing_the_heartbeat_cancels_the_work_in_progress() -> None:
    producer = Producer()

    async def go() -> list[bytes]:
        stream = sse.with_heartbeat(producer.events(), 0.05)
        out = [await anext(stream), await anext(stream)]
        await stream.aclose()
        return out

    assert run(go()) == [sse.encode({"n": 1}, event="chunk", id=0), sse.PING]
    assert producer.cancelled and producer.closed


class Client:
    """The ASGI side of one request: the body, then a disconnect when ``leave()`` is called."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = asyncio.Event()
        self.body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.left.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def test_response_headers_events_and_end() -> None:
    async def go() -> tuple[Client, sse.EventStreamResponse]:
        client = Client()
        response = sse.EventStreamResponse(_slow([sse.encode(1, event="a"), sse.encode(2, event="b")], 0))
        await response({"type": "http"}, client.receive, client.send)
        return client, response

    client, response = run(go())
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"content-length" not in headers
    bodies = client.sent[1:]
    # The reconnection delay first (no event: EventSource only adopts it), then each event flushed on its own.
    assert [m["body"] for m in bodies] == [b"retry: 3000\n\n", b"event: a\ndata: 1\n\n", b"event: b\ndata: 2\n\n", b""]
    assert [m["more_body"] for m in bodies] == [True, True, True, False]
    assert not response.disconnected


def test_response_sends_heartbeats_while_the_producer_works() -> None:
    async def go() -> Client:
        client = Client()
        await sse.EventStreamResponse(_slow([b"event: x\n\n"], 0.4), heartbeat_s=0.1)(
            {"type": "http"}, client.receive, client.send
        )
        return client

    body = run(go()).body
    assert body.endswith(b"event: x\n\n")
    assert body.count(sse.PING) >= 2


def test_client_disconnect_stops_the_producer_at_once() -> None:
    producer = Producer()

    async def go() -> tuple[Client, sse.EventStreamResponse, float]:
        client = Client()
        response = sse.EventStreamResponse(producer.events(), heartbeat_s=0.05)
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        while not client.body:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a few heartbeats
        left = time.monotonic()
        client.leave()
        await task
        return client, response, time.monotonic() - left

    client, response, took = run(go())
    assert response.disconnected
    assert producer.cancelled and producer.closed  # the work in progress was cancelled, not awaited
    assert took < 1.0
    assert client.body.startswith(sse.encode(retry_ms=3000) + sse.encode({"n": 1}, event="chunk", id=0) + sse.PING)
    assert not any(m.get("more_body") is False for m in client.sent)  # no clean end to a client that left


def test_cancelled_request_closes_the_producer() -> None:
    """Server shutdown past its grace period cancels the request task: the producer still cleans up."""
    producer = Producer()

    async def go() -> None:
        client = Client()
        task = asyncio.ensure_future(sse.EventStreamResponse(producer.events())({}, client.receive, client.send))
        while not client.body:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert producer.cancelled and producer.closed


def test_wait_for_disconnect_skips_other_messages() -> None:
    async def go() -> None:
        messages = iter(
            [
                {"type": "http.request", "body": b"x", "more_body": True},
                {"type": "http.request"},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, Any]:
            return next(messages)

        await sse.wait_for_disconnect(receive)
        with pytest.raises(StopIteration):
            next(messages)  # consumed up to and including the disconnect

    run(go())


def test_the_client_parser_reads_what_the_server_writes() -> None:
    stream = (
        sse.encode({"offset": 0, "predictions": [{"prediction": "stay"}]}, event="chunk", id=0)
        + sse.comment("ping")
        + sse.encode("two\nlines", event="note")
        + sse.encode({"records": 1}, event="summary", id=1)
    )
    got = list(iter_events(stream.decode().splitlines()))
    assert [(e.event, e.id) for e in got] == [("chunk", "0"), ("note", "0"), ("summary", "1")]
    assert got[0].json() == {"offset": 0, "predictions": [{"prediction": "stay"}]}
    assert got[1].data == "two\nlines"
