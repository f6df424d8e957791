"""Hung model calls: a call that never returns must not leave a worker up, ready and useless.

A model call runs in an inference thread that nothing can interrupt. Without this watchdog a model that
hangs forever (a deadlock in native code, a stuck network read inside a custom estimator) gives a
permanent brownout: requests time out one by one, the breaker (which counts exceptions) never opens,
and /readyz stays 200, so the load balancer keeps sending traffic.

The watchdog looks at the calls in progress about four times per ``inference.hang_s``:

- a call running longer than ``hang_s`` is *hung*: it counts as a breaker failure (once), the worker
  turns unready (/readyz 503 "hung", predictions 503 ``model_not_ready``, the ones already waiting
  for a thread too), and
  ``ferry_model_hangs_total`` and a ``model_call_hung`` error line say so;
- if the hung call returns after all, the worker is ready again (``model_call_hang_ended``);
- if it is still running ``inference.hang_exit_s`` later, the worker asks to exit
  (``worker_exiting_hung_model``): the thread cannot be stopped, the process can, and gunicorn
  starts a fresh worker in its place.

Its state is touched only on the event loop: ``started``/``finished`` by the dispatcher, ``check``
by the watchdog task.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from ferry.clock import SYSTEM_CLOCK, Clock
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.resilience.breaker import Breaker

log = get_logger("ferry.inference")


@dataclass
class _Call:
    started: float
    rows: int
    hung: bool = False


class HangWatchdog:
    def __init__(
        self,
        *,
        hang_s: float,
        exit_after_s: float,
        metrics: Metrics,
        breaker: Breaker,
        request_exit: Callable[[], None],
        on_hung: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.hang_s = hang_s
        self.exit_after_s = exit_after_s
        self.metrics = metrics
        self.breaker = breaker
        self.request_exit = request_exit
        self.on_hung = on_hung
        self.clock = clock
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count()
        self.hung_since: float | None = None
        self.exit_requested = False

    @property
    def hung(self) -> bool:
        return self.hung_since is not None

    def reason(self) -> str | None:
        """Why the worker is not ready, for /readyz (None: not hung)."""
        if self.hung_since is None:
            return None
        running = max((self.clock.monotonic() - c.started for c in self._calls.values() if c.hung), default=0.0)
        return f"a model call has been running for {running:.0f} s (inference.hang_s is {self.hang_s:g} s)"

    def started(self, rows: int) -> int:
        call = next(self._ids)
        self._calls[call] = _Call(self.clock.monotonic(), rows)
        return call

    def finished(self, call: int) -> None:
        done = self._calls.pop(call, None)
        if done is not None and done.hung:
            seconds = self.clock.monotonic() - done.started
            log.warning("model_call_hang_ended", running_s=round(seconds, 3), rows=done.rows)
            if not any(c.hung for c in self._calls.values()):
                self.hung_since = None
                self.metrics.model_hung.set(0)

    def check(self) -> None:
        now = self.clock.monotonic()
        for call in self._calls.values():
            if not call.hung and now - call.started >= self.hang_s:
                call.hung = True
                self.metrics.model_hangs.inc()
                self.metrics.model_hung.set(1)
                self.breaker.record_failure("hung")
                if self.hung_since is None:
                    self.hung_since = now
                    self.on_hung()
                log.error(
                    "model_call_hung",
                    running_s=round(now - call.started, 3),
                    rows=call.rows,
                    hang_s=self.hang_s,
                    exit_in_s=self.exit_after_s,
                )
        if self.hung_since is not None and not self.exit_requested and now - self.hung_since >= self.exit_after_s:
            self.exit_requested = True
            log.error("worker_exiting_hung_model", hung_for_s=round(now - self.hung_since, 3))
            self.request_exit()

    async def run(self) -> None:
        interval = min(1.0, self.hang_s / 4)
        while True:
            await self.clock.sleep(interval)
            self.check()
