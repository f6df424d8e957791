"""Open Inference Protocol v2 (REST) as Triton's, KServe's and MLServer's clients speak it (the README's "Interop"
lists the clients and modes the tests run).

Inputs, in either form:

- one numeric tensor ``[rows, n_features]`` (or ``[n_features]`` for one row), columns in card order,
  a categorical as the index of its category, a boolean as 0/1 (``GET /v2/models/{name}`` says so);
- one input per feature, named as in the card, in any order, each ``[rows]`` or ``[rows, 1]``: what
  MLServer's ``PandasCodec`` sends. A categorical may then be BYTES (its category names).

JSON or binary tensor data (``ferry.api.tensor_codec``) in, and out when asked. Outputs ``predict``
(labels) and ``predict_proba`` ([rows, n_classes], FP64): both by default; a request marked with an
MLServer request codec (``parameters.content_type`` ``np`` or ``pd``) gets what MLServer's sklearn
runtime answers (``predict`` only unless ``outputs`` asks, shaped ``[rows, 1]``, ``content_type: np``).

No `from __future__ import annotations` here: FastAPI must see the deadline dependency built in
`build_router` as an object.
"""

import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ferry import __version__
from ferry.api import json_body, tensor_codec
from ferry.api.deps import deadline_of
from ferry.api.errors import from_status
from ferry.api.openapi import COMPONENTS, RETRY_AFTER, route_errors
from ferry.api.orjson_route import OrjsonRequest, bounded
from ferry.api.routes.predict import PREDICT_ERRORS
from ferry.api.schemas import (
    NUMERIC_DATATYPES,
    InferInput,
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
from ferry.card import Feature
from ferry.core import Core
from ferry.errors import (
    BadRequest,
    FerryError,
    InvalidInput,
    MalformedBinaryData,
    ModelNotFound,
)
from ferry.features import FeatureSchema
from ferry.inference import Prediction
from ferry.resilience.deadline import Deadline

INPUT_NAME = "input-0"
OUTPUTS = ("predict", "predict_proba")
EXTENSIONS = ["binary_tensor_data"]
# MLServer's request codecs (parameters.content_type of the request) and input codecs (of an input).
MLSERVER_REQUEST_CODECS = ("np", "pd")
INPUT_CONTENT_TYPES = ("np", "pd", "str")
BINARY_CONTENT_TYPE = "application/octet-stream"


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
            "note": "columns in this order; categorical = index into codes; boolean = 0/1. Or one input "
            "per feature, named as here, each [rows] or [rows, 1]; a categorical then also as BYTES names",
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


def _check_content_types(request: InferRequest) -> None:
    """The content types MLServer's codecs set are the encodings this route reads; others are refused."""
    kind = request.parameters.get("content_type") if request.parameters else None
    if kind is not None and kind not in MLSERVER_REQUEST_CODECS:
        raise BadRequest(
            f"parameters.content_type {kind!r} is not supported; use one of {list(MLSERVER_REQUEST_CODECS)}"
        )
    for tensor in request.inputs:
        kind = tensor.parameters.get("content_type") if tensor.parameters else None
        if kind is None:
            continue
        if kind not in INPUT_CONTENT_TYPES:
            raise BadRequest(
                f"input {tensor.name!r}: content_type {kind!r} is not supported; use one of {list(INPUT_CONTENT_TYPES)}"
            )
        if kind == "str" and tensor.datatype != "BYTES":
            raise BadRequest(f"input {tensor.name!r}: content_type 'str' needs datatype BYTES, not {tensor.datatype}")


def matrix_of(schema: FeatureSchema, request: InferRequest) -> np.ndarray:
    """The request's inputs as one numeric [rows, features] tensor in card order (categoricals as
    indexes, booleans 0/1), for ``Core.predict_tensor`` to check against the card."""
    _check_content_types(request)
    if len(request.inputs) > 1 or request.inputs[0].name in schema.names:
        return _named_inputs(schema, request.inputs)
    return _single_tensor(request.inputs[0])


def _single_tensor(tensor: InferInput) -> np.ndarray:
    loc: list[Any] = ["inputs", 0]
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise BadRequest(f"input {tensor.name!r}: datatype {tensor.datatype} not supported; use a numeric type")
    if len(tensor.shape) not in (1, 2) or any(d < 0 for d in tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r}: shape must be [rows, features] (or [features] for one row), got {tensor.shape}"
        )
    shape = tensor.shape if len(tensor.shape) == 2 else [1, tensor.shape[0]]
    try:
        flat = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {tensor.name!r}: data must be numbers ({exc})") from None
    if flat.size != math.prod(tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r}: {flat.size} values do not fill shape {tensor.shape}", details=[{"loc": loc}]
        )
    if shape[0] == 0:
        raise BadRequest(f"input {tensor.name!r}: at least one row is required")
    return flat.reshape(shape)


