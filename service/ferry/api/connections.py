"""Connection protection in each worker: header size, header and body read timeouts, connection limit.

uvicorn's httptools protocol caps none of these (its ``h11_max_incomplete_event_size`` belongs to the
h11 protocol, ``limit_concurrency`` answers a plain-text 503 and counts requests in progress as well,
and gunicorn's ``limit_request_field_size`` does not reach uvicorn workers), so a client could send a
256 MB header, or hold a connection open forever by sending nothing, half its headers or half its
body. :class:`GuardedHttpToolsProtocol` is uvicorn's protocol with those gaps closed:

- request line plus headers over ``connections.max_header_bytes`` -> 431 ``headers_too_large``, closed;
- complete headers not received within ``connections.header_timeout_s`` of the first byte (or of
  the accept, for a connection that sends nothing) -> closed and logged;
- a request body that pauses longer than ``connections.body_timeout_s`` -> 408 ``body_timeout``,
  closed and logged (a pause caused by the app not reading yet does not count);
- more than the connection limit open in this worker -> the oldest connection that has no request
  being answered (idle keep-alive, or still sending headers or body) is closed to make room; when
  every connection is busy the new one gets 503 ``too_many_connections`` and is closed. The limit
  is ``connections.max_connections``, lowered to fit ``RLIMIT_NOFILE``, so the process refuses
  cleanly before ``accept`` ever meets EMFILE and probes keep getting through.

The checks cost a comparison per read and one timer per request phase; nothing per byte.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ferry.errors import BodyTimeout, FerryError, HeadersTooLarge, TooManyConnections
from ferry.logging import get_logger
from ferry.settings import ConnectionSettings

log = get_logger("ferry.connections")

# Descriptors kept free for what is not a client connection: the listen socket, job store and metric
# files, the model, pipes, the event loop's own. Plus 1/32 of the limit for bursts of accepts.
FD_RESERVE = 64

IDLE, HEADERS, BODY, ANSWERING, CLOSING = "idle", "headers", "body", "answering", "closing"
# After an error answer, what the client still sends is read and dropped for at most this long before
# the connection is closed (nginx's lingering close): closing a socket with unread data sends a reset,
# which can destroy the answer before the client reads it.
LINGER_S = 2.0
# Eviction order at the connection limit: idle keep-alive first, then stalled headers, then bodies.
_EVICTABLE = {IDLE: 0, HEADERS: 1, BODY: 2}

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def effective_max_connections(configured: int, nofile_soft: int) -> int:
    """The connection limit that fits the descriptor limit (RLIMIT_NOFILE soft value)."""
    if nofile_soft == resource.RLIM_INFINITY or nofile_soft <= 0:
        return configured
    room = nofile_soft - FD_RESERVE - nofile_soft // 32
    return max(16, min(configured, room))


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one (as Go and nginx's worker_rlimit_nofile do);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def configure(settings: ConnectionSettings) -> ConnectionLimits:
    """Set this process's limits (once per worker, before it serves)."""
    nofile = raise_nofile_limit()
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=effective_max_connections(settings.max_connections, nofile),
    )
    if limits.max_connections < settings.max_connections:
        log.warning(
            "max_connections_lowered",
            configured=settings.max_connections,
            effective=limits.max_connections,
            nofile=nofile,
            hint="raise the container's nofile limit",
        )
    GuardedHttpToolsProtocol.limits = limits
    return limits


def _on_close_default(reason: str) -> None:
    pass


# Counts connections ferry closed itself, by reason (set by the app to its metrics).
on_closed: Callable[[str], None] = _on_close_default


def set_close_observer(observer: Callable[[str], None]) -> None:
    global on_closed
    on_closed = observer


