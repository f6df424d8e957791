"""Dependencies shared by the routes.

All are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop per
dependency per request (found profiling the HTTP ceiling: it tripled the per-request cost).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Request

from ferry.core import Core
from ferry.resilience.deadline import Deadline, parse_timeout_header


async def get_core(request: Request) -> Core:
    return request.app.state.core


async def get_request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


async def get_deadline(
    request: Request,
    x_request_timeout: Annotated[
        str | None,
        Header(
            description="Deadline in seconds (decimal) for queueing plus model time; may lower the default, "
            "values above the configured maximum are clamped. Past it: 504 deadline_exceeded.",
            examples=["0.5"],
        ),
    ] = None,
) -> Deadline:
    settings = request.app.state.core.settings.deadline
    seconds = parse_timeout_header(x_request_timeout, settings)
    # The clock starts when the request arrived (set by RequestMiddleware), not after body parsing.
    started = request.scope.get("state", {}).get("started_monotonic", time.monotonic())
    return Deadline(at=started + seconds, budget_s=seconds)


CoreDep = Annotated[Core, Depends(get_core)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
DeadlineDep = Annotated[Deadline, Depends(get_deadline)]