def _named_inputs(schema: FeatureSchema, inputs: list[InferInput]) -> np.ndarray:
    """One input per card feature (MLServer's PandasCodec): names checked, columns in card order."""
    if not schema.features:
        raise BadRequest(f"this model takes one input tensor [rows, features], got {len(inputs)} inputs")
    by_name: dict[str, tuple[int, InferInput]] = {}
    for index, tensor in enumerate(inputs):
        if tensor.name not in schema.names:
            raise BadRequest(
                f"unknown input {tensor.name!r}: send one tensor [rows, features], or one input per feature "
                f"named {schema.names}"
            )
        if tensor.name in by_name:
            raise BadRequest(f"input {tensor.name!r} is sent twice")
        by_name[tensor.name] = (index, tensor)
    missing = [name for name in schema.names if name not in by_name]
    if missing:
        raise BadRequest(f"missing input(s) {missing}: send one input per feature of the card")
    columns: list[np.ndarray] = []
    first = ""
    for feature in schema.features:
        index, tensor = by_name[feature.name]
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]) or tensor.shape[0] < 0:
            raise BadRequest(f"input {tensor.name!r}: shape must be [rows] or [rows, 1], got {tensor.shape}")
        rows = tensor.shape[0]
        if columns and rows != len(columns[0]):
            raise BadRequest(f"input {tensor.name!r} has {rows} rows but input {first!r} has {len(columns[0])}")
        columns.append(_column(feature, tensor, index, rows))
        first = first or tensor.name
    if not len(columns[0]):
        raise BadRequest("at least one row is required")
    return np.column_stack(columns)


def _column(feature: Feature, tensor: InferInput, index: int, rows: int) -> np.ndarray:
    data = [v for item in tensor.data for v in (item if isinstance(item, list) else [item])]
    if len(data) != rows:
        raise BadRequest(f"input {tensor.name!r}: {len(data)} values do not fill shape {tensor.shape}")
    if tensor.datatype == "BYTES":
        if feature.type != "categorical":
            raise BadRequest(
                f"input {tensor.name!r}: BYTES is for categorical features; {feature.name!r} is {feature.type}, "
                "send a numeric datatype"
            )
        codes = {category: code for code, category in enumerate(feature.categories or [])}
        column = np.empty(rows)
        for row, value in enumerate(data):
            code = codes.get(value) if isinstance(value, str) else None
            if code is None:
                raise InvalidInput(
                    f"input {tensor.name!r}: {str(value)[:64]!r} is not a category of {feature.name!r}",
                    details=[
                        {
                            "loc": ["inputs", index, "data", row],
                            "msg": f"one of {feature.categories}",
                            "type": "literal_error",
                        }
                    ],
                )
            column[row] = code
        return column
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise BadRequest(f"input {tensor.name!r}: datatype {tensor.datatype} not supported")
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {tensor.name!r}: data must be numbers ({exc})") from None


def _mlserver(request: InferRequest) -> bool:
    """Sent through an MLServer request codec: answered as MLServer's sklearn runtime answers."""
    return (request.parameters or {}).get("content_type") in MLSERVER_REQUEST_CODECS


def _wanted(request: InferRequest) -> list[str]:
    if request.outputs:
        wanted = [o.name for o in request.outputs]
    else:
        wanted = ["predict"] if _mlserver(request) else list(OUTPUTS)
    unknown = [name for name in wanted if name not in OUTPUTS]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    for output in request.outputs or []:
        if "classification" in (output.parameters or {}):
            raise BadRequest(f"output {output.name!r}: the classification extension is not supported")
    return wanted


