"""The background loop every job task runs: a step, again and again, surviving store outages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ferry.clock import Clock
from ferry.logging import get_logger

log = get_logger("ferry.jobs")
# After an unexpected error a loop waits this many poll intervals (at most ERROR_PAUSE_MAX_S)
# before trying again, so a store outage is not hammered.
ERROR_PAUSE_POLLS = 10
ERROR_PAUSE_MAX_S = 5.0


async def forever(step: Callable[[], Awaitable[bool]], *, name: str, poll_s: float, clock: Clock) -> None:
    """Run ``step`` until cancelled. It returns True when it did work (run again at once) and False
    when there was nothing to do (sleep one poll interval). A failing step (store down, network) is
    logged and retried after a pause, never fatal: a runner must outlive its store's outages."""
    while True:
        try:
            busy = await step()
        except Exception as exc:
            log.error("jobs_loop_error", loop=name, error=f"{type(exc).__name__}: {exc}")
            await clock.sleep(min(ERROR_PAUSE_MAX_S, poll_s * ERROR_PAUSE_POLLS))
            continue
        if not busy:
            await clock.sleep(poll_s)
