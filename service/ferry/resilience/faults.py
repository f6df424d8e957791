"""Fault injection, driven by a JSON file that every worker re-reads when it changes.

File: ``{"error_rate": 0..1, "latency_ms": >= 0, "hang": bool}``. The delay happens first, then the
error is drawn. ``hang`` blocks model calls until the file says otherwise. Faults are applied inside
the circuit breaker, exactly where a real model failure would happen.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.settings import FaultSettings

log = get_logger("ferry.faults")
POLL_INTERVAL_S = 0.25  # a change reaches every worker within this (plus its own loop latency)
ACTIVE_REMINDER_S = 60.0


class InjectedFault(RuntimeError):
    """An error the fault file asked for."""


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    latency_ms: float = 0.0
    hang: bool = False

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_ms > 0 or self.hang

    @classmethod
    def parse(cls, raw: Any) -> Faults:
        if not isinstance(raw, dict) or set(raw) - {"error_rate", "latency_ms", "hang"}:
            raise ValueError("expected an object with error_rate, latency_ms and/or hang")
        rate, latency, hang = raw.get("error_rate", 0.0), raw.get("latency_ms", 0.0), raw.get("hang", False)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError("error_rate must be a number from 0 to 1")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= 3_600_000:
            raise ValueError("latency_ms must be a number from 0 to 3600000")
        if not isinstance(hang, bool):
            raise ValueError("hang must be true or false")
        return cls(float(rate), float(latency), hang)


class FaultInjector:
    """Current faults of this worker; ``apply()`` runs in the inference thread before the model."""

    def __init__(self, settings: FaultSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current = Faults()
        self._signature: tuple[float, int] | None = None
        self._problem: str | None = None
        self._reminded = 0.0
        self._random = random.Random()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.settings.file is not None

    def apply(self) -> None:
        faults = self.current
        if not faults.active:
            return
        # Sleep in slices and re-read the current faults, so clearing the file releases calls at once.
        started = time.monotonic()
        while (time.monotonic() - started) * 1000 < self.current.latency_ms or self.current.hang:
            time.sleep(0.02)
        if faults.error_rate and self._random.random() < faults.error_rate:
            raise InjectedFault(f"injected fault (error_rate={faults.error_rate})")

    def refresh(self) -> None:
        """Re-read the file if its mtime or size changed."""
        path = self.settings.file
        assert path is not None
        try:
            stat = path.stat()
        except OSError as exc:
            self._use(Faults(), f"cannot read fault file {path}: {exc.strerror}")
            self._signature = None
            return
        signature = (stat.st_mtime, stat.st_size)
        if signature == self._signature:
            self._remind()
            return
        self._signature = signature
        try:
            faults = Faults.parse(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            self._use(Faults(), f"invalid fault file {path}: {exc}")
            return
        self._use(faults, None)

    def _use(self, faults: Faults, problem: str | None) -> None:
        if problem and problem != self._problem:
            log.warning("fault_file_ignored", problem=problem)
        self._problem = problem
        if faults != self.current:
            self.current = faults
            self.metrics.faults_active.set(1 if faults.active else 0)
            if faults.active:
                self._reminded = time.monotonic()
                log.warning("FAULT_INJECTION_ACTIVE", **faults.__dict__, file=str(self.settings.file))
            else:
                log.warning("fault_injection_cleared", file=str(self.settings.file))

    def _remind(self) -> None:
        if self.current.active and time.monotonic() - self._reminded > ACTIVE_REMINDER_S:
            self._reminded = time.monotonic()
            log.warning("FAULT_INJECTION_ACTIVE", **self.current.__dict__, file=str(self.settings.file))

    async def watch(self) -> None:
        log.warning("fault_injection_enabled", file=str(self.settings.file))
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(POLL_INTERVAL_S)
