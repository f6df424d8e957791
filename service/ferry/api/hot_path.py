"""The lean hot path: the prediction routes served straight from ``RequestMiddleware``.

``POST /api/v1/predict``, ``/api/v1/predict/batch``, ``/v2/models/{name}/infer`` and
``/v2/models/{name}/versions/{version}/infer`` are matched here by exact path, before FastAPI's
router walk, and answered without dependency solving or the response pipeline: the body is read with
the same limits (``json_body``), parsed by orjson, validated by the same pydantic request types the
FastAPI routes declare (compiled once at start), handed to the same ``Core`` (admission, deadline,
shedding, breaker), and the answer written as JSON bytes. Every refusal is raised as the same
``FerryError`` the FastAPI route would end in, with the same error details, so both paths answer
byte-identical bodies (tests/unit/test_hot_path_parity.py). The FastAPI routes stay: they are the
documented API (OpenAPI), they answer every other method on these paths, and they serve these routes
when ``api.lean_path`` is off. docs/architecture.md, "The hot path", says why it looks like this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ferry.api import json_body, tensor_codec
from ferry.api.deps import parse_timeout
from ferry.api.routes import predict, v2
from ferry.api.schemas import InferRequest, InferResponse
from ferry.core import Core
from ferry.errors import from_validation
from ferry.resilience.deadline import Deadline

PREDICT = "/api/v1/predict"
PREDICT_BATCH = "/api/v1/predict/batch"
V2_INFER = "/v2/models/{name}/infer"
V2_VERSION_INFER = "/v2/models/{name}/versions/{version}/infer"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_MISSING_BODY = [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]

HEADER = tensor_codec.HEADER.encode()
# A JSON body, or a body and its headers (a binary tensor answer).
Answer = bytes | tuple[bytes, list[tuple[bytes, bytes]]]
# (scope, receive, path parameters, request id) -> response
Handler = Callable[[Scope, Receive, tuple[str, ...], str], Awaitable[Answer]]


class HotPath:
    """The hot routes of one app, built once from its core and the FastAPI routes' request types."""

    def __init__(self, core: Core, predict_types: predict.RequestTypes) -> None:
        self.core = core
        self.max_batch = core.settings.api.max_batch_size
        self._predict = TypeAdapter(predict_types.predict)
        self._batch = TypeAdapter(predict_types.batch)
        self._infer = TypeAdapter(InferRequest)
        self._infer_response = TypeAdapter(InferResponse)

    def match(self, scope: Scope) -> tuple[str, Handler, tuple[str, ...]] | None:
        """(route template, handler, path parameters) of a hot route, or None: FastAPI serves it.
        Only POST (other methods get FastAPI's 405) and no root_path (FastAPI strips it first)."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if path == PREDICT:
            return PREDICT, self._predict_one, ()
        if path == PREDICT_BATCH:
            return PREDICT_BATCH, self._predict_batch, ()
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[len("/v2/models/") : -len("/infer")].split("/")
            if len(parts) == 1 and parts[0]:
                return V2_INFER, self._v2_infer, (parts[0],)
            if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                return V2_VERSION_INFER, self._v2_infer, (parts[0], parts[2])
        return None

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, handler: Handler, params: tuple[str, ...]
    ) -> None:
        """Run one hot request and send its 200 answer; errors are raised for the middleware to render.
        A per-request tracing span, when there is one, wraps this call."""
        answer = await handler(scope, receive, params, scope["state"]["request_id"])
        body, headers = (answer, _JSON_HEADERS) if isinstance(answer, bytes) else answer
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # -- the routes ---------------------------------------------------------------------------------
    async def _predict_one(self, scope: Scope, receive: Receive, _: tuple[str, ...], request_id: str) -> bytes:
        request, deadline = await self._rest_request(scope, receive, self._predict)
        prediction = await self.core.predict_records([request.record], deadline)
        return orjson.dumps({**prediction.rows()[0], "model": self._model(), "request_id": request_id})

    async def _predict_batch(self, scope: Scope, receive: Receive, _: tuple[str, ...], request_id: str) -> bytes:
        request, deadline = await self._rest_request(scope, receive, self._batch)
        prediction = await self.core.predict_records(request.records, deadline)
        return orjson.dumps({"predictions": prediction.rows(), "model": self._model(), "request_id": request_id})

    async def _v2_infer(self, scope: Scope, receive: Receive, params: tuple[str, ...], _: str) -> Answer:
        limit = self.core.schema.max_values(self.max_batch) + v2.V2_SLACK_VALUES
        header_length = next((v for k, v in scope["headers"] if k == b"inference-header-content-length"), None)
        if header_length is None:
            data = await self._json(receive, limit)
        else:  # the binary tensor extension: a JSON header, then the tensors' bytes
            data = await v2.read_binary(await _read(receive), header_length.decode("latin-1"), limit, self.max_batch)
        deadline = self._deadline(scope)
        request: InferRequest = self._validate(self._infer, data)
        version = params[1] if len(params) > 1 else None
        v2.check_model(self.core, params[0], version)
        response = await v2.run_infer(self.core, request, version, deadline)
        binary = v2.binary_outputs(request)
        if binary:
            body, length = v2.binary_answer(response, binary)
            return body, [(b"content-type", v2.BINARY_CONTENT_TYPE.encode()), (HEADER, str(length).encode())]
        return self._infer_response.dump_json(response, exclude_none=True)

    async def _rest_request(self, scope: Scope, receive: Receive, adapter: TypeAdapter[Any]) -> tuple[Any, Deadline]:
        """A REST body read, its deadline taken, the body validated: in FastAPI's order."""
        limit = self.core.schema.max_values(self.max_batch) + json_body.SLACK_VALUES
        data = await self._json(receive, limit)
        deadline = self._deadline(scope)
        return self._validate(adapter, data), deadline

    def _model(self) -> dict[str, str]:
        holder = self.core.holder
        return {"name": holder.name, "version": holder.version}

    # -- the steps FastAPI would take, in its order -------------------------------------------------
    async def _json(self, receive: Receive, max_values: int) -> Any:
        """The parsed body, or the error FastAPI's body reading ends in (JSON errors come before any
        dependency; an empty body is a missing one)."""
        body = await _read(receive)
        if not body:
            return _MISSING
        return await json_body.parse(body, max_values, self.max_batch)

    def _deadline(self, scope: Scope) -> Deadline:
        """The X-Request-Timeout header (its first occurrence, as FastAPI reads it), from the arrival time."""
        timeout = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-timeout"), None)
        return self.core.deadline(parse_timeout(timeout), scope["state"]["started_monotonic"])

    def _validate(self, adapter: TypeAdapter[Any], data: Any) -> Any:
        if data is _MISSING:
            raise from_validation(list(_MISSING_BODY), self.max_batch)
        try:
            return adapter.validate_python(data, from_attributes=True)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise from_validation(errors, self.max_batch) from None


_MISSING: Any = object()


async def _read(receive: Receive) -> bytes:
    """The whole body, as Starlette's ``Request.body`` reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
