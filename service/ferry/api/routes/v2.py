"""Open Inference Protocol v2 (REST), so KServe/Triton/MLServer clients work unchanged.

JSON tensors only (no binary tensor extension). Input: one numeric tensor of shape
[rows, n_features]. Outputs: ``predict`` (labels) and ``predict_proba`` ([rows, n_classes], FP64).

No `from __future__ import annotations` here: FastAPI must see the deadline dependency built in
`build_router` as an object.
"""

import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ferry import __version__
from ferry.api.deps import deadline_of
from ferry.api.openapi import COMPONENTS, JSON_BODY, RETRY_AFTER, route_errors
from ferry.api.orjson_route import bounded
from ferry.api.schemas import (
    NUMERIC_DATATYPES,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    V2ErrorBody,
)
from ferry.core import Core
from ferry.errors import (
    BadRequest,
    BatchTooLarge,
    CircuitOpen,
    DeadlineExceeded,
    FerryError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
)
from ferry.inference import Prediction
from ferry.resilience.deadline import Deadline

INPUT_NAME = "input-0"
OUTPUTS = ("predict", "predict_proba")


def check_model(core: Core, name: str, version: str | None = None) -> Core:
    """The core when ``name`` (and ``version``, if given) is the served model, else 404 model_not_found."""
    if name != core.holder.name or (version not in (None, "", core.holder.version)):
        raise ModelNotFound(f"no model {name!r}" + (f" version {version!r}" if version else ""))
    return core


def _metadata(core: Core) -> ModelMetadata:
    holder = core.holder
    width = holder.schema.n_features if holder.schema.n_features is not None else -1
    classes = holder.loaded.classes if holder.loaded else (holder.card.classes if holder.card else None)
    label_type = "BYTES" if classes is not None else "FP64"
    encoding = None
    if holder.schema.features:
        encoding = {
            "features": [
                {"name": f.name, "type": f.type, **({"codes": f.categories} if f.categories else {})}
                for f in holder.schema.features
            ],
            "note": "columns in this order; categorical = index into codes; boolean = 0/1",
        }
    outputs = [TensorMetadata(name="predict", datatype=label_type, shape=[-1])]
    if classes is not None:
        outputs.append(
            TensorMetadata(
                name="predict_proba", datatype="FP64", shape=[-1, len(classes)], parameters={"classes": classes}
            )
        )
    return ModelMetadata(
        name=holder.name,
        versions=[holder.version],
        platform="sklearn",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP64", shape=[-1, width], parameters=encoding)],
        outputs=outputs,
    )


def _ready(core: Core, name: str, version: str | None = None) -> JSONResponse:
    ready = check_model(core, name, version).holder.ready
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


def _tensor(request: InferRequest) -> np.ndarray:
    tensor = request.inputs[0]
    loc: list[Any] = ["inputs", 0]
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise BadRequest(f"input {tensor.name!r}: datatype {tensor.datatype} not supported; use a numeric type")
    if len(tensor.shape) != 2 or any(d < 0 for d in tensor.shape):
        raise BadRequest(f"input {tensor.name!r}: shape must be [rows, features], got {tensor.shape}")
    try:
        flat = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {tensor.name!r}: data must be numbers ({exc})") from None
    if flat.size != math.prod(tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r}: {flat.size} values do not fill shape {tensor.shape}", details=[{"loc": loc}]
        )
    if tensor.shape[0] == 0:
        raise BadRequest(f"input {tensor.name!r}: at least one row is required")
    return flat.reshape(tensor.shape)


def _wanted(request: InferRequest) -> list[str]:
    wanted = [o.name for o in request.outputs] if request.outputs else list(OUTPUTS)
    unknown = [name for name in wanted if name not in OUTPUTS]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    return wanted


def _outputs(wanted: list[str], prediction: Prediction) -> list[InferOutput]:
    rows = len(prediction.labels)
    outputs = []
    if "predict" in wanted:
        datatype = "BYTES" if prediction.classes is not None else "FP64"
        outputs.append(InferOutput(name="predict", shape=[rows], datatype=datatype, data=prediction.labels))
    if "predict_proba" in wanted and prediction.probabilities is not None:
        proba = prediction.probabilities
        outputs.append(
            InferOutput(name="predict_proba", shape=list(proba.shape), datatype="FP64", data=proba.ravel().tolist())
        )
    return outputs


async def run_infer(core: Core, request: InferRequest, version: str | None, deadline: Deadline) -> InferResponse:
    holder = check_model(core, core.holder.name, version).holder
    wanted = _wanted(request)
    timeout = (request.parameters or {}).get("timeout")
    if timeout is not None:  # it may only lower the deadline already in force
        deadline = deadline.at_most(timeout_parameter(timeout))
    prediction = await core.predict_tensor(_tensor(request), loc=["inputs", 0], deadline=deadline)
    return InferResponse(
        model_name=holder.name, model_version=holder.version, id=request.id, outputs=_outputs(wanted, prediction)
    )


