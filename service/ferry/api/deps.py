"""Per-request values the routes declare as dependencies: the request id and the deadline.

Routes get the serving core one way only: ``build_router(core)`` closes over it. Dependencies are
per request. All are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a
thread hop per dependency per request (found profiling the HTTP ceiling: it tripled the per-request cost).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from ferry.core import Core
from ferry.errors import InvalidInput
from ferry.resilience.deadline import Deadline

TIMEOUT_HEADER_DOC = (
    "Deadline in seconds (decimal) for queueing plus model time; may lower the default, values above the "
    "configured maximum are clamped. Past it: 504 deadline_exceeded."
)


def parse_timeout(value: str | None) -> float | None:
    """Seconds from an ``X-Request-Timeout`` header (a positive decimal); None when absent."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also refuses NaN
        raise InvalidInput(
            "X-Request-Timeout must be a positive number of seconds",
            details=[
                {"loc": ["header", "x-request-timeout"], "msg": "positive decimal seconds", "type": "value_error"}
            ],
        )
    return seconds


async def get_request_id(request: Request) -> str:
    state: dict[str, Any] = request.scope.get("state", {})
    return str(state.get("request_id", ""))


def deadline_of(core: Core) -> Callable[..., Awaitable[Deadline]]:
    """The dependency that gives a route its request's deadline."""

    async def get_deadline(
        request: Request,
        x_request_timeout: Annotated[str | None, Header(description=TIMEOUT_HEADER_DOC, examples=["0.5"])] = None,
    ) -> Deadline:
        # The clock starts when the request arrived (set by RequestMiddleware), not after body parsing.
        state: dict[str, Any] = request.scope.get("state", {})
        started = float(state.get("started_monotonic", time.monotonic()))
        return core.deadline(parse_timeout(x_request_timeout), started)

    return get_deadline


RequestIdDep = Annotated[str, Depends(get_request_id)]
