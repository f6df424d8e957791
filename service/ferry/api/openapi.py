"""The OpenAPI contract: every route's documented responses, built from the error hierarchy.

Routes declare which ``FerryError``s they can end in (``errors(...)``); the documented status, body
schema, description (the stable codes) and headers all come from those classes, so the documentation
cannot name a status or code the service does not answer, nor miss one a route raises. Besides what
each route raises itself, every operation can get:

- 405 ``method_not_allowed`` with ``Allow`` (a method the path does not serve);
- 401 ``unauthorized``, 403 ``forbidden`` and 503 ``auth_unavailable`` on every path that needs a
  credential (documented always: authentication is a deployment setting, ``auth.mode``);
- for a POST, the body guards of ``RequestMiddleware``: 413 ``payload_too_large`` and 415
  ``unsupported_media_type`` (judged from the headers alone, before any route runs).

Under ``/v2`` the body is the Open Inference Protocol's own (``V2ErrorBody``) and 422 is answered
as 400, as ``ferry.api.errors.render`` does. Refusals made before a request is parsed at all
(408 ``body_timeout``, 431 ``headers_too_large``, 503 ``too_many_connections``, ``ferry.api.connections``)
have no route and are documented once, in the API description.

``complete`` finishes the generated document: FastAPI's own 422 ``HTTPValidationError`` (never
answered: validation errors are rendered as ``ErrorBody``) is dropped, ``X-Request-ID`` is declared
on every response, ``X-Request-Timeout`` is typed as the number it is, and the Server-Sent Events
payload schemas are registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ferry.api.auth import scope_for
from ferry.api.schemas import (
    ErrorBody,
    Job,
    JobStreamShutdown,
    StreamChunk,
    StreamFailed,
    StreamShutdown,
    StreamSummary,
    V2ErrorBody,
)
from ferry.errors import (
    AuthUnavailable,
    BadRequest,
    DecompressedTooLarge,
    FerryError,
    Forbidden,
    InvalidInput,
    MalformedContentEncoding,
    MalformedJson,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
)

Responses = dict[int | str, dict[str, Any]]

REQUEST_ID_HEADER = "X-Request-ID"
TIMEOUT_HEADER = "x-request-timeout"
COMPONENTS = "#/components/schemas/"

# Errors of reading a JSON request body (FastAPI's body parsing, ``json_body``, the middleware guards).
JSON_BODY: tuple[type[FerryError], ...] = (MalformedJson, BadRequest, PayloadTooLarge, UnsupportedMediaType)
# What RequestMiddleware answers for any POST before a route runs, body or not (gzip/deflate bodies are
# inflated there for every POST route).
POST_GUARDS: tuple[type[FerryError], ...] = (
    PayloadTooLarge,
    UnsupportedMediaType,
    MalformedContentEncoding,
    DecompressedTooLarge,
    UnsupportedContentEncoding,
)
AUTH: tuple[type[FerryError], ...] = (Unauthorized, Forbidden, AuthUnavailable)

_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer realm="ferry"` (with `error=` when a credential was refused).',
            "required": True,
            "schema": {"type": "string"},
        }
    },
    403: {
        "WWW-Authenticate": {
            "description": '`Bearer` challenge with `error="insufficient_scope"` and the scope needed.',
            "schema": {"type": "string"},
        }
    },
    405: {
        "Allow": {
            "description": "The methods this path serves.",
            "required": True,
            "schema": {"type": "string", "examples": ["GET, DELETE"]},
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (sent with the codes that name a wait).",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _status(kind: type[FerryError], protocol: bool) -> int:
    # The Open Inference Protocol reports invalid requests as 400 (ferry.api.errors.render).
    return 400 if protocol and kind.status == 422 else kind.status


def errors(
    *kinds: type[FerryError], protocol: bool = False, descriptions: Mapping[int, str] | None = None
) -> Responses:
    """The ``responses=`` map of the given errors: one entry per status, its codes in the description,
    its body schema (``ErrorBody``, or ``V2ErrorBody`` with ``protocol``) and its headers."""
    by_status: dict[int, list[type[FerryError]]] = {}
    for kind in kinds:
        codes = by_status.setdefault(_status(kind, protocol), [])
        if all(known.code != kind.code for known in codes):
            codes.append(kind)
    responses: Responses = {}
    for status in sorted(by_status):
        lines = [f"- `{kind.code}`: {kind.default_message}" for kind in by_status[status]]
        intro = (descriptions or {}).get(status)
        body = V2ErrorBody if protocol else ErrorBody
        response: dict[str, Any] = {
            "description": "\n".join([f"{intro}\n" if intro else "Error codes:\n", *lines]),
            # Named explicitly (not ``model``): FastAPI would label it with the route's media type, which
            # is text/event-stream on the streaming routes; the errors are JSON everywhere.
            "content": {"application/json": {"schema": {"$ref": f"{COMPONENTS}{body.__name__}"}}},
        }
        headers = dict(_HEADERS.get(status, {}))
        if status in (429, 503):
            headers.update(RETRY_AFTER)
        if headers:
            response["headers"] = headers
        responses[status] = response
    return responses


def route_errors(
    path: str, method: str, *kinds: type[FerryError], protocol: bool | None = None, **kwargs: Any
) -> Responses:
    """``errors`` of a route plus what every route with that path and method can answer (405, the
    authentication errors where the path needs a credential, the POST guards)."""
    common: list[type[FerryError]] = [MethodNotAllowed]
    if scope_for(path) is not None:
        common.extend(AUTH)
    if method.upper() == "POST":
        common.extend(POST_GUARDS)
    if protocol is None:
        protocol = path == "/v2" or path.startswith("/v2/")
    return errors(*common, *kinds, protocol=protocol, **kwargs)


def merge(*maps: Responses) -> Responses:
    """Response maps merged; a later entry's keys win (e.g. a 200 description over a default)."""
    merged: Responses = {}
    for responses in maps:
        for status, response in responses.items():
            merged[status] = {**merged.get(status, {}), **response}
    return merged