def timeout_parameter(value: object) -> float:
    """Seconds from the protocol's ``timeout`` parameter (microseconds, as Triton clients send it)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(
            "parameters.timeout must be a positive number of microseconds",
            details=[{"loc": ["body", "parameters", "timeout"], "msg": "positive microseconds", "type": "value_error"}],
        )
    return value / 1e6


V2_SLACK_VALUES = 1024
MODEL = "/v2/models/{name}"
VERSION = MODEL + "/versions/{version}"
# What inference answers besides 200 (invalid requests are 400 under /v2, see ferry.api.errors.render).
INFER_ERRORS: tuple[type[FerryError], ...] = (
    *JSON_BODY,
    InvalidInput,
    ModelNotFound,
    BatchTooLarge,
    ModelError,
    CircuitOpen,
    Overloaded,
    ModelNotReady,
    DeadlineExceeded,
)


def _not_ready(model: type[BaseModel]) -> dict[str, Any]:
    """503: the readiness answer, or (authentication on) the identity provider's keys unavailable."""
    refs = [{"$ref": f"{COMPONENTS}{name}"} for name in (model.__name__, V2ErrorBody.__name__)]
    return {
        "description": "Not ready: the model is not loaded (yet); or `auth_unavailable` (see Retry-After)",
        "content": {"application/json": {"schema": {"anyOf": refs}}},
        "headers": RETRY_AFTER,
    }


def _ready_responses(path: str) -> dict[int | str, dict[str, Any]]:
    return {**route_errors(path + "/ready", "GET", ModelNotFound), 503: _not_ready(ModelReady)}


def build_router(core: Core) -> APIRouter:
    # A tensor of max_batch_size rows, nested or flat, plus parameters and names.
    max_batch = core.settings.api.max_batch_size
    route_class = bounded(lambda: core.schema.max_values(max_batch) + V2_SLACK_VALUES)
    router = APIRouter(route_class=route_class, prefix="/v2", tags=["open inference protocol v2"])
    deadline_dep = Depends(deadline_of(core))

    @router.get("", summary="Server metadata", response_model=ServerMetadata, responses=route_errors("/v2", "GET"))
    async def server_metadata() -> dict[str, Any]:
        return {"name": "ferry", "version": __version__, "extensions": []}

    @router.get(
        "/health/live",
        summary="Server live",
        response_model=ServerLive,
        responses=route_errors("/v2/health/live", "GET"),
    )
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @router.get(
        "/health/ready",
        summary="Server ready",
        response_model=ServerReady,
        responses={
            **route_errors("/v2/health/ready", "GET"),
            503: _not_ready(ServerReady),
        },
    )
    async def server_ready() -> JSONResponse:
        ready = core.holder.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @router.get(
        "/models/{name}",
        response_model=ModelMetadata,
        response_model_exclude_none=True,
        summary="Model metadata",
        responses=route_errors(MODEL, "GET", ModelNotFound),
    )
    async def model_metadata(name: str) -> ModelMetadata:
        return _metadata(check_model(core, name))

    @router.get(
        "/models/{name}/versions/{version}",
        response_model=ModelMetadata,
        response_model_exclude_none=True,
        summary="Model version metadata",
        responses=route_errors(VERSION, "GET", ModelNotFound),
    )
    async def model_version_metadata(name: str, version: str) -> ModelMetadata:
        return _metadata(check_model(core, name, version))

    @router.get(
        "/models/{name}/ready", summary="Model ready", response_model=ModelReady, responses=_ready_responses(MODEL)
    )
    async def model_ready(name: str) -> JSONResponse:
        return _ready(core, name)

    @router.get(
        "/models/{name}/versions/{version}/ready",
        summary="Model version ready",
        response_model=ModelReady,
        responses=_ready_responses(VERSION),
    )
    async def model_version_ready(name: str, version: str) -> JSONResponse:
        return _ready(core, name, version)

    @router.post(
        "/models/{name}/infer",
        response_model=InferResponse,
        response_model_exclude_none=True,
        summary="Inference",
        responses=route_errors(MODEL + "/infer", "POST", *INFER_ERRORS),
    )
    async def infer(name: str, request: InferRequest, deadline: Annotated[Deadline, deadline_dep]) -> InferResponse:
        check_model(core, name)
        return await run_infer(core, request, None, deadline)

    @router.post(
        "/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        response_model_exclude_none=True,
        summary="Inference on a model version",
        responses=route_errors(VERSION + "/infer", "POST", *INFER_ERRORS),
    )
    async def infer_version(
        name: str, version: str, request: InferRequest, deadline: Annotated[Deadline, deadline_dep]
    ) -> InferResponse:
        check_model(core, name, version)
        return await run_infer(core, request, version, deadline)

    return router
