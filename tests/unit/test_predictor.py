"""The Predictor in process: admission, micro-batching, poison isolation, deadlines, slots, shutdown.

A scripted estimator stands in for the model: it records every call's rows and can be held at a gate
(a threading.Event), so a test decides exactly which requests wait while a call runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from ferry.errors import CircuitOpen, DeadlineExceeded, ModelError, ModelNotReady, Overloaded
from ferry.inference import Predictor
from ferry.metrics import Metrics
from ferry.model import LoadedModel, ModelState
from ferry.resilience.deadline import Deadline
from ferry.settings import Settings

POISON = 13.0


class ScriptedModel:
    """Two classes; probability of "b" = first column / 100. Fails on any call holding POISON."""

    classes_ = np.array(["a", "b"])
    n_features_in_ = 2

    def __init__(self) -> None:
        self.calls: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        column = [float(v) for v in np.asarray(x, dtype=float)[:, 0]]
        self.calls.append(column)
        self.entered.set()
        self.gate.wait(10)
        if POISON in column:
            raise ValueError("poison row")
        p = np.asarray(column) / 100
        return np.stack([1 - p, p], axis=1)


class Holder:
    """The parts of ModelHolder the Predictor reads."""

    def __init__(self, model: ScriptedModel) -> None:
        self.name = "scripted"
        self.state = ModelState.READY
        self.loaded = LoadedModel(estimator=model, sha256="0" * 64, classes=["a", "b"], n_features=2)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values])


def run(test: Callable[[Predictor, ScriptedModel], Awaitable[None]], **settings: Any) -> None:
    config = Settings(
        inference={"threads": 1, "max_queue": 8} | settings.pop("inference", {}),
        batching={"max_batch_size": 64, "max_wait_ms": 0.0} | settings.pop("batching", {}),
        breaker={"fail_max": 3, "reset_timeout_s": 30} | settings.pop("breaker", {}),
    )
    model = ScriptedModel()

    async def main() -> None:
        predictor = Predictor(Holder(model), config, Metrics())  # type: ignore[arg-type]
        dispatcher = asyncio.create_task(predictor.run())
        await asyncio.sleep(0)
        try:
            await test(predictor, model)
        finally:
            model.gate.set()
            dispatcher.cancel()
            predictor.shutdown()

    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "condition not reached"
        await asyncio.sleep(0.005)


def counter(predictor: Predictor, name: str, *labels: str) -> float:
    metric = getattr(predictor.metrics, name)
    return float((metric.labels(*labels) if labels else metric)._value.get())


def test_requests_waiting_behind_a_call_are_merged_and_each_gets_its_own_rows() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        first = asyncio.create_task(predictor.predict(rows(1), Deadline.after(5)))
        await until(model.entered.is_set)
        waiting = [asyncio.create_task(predictor.predict(rows(30 + i, 40 + i), Deadline.after(5))) for i in range(5)]
        await until(lambda: len(predictor._queue) == 5)
        model.gate.set()
        results = await asyncio.gather(first, *waiting)
        assert model.calls == [[1.0], [30, 40, 31, 41, 32, 42, 33, 43, 34, 44]], "the five merged into one call"
        for i, prediction in enumerate(results[1:]):
            assert prediction.probabilities is not None
            assert prediction.probabilities[:, 1].tolist() == [(30 + i) / 100, (40 + i) / 100]
            assert prediction.labels == ["a", "a"]

    run(test)


def test_a_poison_record_fails_only_its_own_request() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        first = asyncio.create_task(predictor.predict(rows(1), Deadline.after(5)))
        await until(model.entered.is_set)
        good = [asyncio.create_task(predictor.predict(rows(60 + i), Deadline.after(5))) for i in range(3)]
        bad = asyncio.create_task(predictor.predict(rows(POISON), Deadline.after(5)))
        await until(lambda: len(predictor._queue) == 4)
        model.gate.set()
        await first
        assert [(await g).labels for g in good] == [["b"], ["b"], ["b"]]
        with pytest.raises(ModelError):
            await bad
        assert model.calls[1] == [60, 61, 62, POISON], "merged first"
        assert model.calls[2:] == [[60], [61], [62], [POISON]], "then each alone, once the merged call failed"

    run(test)


def test_a_deadline_that_passes_in_the_queue_never_runs() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        first = asyncio.create_task(predictor.predict(rows(1), Deadline.after(5)))
        await until(model.entered.is_set)
        with pytest.raises(DeadlineExceeded):
            await predictor.predict(rows(2), Deadline.after(0.05))
        model.gate.set()
        await first
        await asyncio.sleep(0.05)
        assert model.calls == [[1.0]], "the expired request was dropped, not run"
        assert counter(predictor, "deadline_exceeded", "queued") == 1

    run(test)


def test_a_deadline_that_passes_while_the_call_runs_answers_at_the_deadline() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await predictor.predict(rows(1), Deadline.after(0.1))
        assert time.monotonic() - started < 1, "answered at its deadline, not when the call returned"
        assert counter(predictor, "deadline_exceeded", "running") == 1
        # The thread is still busy: its slot stays taken until the call returns.
        assert predictor._free == 0
        model.gate.set()
        await until(lambda: predictor._free == 1)
        assert (await predictor.predict(rows(50), Deadline.after(5))).labels == ["a"]

    run(test)


def test_a_full_queue_sheds_at_once_and_slots_come_back() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        running = asyncio.create_task(predictor.predict(rows(1), Deadline.after(5)))
        await until(model.entered.is_set)
        queued = [asyncio.create_task(predictor.predict(rows(2), Deadline.after(5))) for _ in range(2)]
        await until(lambda: len(predictor._queue) == 2)
        started = time.monotonic()
        with pytest.raises(Overloaded) as shed:
            await predictor.predict(rows(3), Deadline.after(5))
        assert time.monotonic() - started < 0.05 and shed.value.retry_after_s == 1
        model.gate.set()
        await asyncio.gather(running, *queued)
        assert predictor._free == 1 and not predictor._queue and predictor._admitted == 0
        assert counter(predictor, "inference_in_flight") == 0
        await predictor.predict(rows(4), Deadline.after(5))

    run(test, inference={"max_queue": 2})


def test_a_failing_model_opens_the_breaker_which_then_refuses_before_queueing() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        for _ in range(3):
            with pytest.raises(ModelError):
                await predictor.predict(rows(POISON), Deadline.after(5))
        calls = len(model.calls)
        with pytest.raises(CircuitOpen) as refused:
            await predictor.predict(rows(1), Deadline.after(5))
        assert len(model.calls) == calls and refused.value.retry_after_s is not None
        assert 0 < refused.value.retry_after_s <= 30

    run(test)


def test_a_model_that_is_not_ready_is_refused() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        predictor.holder.state = ModelState.LOADING  # type: ignore[misc]
        with pytest.raises(ModelNotReady):
            await predictor.predict(rows(1), Deadline.after(5))
        with pytest.raises(ModelNotReady):
            predictor.admit()

    run(test)


def test_batching_off_runs_one_request_per_call() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        first = asyncio.create_task(predictor.predict(rows(1), Deadline.after(5)))
        await until(model.entered.is_set)
        waiting = [asyncio.create_task(predictor.predict(rows(i), Deadline.after(5))) for i in range(2, 5)]
        await until(lambda: len(predictor._queue) == 3)
        model.gate.set()
        await asyncio.gather(first, *waiting)
        assert model.calls == [[1.0], [2.0], [3.0], [4.0]]

    run(test, batching={"enabled": False})


def test_shutdown_does_not_wait_for_a_hung_call() -> None:
    async def test(predictor: Predictor, model: ScriptedModel) -> None:
        model.gate.clear()
        hung = asyncio.create_task(predictor.predict(rows(1), Deadline.after(30)))
        await until(model.entered.is_set)
        started = time.monotonic()
        predictor.shutdown()
        assert time.monotonic() - started < 0.5
        hung.cancel()

    run(test)
