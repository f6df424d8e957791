"""CORS: which web pages on other origins may call the API from a browser (``api.cors_origins``).

Installed only when origins are configured, as the outermost layer around the one request middleware
(``ferry.api.middleware``), so every answer passes through it: the hot path's, errors, event streams.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here, before
  authentication (browsers never send credentials with a preflight): 204 with the allow headers for a
  listed origin, 403 ``cors_origin_not_allowed`` without any CORS header for another. Preflights are not
  in the access log or the HTTP metrics; browsers cache them for :data:`MAX_AGE_S`.
- Any other request from a listed origin gets ``Access-Control-Allow-Origin: <that origin>`` (never ``*``)
  and the response headers a page may read; from another origin, the response is unchanged, which the
  browser then withholds from the page.
- Every response says ``Vary: Origin``: caches must not give one origin's answer to another.

The allow lists are fixed, not echoed from the request: they name what the API reads and answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.api.errors import render
from ferry.api.middleware import request_id_from
from ferry.errors import CorsOriginNotAllowed

ALLOW_METHODS = ("GET", "POST", "DELETE", "OPTIONS")
# What requests send beyond the CORS-safelisted headers: JSON bodies, credentials (auth), the request id,
# the deadline, the job submit's idempotency key, the OIP binary extension, compressed bodies, resumed
# event streams and trace context.
ALLOW_HEADERS = (
    "Content-Type",
    "Authorization",
    "X-API-Key",
    "X-Request-ID",
    "X-Request-Timeout",
    "Idempotency-Key",
    "Inference-Header-Content-Length",
    "Content-Encoding",
    "Last-Event-ID",
    "traceparent",
    "tracestate",
)
# Response headers a page may read besides the safelisted ones (Content-Type, ...).
EXPOSE_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "Location",
    "Idempotent-Replayed",
    "Inference-Header-Content-Length",
    "WWW-Authenticate",
)
MAX_AGE_S = 600  # below Chromium's cap (7,200 s): a changed allow list reaches browsers within 10 minutes

_VARY = (b"vary", b"Origin")


class CorsMiddleware:
    def __init__(self, app: ASGIApp, *, origins: Sequence[str], allow_credentials: bool = False) -> None:
        self.app = app
        self.origins = frozenset(origins)
        common = [(b"access-control-allow-credentials", b"true")] if allow_credentials else []
        self.preflight_headers = [
            (b"access-control-allow-methods", ", ".join(ALLOW_METHODS).encode()),
            (b"access-control-allow-headers", ", ".join(ALLOW_HEADERS).encode()),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
            *common,
        ]
        self.response_headers = [(b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode()), *common]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        allowed = origin is not None and origin.decode("latin-1") in self.origins
        if scope["method"] == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            await self._preflight(scope, headers, origin if allowed else None, send)
            return
        extra = [(b"access-control-allow-origin", origin), *self.response_headers] if allowed and origin else []

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*_with_vary(message.get("headers", [])), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, headers: dict[bytes, bytes], origin: bytes | None, send: Send) -> None:
        request_id = request_id_from(headers[b"x-request-id"].decode("latin-1") if b"x-request-id" in headers else None)
        id_header = (b"x-request-id", request_id.encode())
        if origin is None:
            response = render(CorsOriginNotAllowed(), request_id, scope.get("path", ""))
            response.raw_headers = [*response.raw_headers, _VARY, id_header]
            await response(scope, _no_receive, send)
            return
        start_headers = [(b"access-control-allow-origin", origin), *self.preflight_headers, _VARY, id_header]
        await send({"type": "http.response.start", "status": 204, "headers": start_headers})
        await send({"type": "http.response.body", "body": b""})


def _with_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers with Origin added to Vary (to an existing Vary header, or as a new one)."""
    out, found = [], False
    for name, value in headers:
        if name.lower() == b"vary":
            found = True
            if b"origin" not in value.lower() and value.strip() != b"*":
                value = value + b", Origin"
        out.append((name, value))
    return out if found else [*out, _VARY]


async def _no_receive() -> Message:  # pragma: no cover - responses do not read
    return {"type": "http.disconnect"}
