"""Running the model: off the event loop, in a bounded executor, with its metrics.

Knows nothing of HTTP. ``Predictor.predict`` takes model rows and returns a ``Prediction`` or raises
a ``FerryError`` (not ready, overloaded, model failure).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ferry.errors import ModelError, ModelNotReady, Overloaded
from ferry.logging import get_logger
from ferry.metrics import MAX_CLASS_LABELS, Metrics
from ferry.model import LoadedModel, ModelHolder
from ferry.settings import InferenceSettings

log = get_logger("ferry.inference")


@dataclass(frozen=True)
class Prediction:
    labels: list  # one predicted label per row (class label, or a number for regressors)
    probabilities: np.ndarray | None  # [rows, classes], None for models without predict_proba
    classes: list[str] | None


def _call_model(model: LoadedModel, rows: np.ndarray) -> tuple[list, np.ndarray | None]:
    estimator = model.estimator
    if model.has_proba:
        proba = np.asarray(estimator.predict_proba(rows), dtype=np.float64)
        # predict() of a classifier is classes_[argmax(predict_proba)]; reuse it instead of a second call.
        labels = [model.classes[i] for i in proba.argmax(axis=1)]  # type: ignore[index]
        return labels, proba
    predicted = np.asarray(estimator.predict(rows))
    return [v.item() if isinstance(v, np.generic) else v for v in predicted.tolist()], None


def _prepare_thread() -> None:
    # Inputs are validated (finite, typed) before they reach the model: skip sklearn's re-checks.
    # sklearn's config is thread-local, so each inference thread sets its own.
    import sklearn

    sklearn.set_config(assume_finite=True)


class Predictor:
    """Per-worker executor: ``threads`` model calls at once, ``max_queue`` more waiting, the rest shed."""

    def __init__(self, holder: ModelHolder, settings: InferenceSettings, metrics: Metrics) -> None:
        self.holder = holder
        self.metrics = metrics
        self.capacity = settings.threads + settings.max_queue
        self._pending = 0  # touched only on the event loop thread, so no lock
        self._executor = ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="ferry-model", initializer=_prepare_thread
        )
        metrics.inference_capacity.set(self.capacity)

    async def predict(self, rows: np.ndarray) -> Prediction:
        model = self.holder.loaded
        if model is None or not self.holder.ready:
            raise ModelNotReady(retry_after_s=1)
        if self._pending >= self.capacity:
            raise Overloaded(retry_after_s=1)
        self._pending += 1
        self.metrics.inference_in_flight.inc()
        try:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()  # keep request_id/trace_id on logs from the thread
            labels, proba, seconds = await loop.run_in_executor(
                self._executor, context.run, self._timed_call, model, rows
            )
        finally:
            self._pending -= 1
            self.metrics.inference_in_flight.dec()
        self._record(model, labels, len(rows), seconds)
        return Prediction(labels=labels, probabilities=proba, classes=model.classes)

    def _timed_call(self, model: LoadedModel, rows: np.ndarray) -> tuple[list, np.ndarray | None, float]:
        started = time.perf_counter()
        try:
            labels, proba = _call_model(model, rows)
        except Exception as exc:
            log.error("model_error", model=self.holder.name, rows=len(rows), exc_info=True)
            raise ModelError(f"the model failed on this input ({type(exc).__name__})") from exc
        return labels, proba, time.perf_counter() - started

    def _record(self, model: LoadedModel, labels: list, rows: int, seconds: float) -> None:
        name = self.holder.name
        self.metrics.observe_inference(name, rows, seconds)
        if model.classes is not None and len(model.classes) <= MAX_CLASS_LABELS:
            self.metrics.count_classes(name, Tally(labels).items())

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
