"""Running the model: admission, micro-batching, deadlines, breaker and faults, off the event loop.

Knows nothing of HTTP. ``Predictor.predict(rows, deadline)`` returns a ``Prediction`` or raises a
``FerryError``:

- ``model_not_ready`` / ``circuit_open`` / ``deadline_exceeded`` / ``overloaded`` are decided on the
  event loop, before anything is queued, so they cost microseconds;
- admitted requests wait in a bounded queue; a dispatcher task starts a model call whenever one of
  the ``threads`` inference threads is free, taking every waiting request it can merge (up to
  ``batching.max_batch_size`` rows) into one ``predict_proba`` call, and hands each caller its rows;
- a call's thread slot is released when the call *returns*, not when its callers give up, so the
  number of running model calls never exceeds ``threads``, whatever the model does;
- a request whose deadline passes while queued is dropped without running; one whose deadline
  passes while its call runs gets 504 at its deadline and the call's result is discarded.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from ferry import tracing
from ferry.errors import DeadlineExceeded, FerryError, ModelError, ModelNotReady, ModelTimedOut, Overloaded
from ferry.lifecycle import request_exit
from ferry.logging import get_logger
from ferry.metrics import MAX_CLASS_LABELS, Metrics
from ferry.model import LoadedModel, ModelHolder
from ferry.resilience.breaker import Breaker
from ferry.resilience.deadline import Deadline
from ferry.resilience.faults import FaultInjector
from ferry.resilience.hang import HangWatchdog
from ferry.settings import Settings

log = get_logger("ferry.inference")


@dataclass(frozen=True)
class Prediction:
    labels: list[Any]  # one predicted label per row (class label, or a number for regressors)
    probabilities: np.ndarray | None  # [rows, classes], None for models without predict_proba
    classes: list[str] | None

    def rows(self) -> list[dict[str, Any]]:
        """One ``{"prediction", "probabilities"}`` per row: what every API answers per record."""
        if self.probabilities is None or self.classes is None:
            return [{"prediction": label, "probabilities": None} for label in self.labels]
        classes = self.classes
        return [
            {"prediction": label, "probabilities": dict(zip(classes, row, strict=True))}
            for label, row in zip(self.labels, self.probabilities.tolist(), strict=True)
        ]


# What one model call gives each of its requests: labels, and class probabilities when the model has them.
_Output = tuple[list[Any], np.ndarray | None]


@dataclass(eq=False)
class _Request:
    rows: np.ndarray
    deadline: Deadline
    future: asyncio.Future[_Output]
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False
    call: int = -1  # the watchdog's id of the model call it is part of
    # The caller's context: its request id and trace id for a model_error line (read only then).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    trace: tracing.Context | None = None  # its span, when tracing is on (queue wait and model call spans)
    enqueued_ns: int = 0  # wall clock at admission, for the queue wait span (tracing on only)


_Outcome = _Output | BaseException


def _ids(batch: list[_Request]) -> tuple[list[str | None], list[str | None]]:
    """The request ids and trace ids the batch's callers were logging with."""
    bound = [request.context.run(structlog.contextvars.get_contextvars) for request in batch]
    return [b.get("request_id") for b in bound], [b.get("trace_id") for b in bound]


def _call_model(model: LoadedModel, rows: np.ndarray) -> _Output:
    estimator = model.estimator
    if model.has_proba:
        proba = np.asarray(estimator.predict_proba(rows), dtype=np.float64)
        # predict() of a classifier is classes_[argmax(predict_proba)]; reuse it instead of a second call.
        classes = model.classes
        assert classes is not None
        return [classes[i] for i in proba.argmax(axis=1)], proba
    predicted = np.asarray(estimator.predict(rows))
    return [v.item() if isinstance(v, np.generic) else v for v in predicted.tolist()], None


def _prepare_thread() -> None:
    # Inputs are validated (finite, typed) before they reach the model: skip sklearn's re-checks.
    # sklearn's config is thread-local, so each inference thread sets its own.
    import sklearn

    sklearn.set_config(assume_finite=True)