VALIDATION = (InvalidInput,)


# -- Server-Sent Events ----------------------------------------------------------------------------
SSE_MEDIA_TYPE = "text/event-stream"
STREAM_EVENTS: dict[str, type[BaseModel]] = {
    "chunk": StreamChunk,
    "summary": StreamSummary,
    "failed": StreamFailed,
    "shutdown": StreamShutdown,
}
JOB_EVENTS: dict[str, type[BaseModel]] = {"status": Job, "shutdown": JobStreamShutdown}
# Components the document references by name without FastAPI seeing them as a route's model.
_COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    ErrorBody,
    V2ErrorBody,
    *STREAM_EVENTS.values(),
    *JOB_EVENTS.values(),
)


def event_stream(events: Mapping[str, type[BaseModel]], description: str, example: str | None = None) -> Responses:
    """A 200 ``text/event-stream`` answer whose ``itemSchema`` describes one event: its name, its id,
    and ``data`` holding the JSON of that event's payload model (``contentSchema``).

    ``itemSchema`` is Open API 3.2's field for the items of a sequential media type, used here in a 3.1
    document: Schemathesis validates every event against it, and 3.1 tools that do not know it
    (openapi-python-client) hand the body over as it came instead of failing to parse it as JSON. There
    is deliberately no ``schema``: a 3.1 reader would take it for the whole body's JSON."""
    variants = [
        {
            "type": "object",
            "title": f"{name} event",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "id": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": f"{COMPONENTS}{model.__name__}"},
                },
            },
        }
        for name, model in events.items()
    ]
    media: dict[str, Any] = {"itemSchema": {"oneOf": variants}}
    if example is not None:
        media["example"] = example
    return {200: {"description": description, "content": {SSE_MEDIA_TYPE: media}}}


# -- the finished document -------------------------------------------------------------------------
def complete(schema: dict[str, Any], timeout_max_s: float) -> None:
    """Finish FastAPI's document in place (see the module docstring)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, definitions = models_json_schema(
        [(model, "serialization") for model in _COMPONENT_MODELS], ref_template=COMPONENTS + "{model}"
    )
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)
    for operation in _operations(schema):
        responses = operation.get("responses", {})
        for status in [s for s, r in responses.items() if _is_fastapi_validation(r)]:
            del responses[status]
        for response in responses.values():
            stream = response.get("content", {}).get(SSE_MEDIA_TYPE, {})
            if "itemSchema" in stream:
                stream.pop("schema", None)  # FastAPI's default for a non-JSON response class (see event_stream)
            response.setdefault("headers", {})[REQUEST_ID_HEADER] = {
                "description": "The request's id: the caller's X-Request-ID when it is safe to echo "
                "(1-128 of `A-Za-z0-9._:/+=-`), else a fresh one. Also in every log line about the request.",
                "required": True,
                "schema": {"type": "string"},
            }
        for parameter in operation.get("parameters", []):
            # An optional header is absent, never JSON null: FastAPI's `anyOf [X, null]` for `X | None`
            # would tell clients and fuzzers to send the text "null".
            variants = parameter.get("schema", {}).get("anyOf", [])
            if parameter.get("in") == "header" and {"type": "null"} in variants:
                rest = [variant for variant in variants if variant != {"type": "null"}]
                extra = {k: v for k, v in parameter["schema"].items() if k != "anyOf"}
                parameter["schema"] = {**rest[0], **extra} if len(rest) == 1 else {**extra, "anyOf": rest}
            if parameter.get("in") == "header" and parameter["name"] == TIMEOUT_HEADER:
                parameter["schema"] = {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": f"Seconds; values above {timeout_max_s:g} (deadline.max_s) are clamped to it.",
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _operations(schema: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for item in schema.get("paths", {}).values():
        yield from item.values()


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    content = response.get("content", {}).get("application/json", {})
    return bool(content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"))
