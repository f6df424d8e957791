"""One error hierarchy.

Every error a client can see is a ``FerryError`` with a stable ``code`` and the status that reports it
(``status``: the HTTP status, which is also how job results and stream events classify errors).
Raised anywhere; rendered only by the HTTP layer (``ferry.api.errors``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class FerryError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(FerryError):
    status, code, default_message = 400, "bad_request", "bad request"


class MalformedJson(FerryError):
    status, code, default_message = 400, "malformed_json", "request body is not valid JSON"


class NotFound(FerryError):
    status, code, default_message = 404, "not_found", "no such resource"


class ModelNotFound(FerryError):
    status, code, default_message = 404, "model_not_found", "no model with that name"


class MethodNotAllowed(FerryError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed"


class PayloadTooLarge(FerryError):
    status, code, default_message = 413, "payload_too_large", "request body too large"


class UnsupportedMediaType(FerryError):
    status, code, default_message = 415, "unsupported_media_type", "request body must be application/json"


class MalformedBinaryData(FerryError):
    status, code, default_message = (
        400,
        "malformed_binary_data",
        "the binary tensor data does not match the inference header",
    )


class MalformedContentEncoding(FerryError):
    status, code, default_message = 400, "malformed_content_encoding", "the compressed request body is corrupt"


class DecompressedTooLarge(FerryError):
    status, code, default_message = 413, "decompressed_too_large", "the decompressed request body is too large"


class UnsupportedContentEncoding(FerryError):
    status, code, default_message = (
        415,
        "unsupported_content_encoding",
        "Content-Encoding must be gzip, deflate or identity",
    )


class InvalidInput(FerryError):
    status, code, default_message = 422, "validation_error", "request failed validation"


class BatchTooLarge(FerryError):
    status, code, default_message = 422, "batch_too_large", "too many records in one request"


class CallbackUrlForbidden(FerryError):
    status, code, default_message = 422, "callback_url_forbidden", "callback_url is not an allowed public URL"


class CallbacksNotConfigured(FerryError):
    status, code, default_message = (
        422,
        "callbacks_not_configured",
        "this service has no callback signing secret (FERRY_CALLBACKS__SIGNING_SECRET); poll the job instead",
    )


class Unauthorized(FerryError):
    status, code, default_message = (
        401,
        "unauthorized",
        "authentication required: send Authorization: Bearer <key or token>",
    )


class Forbidden(FerryError):
    status, code, default_message = 403, "forbidden", "the credentials do not grant this operation"


class AuthUnavailable(FerryError):
    status, code, default_message = (
        503,
        "auth_unavailable",
        "the identity provider's keys cannot be fetched; retry later",
    )


class JobQuotaExceeded(FerryError):
    status, code, default_message = 429, "job_quota_exceeded", "too many jobs waiting to run; retry later"


class JobStoreFull(FerryError):
    status, code, default_message = 429, "job_store_full", "the job store is full; retry after finished jobs expire"


class JobNotFound(FerryError):
    status, code, default_message = 404, "job_not_found", "no such job (never existed, or purged after its TTL)"


class JobConflict(FerryError):
    status, code, default_message = 409, "job_conflict", "the job is not in a state that allows this"


class IdempotencyKeyReused(FerryError):
    status, code, default_message = (
        409,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request body",
    )


class JobStoreUnavailable(FerryError):
    status, code, default_message = 503, "job_store_unavailable", "the job store cannot be reached; retry later"


class ModelError(FerryError):
    status, code, default_message = 500, "model_error", "the model failed on this input"


class CircuitOpen(FerryError):
    status, code, default_message = 503, "circuit_open", "the model is failing; the circuit breaker is open"


class DeadlineExceeded(FerryError):
    status, code, default_message = 504, "deadline_exceeded", "the request's deadline passed before it was answered"


class ModelTimedOut(FerryError):
    status, code, default_message = 504, "deadline_exceeded", "the model call outlived every request's deadline"


class Overloaded(FerryError):
    status, code, default_message = 503, "overloaded", "too many requests in flight; retry later"


class BodyTimeout(FerryError):
    status, code, default_message = 408, "body_timeout", "the request body stopped arriving"


class HeadersTooLarge(FerryError):
    status, code, default_message = 431, "headers_too_large", "request line and headers are too large"


class TooManyConnections(FerryError):
    status, code, default_message = 503, "too_many_connections", "this worker has too many open connections; retry"


class TooManyStreams(FerryError):
    status, code, default_message = (
        503,
        "too_many_streams",
        "this server has as many open event streams as it allows; retry later or poll the job",
    )


class ModelNotReady(FerryError):
    status, code, default_message = 503, "model_not_ready", "the model is not loaded yet"


def from_validation(errors: list[dict[str, Any]], max_batch_size: int) -> FerryError:
    """A FerryError for pydantic/FastAPI validation errors, without echoing the input back."""
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors[:50]
    ]
    if any(d["type"] == "json_invalid" for d in details):
        return MalformedJson(details=details)
    if any(d["type"] == "too_long" and d["loc"][-1:] == ["records"] for d in details):
        # The route's own limit (e.g. the stream's), as the validator reports it.
        limit = next((e.get("ctx", {}).get("max_length") for e in errors if e.get("type") == "too_long"), None)
        return BatchTooLarge(f"at most {limit or max_batch_size} records per request", details=details)
    return InvalidInput(details=details)
