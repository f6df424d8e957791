"""Request and response bodies, and Open Inference Protocol v2 request/response bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ferry_client.protocol import JobStatus


# -- request bodies typed from the model card ------------------------------------------------------
def _body_examples(schema: dict[str, Any], model: type[Any]) -> None:
    schema["examples"] = model.examples()


class CardBody(BaseModel):
    """A request body whose records are typed from the served model's card.

    Each route subclasses one of these at start-up (``create_model(__base__=...)``) with the card's
    record type in place of ``Any``; the static fields here type the route handlers, the subclass
    validates. ``examples`` (set on the subclass) gives the complete examples /docs shows; it is called
    each time the schema is built, because a model without a card learns its width only once loaded.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_body_examples)
    examples: ClassVar[Callable[[], list[Any]]] = list


class PredictBody(CardBody):
    record: Any


class BatchBody(CardBody):
    records: list[Any]


class StreamBody(CardBody):
    records: list[Any]
    chunk_size: int | None = None


MAX_METADATA_DEPTH = 32  # far beyond any labelling scheme, far below orjson's 254


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``{}`` is 1), iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in item if isinstance(child, dict | list))
    return deepest


class JobBody(CardBody):
    records: list[Any]
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    max_metadata_bytes: ClassVar[int] = 4096

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        # Depth first, without recursion: orjson refuses to encode past 254 levels (which was a 500).
        if json_depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
            raise ValueError(f"metadata cannot be stored as JSON ({exc})") from None
        if size > cls.max_metadata_bytes:
            raise ValueError(f"metadata is larger than {cls.max_metadata_bytes} bytes as JSON")
        return value


class ModelRef(BaseModel):
    name: str = Field(examples=["churn"])
    version: str = Field(examples=["1.0.0"])


class RowResult(BaseModel):
    prediction: Any = Field(description="Predicted class label (or value, for regressors).", examples=["stay"])
    probabilities: dict[str, float] | None = Field(
        None,
        description="Probability per class label; absent for models without predict_proba.",
        examples=[{"churn": 0.12, "stay": 0.88}],
    )


class PredictResponse(RowResult):
    model: ModelRef
    request_id: str


class BatchResponse(BaseModel):
    predictions: list[RowResult] = Field(description="One result per record, in request order.")
    model: ModelRef
    request_id: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.", examples=["validation_error"])
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


class V2ErrorBody(BaseModel):
    """The Open Inference Protocol's error body (``error``); ``code`` and ``request_id`` are extra."""

    error: str = Field(description="What was wrong, for a person.", examples=["no model 'iris'"])
    code: str = Field(description="Stable machine-readable error code.", examples=["model_not_found"])
    request_id: str
    details: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: Literal["ok", "ready", "loading", "failed", "draining", "hung"]
    model: str | None = None
    version: str | None = None
    reason: str | None = None


CardSection = Literal["performance", "args", "features", "classes", "dataset", "libraries", "example"]


# -- Server-Sent Events payloads (the JSON in each event's data field) ------------------------------
class StreamChunk(BaseModel):
    """``event: chunk`` of the stream route: one scored chunk."""

    offset: int = Field(description="Index of the chunk's first record in the request.")
    predictions: list[RowResult] = Field(description="One result per record of the chunk, in order.")


class StreamSummary(BaseModel):
    """``event: summary``: the last event of a stream that scored every record."""

    records: int
    chunks: int
    duration_ms: float
    model: ModelRef
    request_id: str


class StreamFailed(BaseModel):
    """``event: failed``: a chunk failed; the last event of the stream."""

    code: str = Field(examples=["deadline_exceeded"])
    message: str
    offset: int = Field(description="Index of the failed chunk's first record.")
    request_id: str


class StreamShutdown(BaseModel):
    """``event: shutdown``: the server is stopping; send the records from next_offset again."""

    next_offset: int
    message: str


class JobStreamShutdown(BaseModel):
    """``event: shutdown`` of a job event stream: the server is stopping; reconnect to follow the job."""

    message: str


# -- Open Inference Protocol v2 ------------------------------------------------------------------
NUMERIC_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
)


MAX_INPUTS = 1024


class _Strictish(BaseModel):
    # Unknown fields are ignored, as the protocol expects extensions to add some.
    model_config = ConfigDict(extra="ignore")


class InferInput(_Strictish):
    name: str = Field(max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferOutputRequest(_Strictish):
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferRequest(_Strictish):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    # One tensor [rows, features], or one input per feature (a card has at most this many).
    inputs: list[InferInput] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[InferOutputRequest] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the data follows the JSON header as bytes; content_type."
    )
    data: list[Any] | None = Field(None, description="Absent when the output is sent as binary data.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


# -- async jobs ------------------------------------------------------------------------------


class JobError(BaseModel):
    code: str = Field(examples=["model_error"])
    message: str


class JobCallback(BaseModel):
    url: str
    webhook_id: str = Field(description="Standard Webhooks 'webhook-id': the same on every attempt and redelivery.")
    status: Literal["pending", "delivered", "dead_letter"] | None = Field(
        description="None until the job ends; then pending (being delivered, with retries), delivered, or "
        "dead_letter (given up; see last_status_code/last_error; POST .../callback/redeliver to try again)."
    )
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    redeliveries: int


class JobEvent(BaseModel):
    status: str = Field(description="queued, running, lost (its runner died), succeeded, failed or canceled.")
    at: str
    model_config = ConfigDict(extra="allow")


class JobResult(BaseModel):
    predictions: list[RowResult] = Field(description="One result per record, in submission order.")


class Job(BaseModel):
    id: str = Field(examples=["5f0c8e0b7d3a4f4e9a1c2b3d4e5f6a7b"])
    status: JobStatus
    created_at: str = Field(description="RFC 3339, UTC.")
    started_at: str | None
    finished_at: str | None
    expires_at: str | None = Field(description="When the finished job and its result are purged.")
    records: int
    attempts: int = Field(description="Runs started (a job whose runner died runs again, up to jobs.max_attempts).")
    runner: str | None = Field(description="host:pid:n of the runner on it now (or last).")
    result: JobResult | None
    error: JobError | None
    metadata: dict[str, Any]
    model: ModelRef
    request_id: str = Field(description="X-Request-ID of the submitting request.")
    idempotency_key: str | None
    callback: JobCallback | None
    history: list[JobEvent]
