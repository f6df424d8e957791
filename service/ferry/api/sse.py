"""Server-Sent Events: framing, heartbeats and a response that stops when the client leaves.

Reusable by any route that streams events (``POST /api/v1/predict/stream``, job event streams)::

    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse.encode({"offset": 0}, event="chunk", id=0)
            ...
        finally:
            ...  # runs on normal end, on client disconnect and on server shutdown alike

    return sse.EventStreamResponse(events(), heartbeat_s=settings.stream.heartbeat_s)

- :func:`encode` frames one event (``event:``, ``id:``, ``retry:``, ``data:`` as compact JSON via
  orjson), :func:`comment` one comment line (``: ping``), which clients ignore.
- :func:`with_heartbeat` wraps an async iterator of encoded events and yields a comment whenever no
  event came for ``interval_s``, so proxies and load balancers see traffic while work is running.
- :func:`wait_for_disconnect` returns when the ASGI ``receive`` channel reports ``http.disconnect``.
- :class:`EventStreamResponse` starts every stream with a ``retry:`` field (:data:`RETRY_MS`), sends the
  events with the headers that keep proxies from buffering
  (``Cache-Control: no-cache``, ``X-Accel-Buffering: no``), merges the heartbeat, and races every
  wait against the client's disconnect: when the client leaves, the event iterator is cancelled at
  the ``await`` it is suspended in (so no further work starts) and closed, and ``disconnected``
  becomes true. It never relies on the server reporting a failed ``send`` (uvicorn drops writes to
  a closed connection silently).

Producers end a stream themselves (e.g. on ``ferry.lifecycle.is_draining()``, with a final event);
the response only stops early for a client that left, or when the server cancels the request task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/event-stream"
# no-cache: intermediaries must not cache or coalesce; X-Accel-Buffering: nginx (ingress-nginx)
# must pass each event through at once instead of buffering the response.
HEADERS: Mapping[str, str] = {"cache-control": "no-cache", "x-accel-buffering": "no"}

# The reconnection delay every stream announces first (``retry:``), so every EventSource client waits the
# same time instead of its own default (3 s in most browsers and the npm package, 5 s in Firefox): long
# enough that the followers of a pod that shuts down do not all hit the next pod at once, short enough to
# miss little of a job.
RETRY_MS = 3000

_END = object()


def _field(value: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise ValueError("SSE field values cannot contain line breaks")
    return value.encode()


def encode(
    data: Any = None,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """One event, terminated by a blank line. ``data`` is serialised as compact JSON (orjson) unless
    it is already ``str``/``bytes`` (then sent as is, one ``data:`` line per line of text)."""
    lines: list[bytes] = []
    if event is not None:
        lines.append(b"event: " + _field(event))
    if id is not None:
        lines.append(b"id: " + _field(str(id)))
    if retry_ms is not None:
        lines.append(b"retry: %d" % retry_ms)
    if data is not None:
        if isinstance(data, str):
            payload = data.encode()
        elif isinstance(data, bytes):
            payload = data
        else:
            payload = orjson.dumps(data)
        lines.extend(b"data: " + line for line in payload.splitlines() or [b""])
    return b"\n".join(lines) + b"\n\n"


def comment(text: str = "ping") -> bytes:
    """A comment line (``: text``); EventSource clients ignore it. Used as the heartbeat."""
    return b": " + _field(text) + b"\n\n"


PING = comment("ping")


async def _next(iterator: AsyncIterator[bytes]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


async def _close(iterator: AsyncIterable[bytes], pending: asyncio.Future[Any] | None) -> None:
    """Cancel the step in progress (the producer sees CancelledError where it awaits), then close."""
    if pending is not None and not pending.done():
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def with_heartbeat(events: AsyncIterable[bytes], interval_s: float, ping: bytes = PING) -> AsyncIterator[bytes]:
    """Yield ``events`` as they come, and ``ping`` after every ``interval_s`` without one.

    The source is advanced in a task of its own, so a heartbeat never interrupts it; closing this
    generator cancels the source's current step and closes the source."""
    iterator = aiter(events)
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield ping
                continue
            item, pending = pending.result(), None
            if item is _END:
                return
            yield item
    finally:
        await _close(iterator, pending)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (ASGI ``http.disconnect``). The request body must have been
    read already: other messages are discarded."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(Response):
    """A ``text/event-stream`` response fed by an async iterator of encoded events, opened by a
    ``retry: <retry_ms>`` field (no event: EventSource only adopts the reconnection delay).

    ``heartbeat_s``: send :data:`PING` after that many seconds without an event (None: never).
    After the response, ``disconnected`` tells whether the client left before the last event."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        events: AsyncIterable[bytes],
        *,
        heartbeat_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
        retry_ms: int = RETRY_MS,
    ) -> None:
        self.events = events
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.status_code = status_code
        self.background = None
        self.disconnected = False
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = with_heartbeat(self.events, self.heartbeat_s) if self.heartbeat_s else self.events
        iterator = aiter(events)
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        pending: asyncio.Future[Any] | None = None
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": encode(retry_ms=self.retry_ms), "more_body": True})
            while True:
                pending = asyncio.ensure_future(_next(iterator))
                await asyncio.wait({pending, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():  # the client left while the producer was working
                    self.disconnected = True
                    return
                item, pending = pending.result(), None
                if item is _END:
                    break
                await send({"type": "http.response.body", "body": item, "more_body": True})
                if gone.done():
                    self.disconnected = True
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            await _close(iterator, pending)
