"""Breaker, deadlines and the fault file, in process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ferry.api.deps import parse_timeout
from ferry.api.routes.v2 import timeout_parameter
from ferry.core import Core
from ferry.errors import CircuitOpen, InvalidInput
from ferry.metrics import Metrics
from ferry.resilience.breaker import Breaker
from ferry.resilience.deadline import Deadline
from ferry.resilience.faults import FaultInjector, Faults, InjectedFault
from ferry.settings import BreakerSettings, DeadlineSettings, FaultSettings, Settings


def test_breaker_opens_after_fail_max_and_half_opens() -> None:
    breaker = Breaker(BreakerSettings(fail_max=2, reset_timeout_s=0.2), Metrics(), "m")
    calls = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("down")

    for _ in range(2):
        with pytest.raises(RuntimeError), breaker.guard():  # the tripping call reports the model's error
            failing()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        breaker.check()
    assert 0 < refused.value.retry_after_s <= 0.2
    with pytest.raises(CircuitOpen), breaker.guard():
        failing()
    assert len(calls) == 2  # not called while open
    time.sleep(0.25)
    breaker.check()  # due for a trial: no longer refused on the event loop
    with breaker.guard():
        pass  # the trial succeeds
    assert breaker.state == "closed"


def test_disabled_breaker_never_refuses() -> None:
    breaker = Breaker(BreakerSettings(enabled=False, fail_max=1), Metrics(), "m")
    for _ in range(3):
        with pytest.raises(RuntimeError), breaker.guard():
            raise RuntimeError
    breaker.check()


def test_timeout_header_and_parameter() -> None:
    assert parse_timeout(None) is None
    assert parse_timeout("0.5") == 0.5
    assert parse_timeout("120") == 120
    for bad in ("0", "-2", "abc", "nan", "inf", ""):
        with pytest.raises(InvalidInput):
            parse_timeout(bad)
    assert timeout_parameter(250_000) == 0.25  # microseconds, as Triton clients send it
    for bad in (0, -1, "1", True):
        with pytest.raises(InvalidInput):
            timeout_parameter(bad)


def test_deadline_policy() -> None:
    core = Core(Settings(deadline=DeadlineSettings(default_s=5, max_s=30)), Metrics())
    assert core.deadline(None, started=100.0) == Deadline(at=105.0, budget_s=5)
    assert core.deadline(0.5, started=100.0) == Deadline(at=100.5, budget_s=0.5)
    assert core.deadline(120, started=100.0) == Deadline(at=130.0, budget_s=30), "clamped to the maximum"
    five = core.deadline(None, started=100.0)
    assert five.at_most(0.25) == Deadline(at=100.25, budget_s=0.25)
    assert five.at_most(60) is five, "a deadline is only ever lowered"


def test_deadline_expires() -> None:
    deadline = Deadline.after(0.05)
    assert not deadline.expired() and 0 < deadline.remaining() <= 0.05
    time.sleep(0.06)
    assert deadline.expired()


def test_fault_file_parsing() -> None:
    assert Faults.parse({}) == Faults()
    assert Faults.parse({"error_rate": 1, "latency_ms": 5, "hang": False}).active
    for bad in ([], {"error_rate": 2}, {"latency_ms": -1}, {"hang": "yes"}, {"typo": 1}, {"error_rate": True}):
        with pytest.raises(ValueError):
            Faults.parse(bad)


def test_fault_injector_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    injector = FaultInjector(FaultSettings(enabled=True, file=path), Metrics())
    injector.refresh()  # missing: no faults
    assert not injector.current.active
    path.write_text(json.dumps({"error_rate": 1.0}))
    injector.refresh()
    with pytest.raises(InjectedFault):
        injector.apply()
    path.write_text("{broken")
    injector.refresh()
    injector.apply()  # invalid file: no faults
    path.write_text(json.dumps({"latency_ms": 30}))
    injector.refresh()
    started = time.perf_counter()
    injector.apply()
    assert time.perf_counter() - started >= 0.03
