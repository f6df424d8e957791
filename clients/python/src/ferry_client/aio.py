"""The asynchronous client, with a bounded-concurrency fan-out (``predict_many``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import httpx

from ferry_client._common import (
    DEFAULT_BATCH_SIZE,
    EVENT_STREAM,
    JOBS,
    MODELS,
    PREDICT,
    PREDICT_BATCH,
    PREDICT_STREAM,
    READYZ,
    TERMINAL_JOB_STATUSES,
    Attempts,
    ClientSettings,
    JobEvents,
    StreamState,
    encode,
    error_from_response,
    job_body,
    job_path,
    new_idempotency_key,
    split,
    transport_error,
    v2_body,
    v2_infer_path,
)
from ferry_client.errors import FerryClientError
from ferry_client.sse import aiter_events


class AsyncClient(ClientSettings):
    """Asynchronous ferry client: the methods of :class:`ferry.client.Client`, awaitable, plus
    :meth:`predict_many`. Same retry policy."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_retries=max_retries, headers=headers)
        self._http = httpx.AsyncClient(transport=transport, **self.http_options())

    # -- lifecycle ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport with retries --------------------------------------------------------------
    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = False,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        content, headers = encode(body, headers)
        attempts = Attempts(self.max_retries, method, path, idempotent=idempotent, retry=retry)
        while True:
            request = self._http.build_request(method, path, content=content, headers=headers, params=params)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_transport_error(exc))
                continue
            if response.status_code < 400:
                return response
            delay = attempts.after_error_answer(response)
            try:
                if delay is None:
                    await response.aread()
            except httpx.TransportError as exc:
                raise transport_error(exc, method, path) from exc
            finally:
                await response.aclose()
            if delay is None:
                raise error_from_response(response)
            await asyncio.sleep(delay)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._send(method, path, **kwargs)).json()

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        response = await self._send(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            await response.aclose()

    # -- predictions -------------------------------------------------------------------------
    async def predict(self, record: Any) -> dict[str, Any]:
        return await self._json("POST", PREDICT, body={"record": record}, idempotent=True)

    async def _batch(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        answer = await self._json("POST", PREDICT_BATCH, body={"records": list(records)}, idempotent=True)
        return answer["predictions"]

    async def predict_batch(
        self, records: Sequence[Any], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for batch in split(list(records), batch_size):
            results.extend(await self._batch(batch))
        return results

    async def predict_many(
        self,
        records: Sequence[Any],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = 8,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Predict any number of records: batches of ``batch_size``, at most ``concurrency`` requests in
        flight, each retried on its own; results in input order. ``on_progress(done_rows, total_rows)``
        is called after each batch. The first batch that fails for good cancels the others and raises."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        records = list(records)
        batches = split(records, batch_size)
        results: list[list[dict[str, Any]] | None] = [None] * len(batches)
        pending = iter(range(len(batches)))
        done = 0

        async def worker() -> None:
            nonlocal done
            for index in pending:  # one shared iterator: each batch is taken by exactly one worker
                answer = await self._batch(batches[index])
                if len(answer) != len(batches[index]):
                    raise FerryClientError(
                        f"batch {index}: {len(answer)} predictions for {len(batches[index])} records",
                        code="bad_response",
                    )
                results[index] = answer
                done += len(answer)
                if on_progress is not None:
                    on_progress(done, len(records))

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(batches)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return [row for batch in results if batch is not None for row in batch]

    async def stream(self, records: Iterable[Any], chunk_size: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Async iterator over the events of ``POST /api/v1/predict/stream`` (see ``Client.stream``)."""
        state = StreamState(records, chunk_size, self.max_retries)
        while not state.finished:
            error: Exception | None = None
            try:
                async with self._stream(
                    "POST", PREDICT_STREAM, body=state.body(), headers=EVENT_STREAM, idempotent=True
                ) as response:
                    async for sse in aiter_events(response.aiter_lines()):
                        event = state.handle(sse)
                        if event is not None:
                            yield event
                        if state.finished or state.resume:
                            break
            except httpx.TransportError as exc:  # cut while streaming (opening it was retried in _send)
                error = exc
            if not state.finished:
                await asyncio.sleep(state.interrupted(error))

    # -- Open Inference Protocol v2 ----------------------------------------------------------
    async def infer_v2(
        self,
        model_name: str,
        inputs: Any,
        *,
        outputs: Iterable[str] | None = None,
        parameters: dict[str, Any] | None = None,
        id: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        return await self._json(
            "POST", v2_infer_path(model_name, version), body=v2_body(inputs, outputs, parameters, id), idempotent=True
        )

    # -- models and health -------------------------------------------------------------------
    async def models(self) -> list[dict[str, Any]]:
        return (await self._json("GET", MODELS))["models"]

    async def model_card(self, name: str | None = None, *, section: str | None = None) -> dict[str, Any]:
        name = name or (await self.models())[0]["name"]
        return await self._json("GET", f"{MODELS}/{name}", params={"section": section} if section else None)

    async def ready(self) -> bool:
        try:
            await (await self._send("GET", READYZ, retry=False)).aclose()
        except FerryClientError as exc:
            if exc.status is None or exc.status == 503:
                return False
            raise
        return True

    # -- jobs --------------------------------------------------------------------------------
    async def submit_job(
        self,
        records: Sequence[Any],
        *,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return await self._json(
            "POST", JOBS, body=job_body(records, callback_url, metadata), headers=headers, idempotent=True
        )

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", job_path(job_id))

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._json("DELETE", job_path(job_id))

    async def redeliver_callback(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", job_path(job_id, "/callback/redeliver"))

    async def wait_job(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float = 0.5, use_events: bool = False
    ) -> dict[str, Any]:
        events = JobEvents(job_id, self.max_retries)

        async def poll() -> dict[str, Any]:
            while True:
                events.last = await self.get_job(job_id)
                if events.last.get("status") in TERMINAL_JOB_STATUSES:
                    return events.last
                await asyncio.sleep(poll_interval)

        async def follow() -> dict[str, Any]:
            while True:
                error: Exception | None = None
                try:
                    async with self._stream("GET", job_path(job_id, "/events"), headers=EVENT_STREAM) as response:
                        async for sse in aiter_events(response.aiter_lines()):
                            if (job := events.handle(sse)) is not None:
                                return job
                except httpx.TransportError as exc:  # cut while streaming (opening it was retried in _send)
                    error = exc
                await asyncio.sleep(events.ended(error))

        try:
            async with asyncio.timeout(timeout):
                return await (follow() if use_events else poll())
        except TimeoutError:
            raise events.timeout(timeout) from None
