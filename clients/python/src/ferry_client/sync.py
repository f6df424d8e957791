# GENERATED from ferry_client/aio.py by clients/python/tools/unasync.py (`make generate`). Do not edit.
"""The synchronous client, generated from the asynchronous one (``aio.py``): same methods, same
parameters, same retries. Edit ``aio.py``, then run ``make generate``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    Attempts,
    ClientSettings,
    Deadline,
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
from ferry_client._sync_runtime import fan_out, sleep
from ferry_client.errors import FerryClientError
from ferry_client.protocol import TERMINAL_JOB_STATUSES
from ferry_client.sse import SSEParser, iter_events


class Client(ClientSettings):
    """Synchronous ferry client.

    ``token`` is the API key or OIDC access token of a service with authentication on (sent as
    ``Authorization: Bearer``).

    Answers 429 and 503 are retried up to ``max_retries`` times, after the server's ``Retry-After`` or
    an exponential backoff with full jitter; failed connections are retried for idempotent calls. Any
    other error answer raises :class:`FerryClientError` at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_retries=max_retries, headers=headers, token=token)
        self._http = httpx.Client(transport=transport, **self.http_options())

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport with retries --------------------------------------------------------------
    def _send(
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
        deadline: Deadline | None = None,
    ) -> httpx.Response:
        content, headers = encode(body, headers)
        attempts = Attempts(self.max_retries, method, path, idempotent=idempotent, retry=retry, deadline=deadline)
        while True:
            request = self._http.build_request(
                method, path, content=content, headers=headers, params=params, timeout=attempts.timeout(self.timeout)
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                sleep(attempts.after_transport_error(exc))
                continue
            if response.status_code < 400:
                return response
            delay = attempts.after_error_answer(response)
            try:
                if delay is None:
                    response.read()
            except httpx.TransportError as exc:
                raise transport_error(exc, method, path) from exc
            finally:
                response.close()
            if delay is None:
                raise error_from_response(response)
            sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        answer: dict[str, Any] = response.json()  # every answer of the API is a JSON object
        return answer

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        response = self._send(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()

    # -- predictions -------------------------------------------------------------------------
    def predict(self, record: Any) -> dict[str, Any]:
        """One record -> ``{"prediction", "probabilities", "model", "request_id"}``."""
        return self._json("POST", PREDICT, body={"record": record}, idempotent=True)

    def _batch(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        answer = self._json("POST", PREDICT_BATCH, body={"records": list(records)}, idempotent=True)
        predictions: list[dict[str, Any]] = answer["predictions"]
        return predictions

    def predict_batch(self, records: Sequence[Any], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
        """Records -> one ``{"prediction", "probabilities"}`` per record, in order (``batch_size`` per request).
        A FerryClientError names records by their position in ``records`` (``FerryClientError.shifted``)."""
        results: list[dict[str, Any]] = []
        for batch in split(list(records), batch_size):
            try:
                results.extend(self._batch(batch))
            except FerryClientError as exc:
                raise exc.shifted(len(results)) from None
        return results

    def predict_many(
        self,
        records: Sequence[Any],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = 8,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Predict any number of records: batches of ``batch_size``, at most ``concurrency`` requests in
        flight, each retried on its own; results in input order. ``on_progress(done_rows, total_rows)``
        is called after each batch. The first batch that fails for good cancels the others and raises
        (its FerryClientError names records by their position in ``records``).

        The synchronous client runs this fan-out on an event loop of its own (a client with the same URL,
        timeout, retries and headers; a custom ``transport`` is not carried over), so it cannot be called
        from a running event loop: RuntimeError."""
        return fan_out(self, records, batch_size=batch_size, concurrency=concurrency, on_progress=on_progress)

    def stream(self, records: Iterable[Any], chunk_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Events of ``POST /api/v1/predict/stream``: ``{"event": "chunk", "data": {"offset", "predictions"}}``
        ... then ``{"event": "summary", "data": {...}}``. Offsets index ``records``. A worker shutting down
        (``event: shutdown``) or a cut connection is resumed with the records not yet answered;
        ``event: failed`` raises :class:`FerryClientError` (its ``offset`` set)."""
        state = StreamState(records, chunk_size, self.max_retries)
        while not state.finished:
            error: Exception | None = None
            try:
                with self._stream(
                    "POST", PREDICT_STREAM, body=state.body(), headers=EVENT_STREAM, idempotent=True
                ) as response:
                    for sse in iter_events(response.iter_lines()):
                        event = state.handle(sse)
                        if event is not None:
                            yield event
                        if state.finished or state.resume:
                            break
            except httpx.TransportError as exc:  # cut while streaming (opening it was retried in _send)
                error = exc
            if not state.finished:
                sleep(state.interrupted(error))

    # -- Open Inference Protocol v2 ----------------------------------------------------------
    def infer_v2(
        self,
        model_name: str,
        inputs: Any,
        *,
        outputs: Iterable[str] | None = None,
        parameters: dict[str, Any] | None = None,
        id: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v2/models/{name}[/versions/{v}]/infer``; ``inputs`` is the protocol's tensor list or a
        2-D list of numbers (sent as one FP64 tensor). Returns the response JSON."""
        return self._json(
            "POST", v2_infer_path(model_name, version), body=v2_body(inputs, outputs, parameters, id), idempotent=True
        )

    # -- models and health -------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Served models: ``[{"name", "version", "status", "sha256"}]``."""
        answer = self._json("GET", MODELS)
        models: list[dict[str, Any]] = answer["models"]
        return models

    def model_card(self, name: str | None = None, *, section: str | None = None) -> dict[str, Any]:
        """A model's card (the first served model when ``name`` is None), or one ``section`` of it."""
        if not name:
            served = self.models()
            name = served[0]["name"]
        return self._json("GET", f"{MODELS}/{name}", params={"section": section} if section else None)

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200; False on 503 or when the server cannot be reached."""
        try:
            response = self._send("GET", READYZ, retry=False)
            response.close()
        except FerryClientError as exc:
            if exc.status is None or exc.status == 503:
                return False
            raise
        return True

    # -- jobs --------------------------------------------------------------------------------
    def submit_job(
        self,
        records: Sequence[Any],
        *,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job (202); returns the job. An Idempotency-Key is generated when none is given, so a
        retried submission never creates a second job."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        body = job_body(records, callback_url, metadata)
        return self._json("POST", JOBS, body=body, headers=headers, idempotent=True)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job: status, history, result or error, callback delivery."""
        return self._json("GET", job_path(job_id))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job; one that is running or finished raises FerryClientError ``job_conflict`` (409):
        a running job cannot be stopped."""
        return self._json("DELETE", job_path(job_id))

    def redeliver_callback(self, job_id: str) -> dict[str, Any]:
        """Send a finished job's callback again (after it was dead-lettered), with the same webhook-id."""
        return self._json("POST", job_path(job_id, "/callback/redeliver"))

    def wait_job(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float = 0.5, use_events: bool = False
    ) -> dict[str, Any]:
        """The job once it is succeeded, failed or canceled, by polling every ``poll_interval`` seconds or
        by following its SSE events (``use_events``). Raises TimeoutError once ``timeout`` seconds have
        passed; each request it sends is given no more than the time left."""
        events = JobEvents(job_id, self.max_retries)
        deadline = Deadline(timeout)
        try:
            while not deadline.expired():
                if use_events:
                    job = self._follow_job(job_id, events, deadline)
                    if job is not None:
                        return job
                else:
                    events.last = self._json("GET", job_path(job_id), deadline=deadline)
                    if events.last.get("status") in TERMINAL_JOB_STATUSES:
                        return events.last
                    sleep(deadline.cap(poll_interval))
        except FerryClientError as exc:
            if exc.code == "timeout" and deadline.expired():
                raise events.timeout(timeout) from exc
            raise
        raise events.timeout(timeout)

    def _follow_job(self, job_id: str, events: JobEvents, deadline: Deadline) -> dict[str, Any] | None:
        """One stream of the job's events: the job once it has ended; None when the stream ended first
        (after the pause before the next one) or the deadline passed."""
        error: Exception | None = None
        try:
            with self._stream("GET", job_path(job_id, "/events"), headers=EVENT_STREAM, deadline=deadline) as response:
                parser = SSEParser()
                for line in response.iter_lines():
                    sse = parser.feed(line)
                    if sse is not None and (job := events.handle(sse)) is not None:
                        return job
                    if deadline.expired():  # heartbeats keep the stream alive: the clock is read on every line
                        return None
        except httpx.TransportError as exc:  # cut, or silent for longer than the read timeout
            error = exc
        if not deadline.expired():
            sleep(deadline.cap(events.ended(error)))
        return None
