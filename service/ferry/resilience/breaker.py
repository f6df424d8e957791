"""Circuit breaker around model execution (pybreaker), one per worker.

pybreaker's ``call()`` holds a lock for the whole guarded call, which would serialise inference
threads; ``calling()`` takes the lock only to check and record state, so it is used here, in the
inference thread, around the synchronous model call (a coroutine would hide the failures from it).
The event loop also checks the state before queueing, so an open breaker answers at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pybreaker

from ferry.errors import CircuitOpen
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.settings import BreakerSettings

log = get_logger("ferry.breaker")
STATE_VALUE = {"closed": 0, "half-open": 1, "open": 2}


class _OutsideFailure(Exception):
    """Raised inside the breaker only to make it count a failure it did not see raised."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", None)
        new = new_state.name
        if old == new:
            return
        self.metrics.breaker_state.set(STATE_VALUE[new])
        self.metrics.breaker_transitions.labels(new).inc()
        level = "error" if new == "open" else "warning"
        getattr(log, level)(
            "circuit_breaker_state_changed",
            model=self.model,
            old=old,
            new=new,
            failures=cb.fail_counter,
            reset_timeout_s=cb.reset_timeout,
        )


class Breaker:
    def __init__(self, settings: BreakerSettings, metrics: Metrics, model: str) -> None:
        self.enabled = settings.enabled
        self.reset_timeout_s = settings.reset_timeout_s
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout_s,
            listeners=[_Listener(metrics, model)],
            name=f"model:{model}",
            # The call that trips the breaker did run the model: it reports the model's own error.
            throw_new_error_on_trip=False,
        )
        metrics.breaker_state.set(0)

    @property
    def state(self) -> str:
        return self._cb.current_state

    def check(self) -> None:
        """On the event loop, before queueing: fail fast while open and not yet due for a trial."""
        if not self.enabled or self._cb.current_state != "open":
            return
        opened_at = self._cb._state_storage.opened_at  # pybreaker exposes no public accessor
        if opened_at is None:
            return
        remaining = self.reset_timeout_s - (datetime.now(UTC) - opened_at).total_seconds()
        if remaining > 0:
            raise CircuitOpen(retry_after_s=remaining)

    def record_failure(self, kind: str) -> None:
        """Count a failure seen outside a guarded call (a call found hung while still running)."""
        if not self.enabled:
            return
        try:
            with self._cb.calling():
                raise _OutsideFailure(kind)
        except (_OutsideFailure, pybreaker.CircuitBreakerError):
            pass

    @contextmanager
    def guard(self) -> Iterator[None]:
        """In the inference thread, around the model call."""
        if not self.enabled:
            yield
            return
        try:
            with self._cb.calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(retry_after_s=self.reset_timeout_s) from None
