"""The hung-model watchdog and model-call timeouts as breaker failures, in process with a virtual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import joblib

from ferry.metrics import Metrics
from ferry.resilience.breaker import Breaker
from ferry.resilience.deadline import Deadline
from ferry.resilience.hang import HangWatchdog
from ferry.settings import BreakerSettings, Settings
from support.clock import VirtualClock
from support.models import SlowModel


def _watchdog(clock: VirtualClock, exits: list[str], fail_max: int = 5) -> tuple[HangWatchdog, Breaker]:
    metrics = Metrics()
    breaker = Breaker(BreakerSettings(fail_max=fail_max), metrics, "m")
    hung: list[str] = []
    watchdog = HangWatchdog(
        hang_s=10,
        exit_after_s=5,
        metrics=metrics,
        breaker=breaker,
        request_exit=lambda: exits.append("exit"),
        on_hung=lambda: hung.append("hung"),
        clock=clock,
    )
    return watchdog, breaker


def test_a_call_past_hang_s_makes_the_worker_unready_then_asks_it_to_exit() -> None:
    async def main() -> None:
        clock, exits = VirtualClock(), []
        watchdog, breaker = _watchdog(clock, exits, fail_max=1)
        task = asyncio.create_task(watchdog.run())
        quick = watchdog.started(rows=1)
        slow = watchdog.started(rows=3)
        await clock.advance(2)
        watchdog.finished(quick)
        await clock.advance(7)
        assert not watchdog.hung and watchdog.reason() is None
        await clock.advance(1.5)  # the slow call passes 10 s
        assert watchdog.hung
        assert "running for 10 s" in (watchdog.reason() or "")
        assert breaker.state == "open"  # the hang counted as a failure (fail_max 1)
        await clock.advance(4)
        assert exits == []
        await clock.advance(1.5)  # 5 s after the hang was found
        assert exits == ["exit"]
        await clock.advance(30)
        assert exits == ["exit"]  # asked once
        task.cancel()
        del slow

    asyncio.run(main())


def test_a_hung_call_that_returns_makes_the_worker_ready_again() -> None:
    async def main() -> None:
        clock, exits = VirtualClock(), []
        watchdog, _ = _watchdog(clock, exits)
        call = watchdog.started(rows=1)
        await clock.advance(11)
        watchdog.check()
        assert watchdog.hung
        watchdog.finished(call)
        assert not watchdog.hung
        await clock.advance(10)
        watchdog.check()
        assert exits == []

    asyncio.run(main())


def test_a_model_call_that_outlives_every_deadline_counts_as_a_breaker_failure(tmp_path: Path) -> None:
    """A model slower than every deadline never raises, yet the breaker must open."""
    from ferry.core import Core

    model = tmp_path / "slow.joblib"
    joblib.dump(SlowModel(delay_s=0.05), model)
    # A plain pickle without a card, trusted explicitly (cards are required by default).
    settings = Settings(
        model={"path": model, "require_card": False}, breaker={"fail_max": 2}, batching={"enabled": False}
    )
    metrics = Metrics()

    async def main() -> list[str]:
        core = Core(settings, metrics)
        await core.start()
        outcomes = []
        for _ in range(3):
            try:
                await core.predictor.predict(core.schema.rows_from_records([[1.0, 2.0, 3.0]]), Deadline.after(0.01))
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(getattr(exc, "code", type(exc).__name__))
            await asyncio.sleep(0.08)  # the call finishes in its thread
        await core.stop()
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes == ["deadline_exceeded", "deadline_exceeded", "circuit_open"]