def _raw_response(error: FerryError) -> bytes:
    """The error as ferry renders every error, written before (or instead of) the app seeing the request."""
    request_id = secrets.token_hex(16)
    body = orjson.dumps({"code": error.code, "message": error.message, "request_id": request_id})
    retry_after = b"retry-after: %d\r\n" % round(error.retry_after_s) if error.retry_after_s else b""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS[error.status]),
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id.encode(),
            retry_after,
            b"\r\n",
            body,
        )
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits] = ConnectionLimits(32 * 1024, 10.0, 30.0, 4096)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = HEADERS
        self._since = 0.0  # loop time the current phase began
        self._header_bytes = 0
        self._last_read = 0.0
        self._guard: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            log.warning(
                "connection_refused", reason="too_many_connections", client=self._client(), open=len(self.connections)
            )
            on_closed("too_many_connections")
            self._close_with(TooManyConnections(retry_after_s=1))
            return
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the connection that least deserves its descriptor; False when none may be closed."""
        victim: GuardedHttpToolsProtocol | None = None
        rank = (99, 0.0)
        for connection in self.connections:
            if connection is self or not isinstance(connection, GuardedHttpToolsProtocol):
                continue
            if connection._phase not in _EVICTABLE:
                continue
            cycle = connection.cycle
            if connection._phase != BODY and cycle is not None and not cycle.response_complete:
                continue  # a pipelined request arrived while the previous one is being answered
            candidate = (_EVICTABLE[connection._phase], connection._since)
            if candidate < rank:
                victim, rank = connection, candidate
        if victim is None:
            return False
        log.warning("connection_evicted", phase=victim._phase, client=victim._client(), open=len(self.connections))
        on_closed(f"evicted_{victim._phase}")
        victim._disarm()
        victim.transport.close()
        self.connections.discard(victim)
        return True

    # -- reads -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._phase == CLOSING:
            return  # lingering: dropped unread
        if self._phase in (IDLE, HEADERS):
            self._header_bytes += len(data)
        super().data_received(data)
        # Timers are armed only for a request still incomplete after a read: a request that arrives
        # whole (the usual case) costs no timer at all.
        if self._phase == HEADERS:
            if self._header_bytes > self.limits.max_header_bytes:
                log.warning("request_headers_too_large", client=self._client(), received=self._header_bytes)
                on_closed("headers_too_large")
                limit = self.limits.max_header_bytes
                self._close_with(HeadersTooLarge(f"request line and headers exceed {limit} bytes"))
            elif self._guard is None:
                remaining = self.limits.header_timeout_s - (self.loop.time() - self._since)
                self._arm(max(0.0, remaining), self._header_timeout)
        elif self._phase == BODY and self._guard is None:
            self._arm(self.limits.body_timeout_s, self._body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != HEADERS:  # a new request on a kept-alive connection
            self._enter(HEADERS)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._enter(BODY)
        self._last_read = self._since
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._last_read = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._enter(ANSWERING)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase == ANSWERING:
            self._enter(IDLE)
        super().on_response_complete()

    # -- timeouts --------------------------------------------------------------------------------
    def _header_timeout(self) -> None:
        self._guard = None
        if self._phase != HEADERS or self.transport.is_closing():
            return
        log.warning(
            "request_header_timeout",
            client=self._client(),
            received=self._header_bytes,
            timeout_s=self.limits.header_timeout_s,
        )
        on_closed("header_timeout")
        self.transport.close()

    def _body_timeout(self) -> None:
        self._guard = None
        if self._phase != BODY or self.transport.is_closing():
            return
        now, timeout = self.loop.time(), self.limits.body_timeout_s
        if self.flow.read_paused:  # the app has not read what came: the client is not the one stalling
            self._last_read = now
        if now - self._last_read < timeout:
            self._arm(timeout - (now - self._last_read), self._body_timeout)
            return
        log.warning("request_body_timeout", client=self._client(), path=self.scope.get("path"), timeout_s=timeout)
        on_closed("body_timeout")
        if self.cycle is not None and not self.cycle.response_started:
            self._close_with(BodyTimeout(f"no part of the request body arrived for {timeout:g} s"))
        else:
            self.transport.close()

    # -- helpers ---------------------------------------------------------------------------------
    def _enter(self, phase: str) -> None:
        self._phase = phase
        self._since = self.loop.time()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._guard = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _close_with(self, error: FerryError) -> None:
        """Answer with an error, half-close, drop what still comes for LINGER_S, then close."""
        self._disarm()
        self._phase = CLOSING
        if self.cycle is not None:
            self.cycle.keep_alive = False
        if self.transport.is_closing():
            return
        self.transport.write(_raw_response(error))
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self.flow.resume_reading()
        self._guard = self.loop.call_later(LINGER_S, self.transport.close)

    def _client(self) -> str | None:
        return f"{self.client[0]}:{self.client[1]}" if self.client else None