class Predictor:
    def __init__(self, holder: ModelHolder, settings: Settings, metrics: Metrics) -> None:
        self.holder = holder
        self.metrics = metrics
        self.threads = settings.inference.threads
        self.max_queue = settings.inference.max_queue
        self.batching = settings.batching
        self.max_rows = settings.batching.max_batch_size if settings.batching.enabled else 1
        self.breaker = Breaker(settings.breaker, metrics, holder.name)
        self.faults = FaultInjector(settings.faults, metrics)
        self.watchdog = HangWatchdog(
            hang_s=settings.inference.hang_s,
            exit_after_s=settings.inference.hang_exit_s,
            metrics=metrics,
            breaker=self.breaker,
            request_exit=request_exit,
            on_hung=self._shed_queue,
        )
        self._queue: collections.deque[_Request] = collections.deque()
        self._free = self.threads  # inference threads not running a model call
        self._admitted = 0  # requests between admission and answer
        self._wakeup: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="ferry-model", initializer=_prepare_thread)
        metrics.inference_capacity.set(self.threads + self.max_queue)

    # -- event loop side ---------------------------------------------------------------------
    async def run(self) -> None:
        """The dispatcher: start a model call whenever a thread is free and requests wait."""
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue or not self._free:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            if batch and len(batch) < self._admitted and self.batching.enabled and self.batching.max_wait_ms:
                # Others are in flight (being parsed or validated): give them a moment to join.
                await asyncio.sleep(self.batching.max_wait_ms / 1000)
                batch += self._take(sum(len(r.rows) for r in batch))
            if not batch:
                continue
            model = self.holder.loaded
            assert model is not None
            self._free -= 1
            self.metrics.model_calls_in_flight.inc()
            started = time.perf_counter()
            call_id = self.watchdog.started(sum(len(r.rows) for r in batch))
            for request in batch:
                request.started = True
                request.call = call_id
                self.metrics.queue_wait.observe(started - request.enqueued)
            span = self._trace_call(batch) if tracing.enabled() else tracing.NOOP_MODEL_CALL
            context = contextvars.copy_context()
            call = loop.run_in_executor(self._executor, context.run, self._call, model, batch)
            call.add_done_callback(functools.partial(self._finish, batch=batch, span=span))

    def _trace_call(self, batch: list[_Request]) -> tracing.ModelCallSpan:
        """The queue wait span of each request, and the span of the call they share."""
        now = tracing.now_ns()
        for request in batch:
            if request.trace is not None:
                tracing.queue_wait(request.trace, request.enqueued_ns, now)
        rows = sum(len(r.rows) for r in batch)
        return tracing.model_call([r.trace for r in batch], model=self.holder.name, rows=rows)

    def _take(self, rows: int = 0) -> list[_Request]:
        """Waiting requests for one model call, oldest first; expired ones are answered 504 here."""
        batch: list[_Request] = []
        while self._queue and rows < self.max_rows:
            request = self._queue[0]
            if request.future.done():  # its caller already has its answer (deadline)
                self._queue.popleft()
                continue
            if request.deadline.expired():
                self._queue.popleft()
                self._expire(request, "queued")
                continue
            if rows and rows + len(request.rows) > self.max_rows:
                break
            self._queue.popleft()
            batch.append(request)
            rows += len(request.rows)
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _expire(self, request: _Request, stage: str) -> None:
        if not request.future.done():
            request.future.set_exception(DeadlineExceeded())
        self.metrics.deadline_exceeded.labels(stage).inc()

    def _finish(self, done: asyncio.Future[list[_Outcome]], batch: list[_Request], span: tracing.ModelCallSpan) -> None:
        self.watchdog.finished(batch[0].call)
        self._free += 1
        self.metrics.model_calls_in_flight.dec()
        assert self._wakeup is not None
        self._wakeup.set()
        error = done.exception()
        outcomes: list[_Outcome] = [error] * len(batch) if error is not None else done.result()
        span.end(sum(isinstance(o, BaseException) for o in outcomes), error)
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():  # its caller gave up (deadline): the result is dropped
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    def _shed_queue(self) -> None:
        """A call is hung: what waits for a thread would wait until its deadline; answer it now."""
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(ModelNotReady("a model call is hung; retry", retry_after_s=1))
        self.metrics.queue_depth.set(0)

    async def warm_up(self) -> None:
        """Start the inference threads now: their set-up (importing scikit-learn) must not be timed as
        the first request's model call (nor look like a hang to the watchdog)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, time.sleep, 0.01) for _ in range(self.threads)))

    def admit(self) -> None:
        """The checks made before anything is queued: the model is loaded, the breaker lets calls through."""
        if self.holder.loaded is None or not self.holder.ready:
            raise ModelNotReady(retry_after_s=1)
        if self.watchdog.hung:
            raise ModelNotReady("a model call is hung; this worker is being replaced", retry_after_s=1)
        self.breaker.check()

    async def predict(self, rows: np.ndarray, deadline: Deadline) -> Prediction:
        self.admit()
        model = self.holder.loaded
        assert model is not None
        if deadline.expired():
            self.metrics.deadline_exceeded.labels("queued").inc()
            raise DeadlineExceeded()
        if not self._free and len(self._queue) >= self.max_queue:
            raise Overloaded(retry_after_s=1)
        request = _Request(rows, deadline, asyncio.get_running_loop().create_future())
        if tracing.enabled():
            request.trace = tracing.capture()
            request.enqueued_ns = tracing.now_ns()
        self._queue.append(request)
        self.metrics.queue_depth.set(len(self._queue))
        assert self._wakeup is not None, "Predictor.run() is not running"
        self._wakeup.set()
        self._admitted += 1
        self.metrics.inference_in_flight.inc()
        try:
            labels, proba = await asyncio.wait_for(asyncio.shield(request.future), deadline.remaining())
        except TimeoutError:
            if request.started:
                self.metrics.deadline_exceeded.labels("running").inc()
            else:
                self._expire(request, "queued")
            request.future.cancel()  # a late result is dropped; a queued request is skipped
            raise DeadlineExceeded() from None
        except asyncio.CancelledError:
            request.future.cancel()  # the caller left (a streaming client disconnected): skip it if queued
            raise
        finally:
            self._admitted -= 1
            self.metrics.inference_in_flight.dec()
        return Prediction(labels=labels, probabilities=proba, classes=model.classes)

    # -- inference thread side -----------------------------------------------------------------
    def _call(self, model: LoadedModel, batch: list[_Request]) -> list[_Outcome]:
        """One model call for the whole batch; one outcome per request, in order."""
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch])
        latest = max(r.deadline.at for r in batch)
        try:
            labels, proba = self._guarded_call(model, rows, batch, latest)
        except ModelError:
            if len(batch) == 1:
                raise
            # One poison record must not fail the requests merged with it: run each on its own.
            return [self._isolated(model, request) for request in batch]
        outcomes: list[_Outcome] = []
        offset = 0
        for request in batch:
            end = offset + len(request.rows)
            outcomes.append((labels[offset:end], None if proba is None else proba[offset:end]))
            offset = end
        return outcomes

    def _isolated(self, model: LoadedModel, request: _Request) -> _Outcome:
        try:
            return self._guarded_call(model, request.rows, [request], request.deadline.at)
        except FerryError as error:
            return error

    def _guarded_call(self, model: LoadedModel, rows: np.ndarray, batch: list[_Request], deadline_at: float) -> _Output:
        started = time.perf_counter()
        try:
            with self.breaker.guard():
                if self.faults.enabled:
                    self.faults.apply()
                labels, proba = _call_model(model, rows)
                if time.monotonic() > deadline_at:
                    # Every caller has had its 504: a model this slow is failing, as the breaker must see.
                    raise ModelTimedOut()
        except ModelTimedOut:
            seconds = time.perf_counter() - started
            self.metrics.model_calls.labels("timeout").inc()
            log.warning("model_call_timed_out", model=self.holder.name, rows=len(rows), running_s=round(seconds, 3))
            raise
        except FerryError:
            raise
        except Exception as exc:
            self.metrics.model_calls.labels("error").inc()
            request_ids, trace_ids = _ids(batch)
            log.error(
                "model_error",
                model=self.holder.name,
                rows=len(rows),
                requests=len(batch),
                # The call ran for all of its requests: every one's ids (this thread has none bound); the
                # single fields too when it ran for one request, so a search by request_id finds it.
                request_id=request_ids[0] if len(batch) == 1 else None,
                trace_id=trace_ids[0] if len(batch) == 1 else None,
                request_ids=request_ids,
                trace_ids=trace_ids,
                exc_info=True,
            )
            raise ModelError(f"the model failed on this input ({type(exc).__name__})") from exc
        seconds = time.perf_counter() - started
        self.metrics.model_calls.labels("ok").inc()
        self._record(model, labels, len(rows), len(batch), seconds)
        return labels, proba

    def _record(self, model: LoadedModel, labels: list[Any], rows: int, requests: int, seconds: float) -> None:
        name = self.holder.name
        self.metrics.observe_inference(name, rows, seconds)
        self.metrics.batch_requests.observe(requests)
        if model.classes is not None and len(model.classes) <= MAX_CLASS_LABELS:
            self.metrics.count_classes(name, Tally(labels).items())

    def shutdown(self) -> None:
        # Do not wait: a hung model call must not keep the worker from exiting.
        self._executor.shutdown(wait=False, cancel_futures=True)