def _outputs(wanted: list[str], prediction: Prediction, mlserver: bool) -> list[InferOutput]:
    rows = len(prediction.labels)
    # MLServer's runtime encodes each output with its NumpyCodec: a batch dimension and content_type np.
    parameters = {"content_type": "np"} if mlserver else None
    outputs = []
    if "predict" in wanted:
        datatype = "BYTES" if prediction.classes is not None else "FP64"
        shape = [rows, 1] if mlserver else [rows]
        outputs.append(
            InferOutput(name="predict", shape=shape, datatype=datatype, parameters=parameters, data=prediction.labels)
        )
    if "predict_proba" in wanted and prediction.probabilities is not None:
        proba = prediction.probabilities
        outputs.append(
            InferOutput(
                name="predict_proba",
                shape=list(proba.shape),
                datatype="FP64",
                parameters=parameters,
                data=proba.ravel().tolist(),
            )
        )
    return outputs


async def run_infer(core: Core, request: InferRequest, version: str | None, deadline: Deadline) -> InferResponse:
    holder = check_model(core, core.holder.name, version).holder
    wanted = _wanted(request)
    timeout = (request.parameters or {}).get("timeout")
    if timeout is not None:  # it may only lower the deadline already in force
        deadline = deadline.at_most(timeout_parameter(timeout))
    matrix = matrix_of(core.schema, request)
    prediction = await core.predict_tensor(matrix, loc=["inputs", 0], deadline=deadline)
    return InferResponse(
        model_name=holder.name,
        model_version=holder.version,
        id=request.id,
        outputs=_outputs(wanted, prediction, _mlserver(request)),
    )


def binary_outputs(request: InferRequest) -> set[str]:
    """Outputs to send as binary data: those asking ``binary_data: true``, or all with the request's
    ``binary_data_output: true`` except those asking ``binary_data: false``."""
    if request.parameters is None and request.outputs is None:
        return set()  # a plain JSON request: no lookups
    every = (request.parameters or {}).get("binary_data_output") is True
    chosen = {o.name: (o.parameters or {}).get("binary_data") for o in request.outputs or []}
    return {name for name in OUTPUTS if chosen.get(name) is True or (every and chosen.get(name) is not False)}


def binary_answer(response: InferResponse, binary: set[str]) -> tuple[bytes, int]:
    """(body, JSON header length) of a response with the ``binary`` outputs as bytes after the header."""
    blobs = []
    outputs = []
    for output in response.outputs:
        if output.name in binary and output.data is not None:
            blob = tensor_codec.encode(output.datatype, output.data)
            blobs.append(blob)
            parameters = {**(output.parameters or {}), "binary_data_size": len(blob)}
            output = output.model_copy(update={"data": None, "parameters": parameters})
        outputs.append(output)
    header = response.model_copy(update={"outputs": outputs}).model_dump_json(exclude_none=True).encode()
    return header + b"".join(blobs), len(header)


async def read_binary(body: bytes, header_length: str, max_values: int, max_batch: int) -> Any:
    """A binary-extension body as the parsed request it stands for: the JSON header, each binary input's
    ``data`` filled in. Too many tensor elements for the route are 413, as the same values in JSON."""
    header, binary = tensor_codec.split(body, header_length)
    request = await json_body.parse(header, max_values, max_batch)
    if tensor_codec.fill_inputs(request, binary) > max_values:
        raise from_status(413, f"the body holds more tensor values than this route accepts ({max_values})")
    return request


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
INFER_ERRORS: tuple[type[FerryError], ...] = (*PREDICT_ERRORS, MalformedBinaryData, ModelNotFound)


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


