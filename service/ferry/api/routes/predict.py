"""Single and batch prediction, typed from the model card.

No `from __future__ import annotations` here: FastAPI must see the request types built in
`build_router` as objects, not as names it cannot resolve.
"""

from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Body, Depends
from pydantic import Field, create_model

from ferry.api import json_body
from ferry.api.deps import RequestIdDep, deadline_of
from ferry.api.openapi import JSON_BODY, route_errors
from ferry.api.orjson_route import bounded
from ferry.api.schemas import BatchBody, BatchResponse, PredictBody, PredictResponse
from ferry.core import Core
from ferry.errors import (
    BatchTooLarge,
    CircuitOpen,
    DeadlineExceeded,
    FerryError,
    InvalidInput,
    ModelError,
    ModelNotReady,
    Overloaded,
)
from ferry.resilience.deadline import Deadline

# What the prediction routes answer besides 200 (ferry.api.openapi adds 405, 401/403 and the POST guards).
PREDICT_ERRORS: tuple[type[FerryError], ...] = (
    *JSON_BODY,
    InvalidInput,
    BatchTooLarge,
    ModelError,
    CircuitOpen,
    Overloaded,
    ModelNotReady,
    DeadlineExceeded,
)


def model_json(core: Core) -> dict[str, str]:
    return {"name": core.holder.name, "version": core.holder.version}


class RequestTypes(NamedTuple):
    """The request bodies of the two routes, typed from the card (the lean hot path validates with them too)."""

    predict: type[PredictBody]
    batch: type[BatchBody]


def request_types(core: Core) -> RequestTypes:
    schema = core.schema
    max_batch = core.settings.api.max_batch_size
    predict_request = create_model(
        "PredictRequest",
        __base__=PredictBody,
        record=(schema.record_type, Field(description="One record, fields as in the model card.")),
    )
    predict_request.examples = lambda: [{"record": schema.example}]
    batch_request = create_model(
        "BatchPredictRequest",
        __base__=BatchBody,
        records=(schema.list_type, Field(min_length=1, max_length=max_batch, description=f"1 to {max_batch} records.")),
    )
    batch_request.examples = lambda: [{"records": [schema.example, schema.example]}]
    return RequestTypes(predict_request, batch_request)


def build_router(core: Core, types: RequestTypes | None = None) -> APIRouter:
    """Routes whose request bodies are typed from the served model's card."""
    schema = core.schema
    max_batch = core.settings.api.max_batch_size
    types = types or request_types(core)
    predict_request, batch_request = types.predict, types.batch
    route_class = bounded(lambda: schema.max_values(max_batch) + json_body.SLACK_VALUES)
    router = APIRouter(route_class=route_class, prefix="/api/v1", tags=["predict"])
    deadline_dep = Depends(deadline_of(core))

    @router.post(
        "/predict",
        response_model=PredictResponse,
        summary="Predict one record",
        responses=route_errors("/api/v1/predict", "POST", *PREDICT_ERRORS),
    )
    async def predict(
        body: Annotated[predict_request, Body()],  # type: ignore[valid-type]  # built from the card
        request_id: RequestIdDep,
        deadline: Annotated[Deadline, deadline_dep],
    ) -> dict[str, Any]:
        prediction = await core.predict_records([body.record], deadline)  # type: ignore[attr-defined]
        return {
            **prediction.rows()[0],
            "model": model_json(core),
            "request_id": request_id,
        }

    @router.post(
        "/predict/batch",
        response_model=BatchResponse,
        summary="Predict 1..N records in one model call",
        responses=route_errors("/api/v1/predict/batch", "POST", *PREDICT_ERRORS),
    )
    async def predict_batch(
        body: Annotated[batch_request, Body()],  # type: ignore[valid-type]  # built from the card
        request_id: RequestIdDep,
        deadline: Annotated[Deadline, deadline_dep],
    ) -> dict[str, Any]:
        prediction = await core.predict_records(body.records, deadline)  # type: ignore[attr-defined]
        return {
            "predictions": prediction.rows(),
            "model": model_json(core),
            "request_id": request_id,
        }

    return router
