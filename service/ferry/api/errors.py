"""Errors as HTTP responses: the one renderer, and framework statuses as ``FerryError``s.

The body is ``{"code", "message", "request_id", "details"?}`` on ferry routes and the Open Inference
Protocol shape ``{"error": message, "code", "request_id"}`` under ``/v2``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from ferry.errors import (
    BadRequest,
    FerryError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)


def _status_error(status: int) -> type[FerryError]:
    return {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}.get(
        status, BadRequest if 400 <= status < 500 else FerryError
    )


def from_status(status: int, message: str | None = None) -> FerryError:
    """A FerryError for a bare HTTP status raised by the framework (unknown route, wrong method)."""
    return _status_error(status)(message)


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The ``Allow`` value of a 405: every method some route on the request's path serves."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def is_protocol_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def render(error: FerryError, request_id: str, path: str) -> Response:
    body: dict[str, Any]
    status = error.status
    if is_protocol_path(path):
        # Open Inference Protocol error shape (code and request_id are extra, clients ignore them);
        # the protocol reports invalid requests as 400.
        body = {"error": error.message, "code": error.code, "request_id": request_id}
        status = 400 if status == 422 else status
    else:
        body = {"code": error.code, "message": error.message, "request_id": request_id}
    if error.details:
        body["details"] = error.details
    headers = dict(error.headers)
    if error.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(error.retry_after_s)))
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")