def _oip_route(max_values: Callable[[], int], max_batch: int) -> type[Any]:
    """The v2 routes' class: bounded orjson bodies, and the binary extension (or JSON labelled
    application/octet-stream) read into the parsed request FastAPI then validates, as the hot path does."""
    base = bounded(max_values)

    class OipRoute(base):  # type: ignore[valid-type,misc]  # a class built at run time
        async def prepare(self, request: OrjsonRequest) -> OrjsonRequest:
            header_length = request.headers.get(tensor_codec.HEADER)
            content_type = request.headers.get("content-type", "")
            if header_length is None and content_type.split(";", 1)[0].strip().lower() != BINARY_CONTENT_TYPE:
                return request
            # FastAPI parses a body as JSON only when labelled so: the parsed request is what it gets.
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
            prepared = OrjsonRequest(scope, request.receive)
            prepared.max_values = request.max_values
            if header_length is not None:
                body = await request.body()
                prepared._body = body
                prepared._json = await read_binary(body, header_length, request.max_values or 0, max_batch)
            return prepared

    return OipRoute


def _answer(response: InferResponse, request: InferRequest) -> InferResponse | Response:
    binary = binary_outputs(request)
    if not binary:
        return response
    body, header_length = binary_answer(response, binary)
    return Response(body, media_type=BINARY_CONTENT_TYPE, headers={tensor_codec.HEADER: str(header_length)})


# The binary tensor data extension in the contract: a request body that is an inference header (JSON)
# followed by raw tensor bytes, announced by Inference-Header-Content-Length; the answer takes the same
# form when binary outputs are asked for. Plain JSON stays the documented schema for everything else.
_BINARY_BODY_DOC = (
    "An inference request as JSON, or under the binary tensor data extension: the first "
    "`Inference-Header-Content-Length` bytes are the JSON inference request (inputs with "
    "`parameters.binary_data_size`), then each such input's raw data in input order (little-endian; BYTES "
    "elements as a 4-byte length then the bytes). Without that header an `application/octet-stream` body is "
    "read as JSON."
)
_BINARY_HEADER = {
    "description": "Length of the JSON inference header at the start of the body (binary tensor data extension).",
    "schema": {"type": "integer", "minimum": 0},
}
_BINARY_EXTRA: dict[str, Any] = {
    "requestBody": {
        "description": _BINARY_BODY_DOC,
        "content": {BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False, **_BINARY_HEADER}],
}


def _infer_responses(path: str) -> dict[int | str, dict[str, Any]]:
    binary = {
        "description": "The inference response: JSON; or, when outputs are asked for as binary (`binary_data`, "
        "`binary_data_output`), the JSON inference response followed by each binary output's raw data.",
        "content": {BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        "headers": {"Inference-Header-Content-Length": _BINARY_HEADER},
    }
    return {**route_errors(path, "POST", *INFER_ERRORS), 200: binary}


def build_router(core: Core) -> APIRouter:
    # A tensor of max_batch_size rows, nested or flat, plus parameters and names.
    max_batch = core.settings.api.max_batch_size
    route_class = _oip_route(lambda: core.schema.max_values(max_batch) + V2_SLACK_VALUES, max_batch)
    router = APIRouter(route_class=route_class, prefix="/v2", tags=["open inference protocol v2"])
    deadline_dep = Depends(deadline_of(core))

    @router.get("", summary="Server metadata", response_model=ServerMetadata, responses=route_errors("/v2", "GET"))
    async def server_metadata() -> dict[str, Any]:
        return {"name": "ferry", "version": __version__, "extensions": EXTENSIONS}

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
        responses=_infer_responses(MODEL + "/infer"),
        openapi_extra=_BINARY_EXTRA,
    )
    async def infer(
        name: str, request: InferRequest, deadline: Annotated[Deadline, deadline_dep]
    ) -> InferResponse | Response:
        check_model(core, name)
        return _answer(await run_infer(core, request, None, deadline), request)

    @router.post(
        "/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        response_model_exclude_none=True,
        summary="Inference on a model version",
        responses=_infer_responses(VERSION + "/infer"),
        openapi_extra=_BINARY_EXTRA,
    )
    async def infer_version(
        name: str, version: str, request: InferRequest, deadline: Annotated[Deadline, deadline_dep]
    ) -> InferResponse | Response:
        check_model(core, name, version)
        return _answer(await run_infer(core, request, version, deadline), request)

    return router
