"""The serving core the routes call: model, schema, executor and metrics, and nothing of HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np
from pydantic import ValidationError

from ferry.errors import BatchTooLarge, from_validation
from ferry.features import FeatureSchema
from ferry.inference import Prediction, Predictor
from ferry.jobs.document import ModelRef
from ferry.lifecycle import heartbeat
from ferry.logging import get_logger
from ferry.metrics import Metrics
from ferry.model import ModelHolder
from ferry.resilience.deadline import Deadline
from ferry.settings import Settings

log = get_logger("ferry.core")
# How stale another worker's exemplars may be in a scrape (Prometheus scrapes every 15-30 s).
EXEMPLAR_FLUSH_S = 1.0


class Core:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.holder = ModelHolder(settings.model)
        self.predictor = Predictor(self.holder, settings, metrics)
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def schema(self) -> FeatureSchema:
        return self.holder.schema

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model in a thread; wait for it up to ``model.load_wait_s``, then let it finish
        in the background. Keeps the gunicorn heartbeat alive while waiting."""
        self.metrics.workers.set(1)
        self.metrics.worker_starts.inc()
        self.metrics.model_ready.set(0)
        load = asyncio.create_task(self._load_model(), name="ferry-load-model")
        self._tasks = [
            load,
            asyncio.create_task(self._refresh_process_metrics(), name="ferry-process-metrics"),
            asyncio.create_task(self._share_exemplars(), name="ferry-exemplars"),
            asyncio.create_task(self.predictor.run(), name="ferry-dispatcher"),
            asyncio.create_task(self.predictor.watchdog.run(), name="ferry-hang-watchdog"),
        ]
        if self.predictor.faults.enabled:
            self.predictor.faults.refresh()
            self._tasks.append(asyncio.create_task(self.predictor.faults.watch(), name="ferry-faults"))
        deadline = asyncio.get_running_loop().time() + self.settings.model.load_wait_s
        while not load.done() and asyncio.get_running_loop().time() < deadline:
            heartbeat()
            await asyncio.wait({load}, timeout=min(1.0, max(0.0, deadline - asyncio.get_running_loop().time())))
        if not load.done():
            log.warning("model_still_loading", waited_s=self.settings.model.load_wait_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.predictor.shutdown)

    async def _load_model(self) -> None:
        await self.predictor.warm_up()
        await asyncio.to_thread(self.holder.load)
        loaded = self.holder.loaded
        if self.holder.ready and loaded is not None:
            self.metrics.model_info.labels(self.holder.name, self.holder.version, loaded.sha256).set(1)
            self.metrics.model_ready.set(1)

    async def _refresh_process_metrics(self) -> None:
        while True:
            self.metrics.refresh_process()
            await asyncio.sleep(self.settings.metrics.process_interval_s)

    async def _share_exemplars(self) -> None:
        """Hand this worker's latest exemplars to the others' scrapes (a small file, once a second)."""
        while True:
            await asyncio.sleep(EXEMPLAR_FLUSH_S)
            self.metrics.exemplars.flush()

    # -- what routes and runners need ------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.holder.ready

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.holder.name, version=self.holder.version)

    def admit(self) -> None:
        """Raise now what a prediction would raise before queueing: model not ready, breaker open.
        For work that must be refused before it starts (a stream answers 503, not an event)."""
        self.predictor.admit()

    def deadline(self, requested_s: float | None, started: float) -> Deadline:
        """The deadline of a request that arrived at ``started`` (monotonic) and asked for
        ``requested_s`` seconds (None: the default); longer requests are clamped to the maximum."""
        settings = self.settings.deadline
        seconds = settings.default_s if requested_s is None else min(requested_s, settings.max_s)
        return Deadline(at=started + seconds, budget_s=seconds)

    async def validate_records(self, records: list[Any]) -> list[Any]:
        """Records of a request body checked against the served model's record type (a slice at a
        time, see ``FeatureSchema.validate_records``), and for a card-less model their width."""
        valid = await self.schema.validate_records(records)
        if not self.schema.typed:
            self.schema.rows_from_records(valid)  # ragged or wrong-width records: 422 now
        return valid

    def records_from_json(self, raw: bytes) -> list[Any]:
        """Stored records (a job's input) validated for the model served now."""
        try:
            return self.schema.records_adapter.validate_json(raw)
        except ValidationError as exc:
            errors: list[dict[str, Any]] = [dict(e) for e in exc.errors(include_input=False)]
            raise from_validation(errors, self.settings.api.max_batch_size) from None

    def _check_batch(self, rows: int) -> None:
        if rows > self.settings.api.max_batch_size:
            raise BatchTooLarge(f"at most {self.settings.api.max_batch_size} records per request")

    async def predict_records(self, records: list[Any], deadline: Deadline) -> Prediction:
        """Records already validated against the schema's record type."""
        self._check_batch(len(records))
        return await self.predictor.predict(self.schema.rows_from_records(records), deadline)

    async def predict_tensor(self, matrix: np.ndarray, loc: list[Any], deadline: Deadline) -> Prediction:
        """A numeric [rows, features] tensor (Open Inference Protocol)."""
        self._check_batch(matrix.shape[0])
        return await self.predictor.predict(self.schema.rows_from_tensor(matrix, loc), deadline)
