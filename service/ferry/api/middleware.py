"""The one ASGI middleware every HTTP request passes through.

It assigns the request id and trace id, enforces the body limit and content type before the body is
read, authenticates (``ferry.api.auth``), serves the prediction routes itself (``ferry.api.hot_path``)
and hands everything else to FastAPI, turns any exception that escaped into a rendered error, and on
the way out writes the single access log line and the HTTP metrics (labelled with the route template).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry import tracing
from ferry.api import content_encoding
from ferry.api.auth import authenticate
from ferry.api.errors import render
from ferry.api.hot_path import HotPath
from ferry.auth import Authenticator
from ferry.errors import FerryError, PayloadTooLarge, UnsupportedMediaType
from ferry.lifecycle import is_draining
from ferry.logging import get_logger
from ferry.metrics import Metrics

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
UNMATCHED_ROUTE = "unmatched"
# While draining, every response asks the client to close its keep-alive connection (uvicorn then
# closes it after the response), so no request is sent on a connection about to be closed.
_CONNECTION_CLOSE = (b"connection", b"close")

# The pod (its hostname, as Kubernetes sets HOSTNAME) on every access line, read once.
POD = os.environ.get("HOSTNAME") or socket.gethostname()
# Error codes of statuses answered without a FerryError passing through here (a client that left
# before its answer: 499; a v2 readiness probe's 503 is a plain answer, not a refusal).
_STATUS_CODES = {499: "client_disconnected", 503: "not_ready", 500: FerryError.code}

access_log = get_logger("ferry.access")
log = get_logger("ferry.http")


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID if it is safe to log and echo, else a fresh one."""
    if header and _REQUEST_ID.match(header):
        return header
    return secrets.token_hex(16)


def trace_id_from(traceparent: str | None) -> str:
    """The trace id of a valid W3C traceparent, else a fresh one."""
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != "ff" and match.group(2) != "0" * 32 and match.group(3) != "0" * 16:
            return match.group(2)
    return secrets.token_hex(16)


def is_json_content_type(value: str | None) -> bool:
    """Missing counts as JSON: Open Inference Protocol clients send none."""
    if not value:
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_binary_content_type(value: str | None) -> bool:
    """application/octet-stream: binary tensor requests, and JSON bodies some clients label so (aiohttp)."""
    return value is not None and value.split(";", 1)[0].strip().lower() == "application/octet-stream"


def is_infer_path(path: str) -> bool:
    return path.startswith("/v2/models/") and path.endswith("/infer")


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        access_log: bool,
        routes: Sequence[BaseRoute],
        body_limits: Mapping[str, int] | None = None,
        authenticator: Authenticator | None = None,
        hot_path: HotPath | None = None,
        max_decompressed_bytes: int | None = None,
        model_version: Callable[[], str] = lambda: "",
    ) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})  # path -> limit, for routes with their own (the stream)
        self.access_log = access_log
        self.authenticator = authenticator
        self.max_decompressed_bytes = max_decompressed_bytes  # None: each route's body limit
        self.hot_path = hot_path  # None: FastAPI serves the prediction routes too (api.lean_path off)
        self.model_version = model_version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])
        state = scope.setdefault("state", {})
        state["started_monotonic"] = time.monotonic()
        request_id = request_id_from(_text(headers.get(b"x-request-id")))
        server_span = tracing.server_span(scope["method"], scope.get("path", ""), headers)
        trace_id = server_span.trace_id or trace_id_from(_text(headers.get(b"traceparent")))
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id)
        status = 0
        code: str | None = None  # the error code of a refusal this middleware rendered
        template: str | None = None  # known without route matching on the hot path
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [id_header, _CONNECTION_CLOSE] if is_draining() else [id_header]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            receive = await self._guard_body(scope, headers, receive)
            if self.authenticator is not None:
                await authenticate(self.authenticator, scope, headers)
            if self.hot_path is not None and (hot := self.hot_path.match(scope)) is not None:
                template, handler, params = hot
                # The server span opened on arrival (tracing) already covers this handling.
                await self.hot_path.handle(scope, receive, send_with_id, handler, params)
            else:
                await self.app(scope, receive, send_with_id)
        except FerryError as error:
            if status:  # response already started: nothing more can be sent
                raise
            code = error.code
            await self._send_error(error, scope, request_id, send_with_id, template)
        except ClientDisconnect:
            # The client left (or its stalled body was timed out) before the body was read: nobody to answer.
            status = status or 499
        except Exception:
            log.error("unhandled_error", path=scope.get("path"), exc_info=True)
            if not status:
                code = FerryError.code
                await self._send_error(FerryError(), scope, request_id, send_with_id)
            status = 500
        finally:
            self.metrics.http_in_flight.dec()
            self._finish(scope, status or 500, started, request_id, trace_id, server_span, code, template)

    async def _guard_body(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive) -> Receive:
        """413 from Content-Length alone, 415 from Content-Type alone; buffer only chunked bodies."""
        if scope["method"].encode() not in _BODY_METHODS:
            return receive
        limit = self.body_limits.get(scope.get("path", ""), self.max_body_bytes)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise PayloadTooLarge(f"request body exceeds {limit} bytes", headers={"connection": "close"})
        content_type = _text(headers.get(b"content-type"))
        if not is_json_content_type(content_type):
            if not is_infer_path(scope.get("path", "")):
                raise UnsupportedMediaType()
            if not is_binary_content_type(content_type):
                raise UnsupportedMediaType("request body must be application/json or application/octet-stream")
        encoding = headers.get(b"content-encoding")
        wbits = content_encoding.wbits_for(encoding.decode("latin-1")) if encoding is not None else None
        if wbits is not None:
            return await self._inflate(scope, receive, wbits, limit)
        if length is not None:
            return receive  # the server enforces Content-Length; the body cannot grow past it
        # Chunked body: read it here, up to the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message], receive)
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes", headers={"connection": "close"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = b"".join(chunks)
                return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    async def _inflate(self, scope: Scope, receive: Receive, wbits: int, limit: int) -> Receive:
        """A compressed body read (at most ``limit`` bytes of it) and inflated as it arrives (at most
        ``max_decompressed_bytes``, default the route's body limit), then replayed to the app with the
        headers of what it now is."""
        inflater = content_encoding.Inflater(wbits, self.max_decompressed_bytes or limit)
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes", headers={"connection": "close"})
            await inflater.feed(chunk)
            if not message.get("more_body", False):
                break
        body = inflater.finish()
        scope["headers"] = [
            *((k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")),
            (b"content-length", str(len(body)).encode()),
        ]
        return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    async def _send_error(
        self, error: FerryError, scope: Scope, request_id: str, send: Send, template: str | None = None
    ) -> None:
        """The one place an error becomes a response: routes and handlers raise, this renders."""
        self.metrics.errors.labels(template or self._route_template(scope), error.code).inc()
        response = render(error, request_id, scope.get("path", ""))
        await response({"type": "http"}, _no_receive, send)

    def _finish(
        self,
        scope: Scope,
        status: int,
        started: float,
        request_id: str,
        trace_id: str,
        span: tracing.ServerSpan,
        code: str | None,
        template: str | None,
    ) -> None:
        seconds = time.perf_counter() - started
        template = template or self._route_template(scope)
        span.end(template, status)
        self.metrics.observe_request(template, scope["method"], status, seconds, exemplar=trace_id)
        if self.access_log:
            client = scope.get("client")
            access_log.info(
                "request",
                method=scope["method"],
                path=scope.get("path"),
                route=template,
                status=status,
                code=code if code is not None or status < 400 else _STATUS_CODES.get(status, "http_error"),
                duration_ms=round(seconds * 1000, 3),
                request_id=request_id,
                trace_id=trace_id,
                client=f"{client[0]}:{client[1]}" if client else None,
                pod=POD,
                model_version=self.model_version(),
            )
        structlog.contextvars.clear_contextvars()

    def _route_template(self, scope: Scope) -> str:
        """The matched route's template; for requests refused before routing, the route they targeted."""
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or UNMATCHED_ROUTE


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _replay(messages: list[Message], then: Receive) -> Receive:
    """Hand the buffered messages to the app first, then the live channel (to see disconnects)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive


async def _no_receive() -> Any:  # pragma: no cover - responses do not read
    return {"type": "http.disconnect"}
