"""The OpenAPI document names what the app answers: every error code, every refusal of every route.

In process, with authentication on (so 401/403 are reachable): a corpus of bad requests per operation
(wrong method, no credential, a body that is not JSON, not JSON at all, too large, bad parameters,
unknown ids and names, a malformed X-Request-Timeout) must each be answered with a status the operation
documents, the stable code listed in that status' description, a body valid against its documented
schema, and the documented headers (Allow on 405 naming exactly the path's methods, X-Request-ID).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ferry import errors
from ferry.main import create_app
from ferry.settings import Settings

KEY = "contract-test-key-1"
MAX_BODY = 4096
Request = tuple[str, str, dict[str, str], bytes]  # method, path, headers, body
METHODS = ("get", "post", "put", "patch", "delete")


def error_classes() -> Iterator[type[errors.FerryError]]:
    pending = [errors.FerryError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        yield kind


@pytest.fixture(scope="module")
def answers(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Any]]:
    """The document and (operation, request, response) for the whole corpus."""
    tmp = tmp_path_factory.mktemp("contract")
    keys = [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "principal": "p", "scopes": ["predict", "jobs"]}]
    settings = Settings(
        model={"path": churn_model},
        api={"max_body_bytes": MAX_BODY},
        auth={"mode": "api_key", "api_keys": keys},
        jobs={"runners": 0, "sqlite_path": tmp / "jobs.sqlite3"},
    )
    app = create_app(settings)
    record = json.loads(churn_model.with_name("model.card.json").read_text())["example"]

    async def go() -> tuple[dict[str, Any], list[Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                spec = (await client.get("/openapi.json")).json()
                results = []
                for operation, request in corpus(spec, record):
                    method, path, headers, body = request
                    response = await client.request(method, path, headers=headers, content=body)
                    results.append((operation, request, response))
                return spec, results

    return asyncio.run(go())


def corpus(spec: dict[str, Any], record: dict[str, Any]) -> Iterator[tuple[tuple[str, str], Request]]:
    auth = {"authorization": f"Bearer {KEY}"}
    js = {**auth, "content-type": "application/json"}
    values = {"job_id": "0" * 32, "name": "churn", "version": "1.0.0"}
    bodies = {
        "/api/v1/predict": {"record": record},
        "/api/v1/predict/batch": {"records": [record]},
        "/api/v1/predict/stream": {"records": [record]},
        "/api/v1/jobs": {"records": [record]},
    }
    for template, item in spec["paths"].items():
        path = template.format(**values)
        other = next(m for m in METHODS if m not in item)
        yield (template, "405"), (other.upper(), path, auth, b"")
        for method, operation in item.items():
            key = (template, method)
            refused = [] if operation.get("security") == [] else [(method.upper(), path, {}, b"")]  # no credential
            if method == "post":
                body = json.dumps(bodies.get(template, {})).encode()
                refused += [
                    ("POST", path, {**auth, "content-type": "text/plain"}, body),
                    ("POST", path, js, b"x" * (MAX_BODY + 1)),
                ]
                if "requestBody" in operation:
                    refused += [("POST", path, js, b'{"record": '), ("POST", path, js, b"[]")]
            if "{job_id}" in template:
                refused.append((method.upper(), template.format(**{**values, "job_id": "not-an-id"}), auth, b""))
                refused.append((method.upper(), path, auth, b""))  # an unknown job
            if "{name}" in template:
                refused.append((method.upper(), template.format(**{**values, "name": "nosuch"}), js, b"{}"))
            if "{version}" in template:
                refused.append((method.upper(), template.format(**{**values, "version": "0"}), js, b"{}"))
            if any(p["name"] == "x-request-timeout" for p in operation.get("parameters", [])):
                body = json.dumps(bodies.get(template, {})).encode()
                refused.append(("POST", path, {**js, "x-request-timeout": "soon"}, body))
            for request in refused:
                yield key, request


def test_every_refusal_is_documented(answers: tuple[dict[str, Any], list[Any]]) -> None:
    spec, results = answers
    seen = set()
    for (template, method), (verb, path, _, _), response in results:
        status = str(response.status_code)
        where = f"{verb} {path} -> {status} {response.text[:200]}"
        assert 400 <= response.status_code < 500, where
        if method == "405":  # a method the path does not serve: Allow names exactly the documented ones
            documented_methods = {m.upper() for m in spec["paths"][template]}
            assert status == "405" and set(response.headers["allow"].split(", ")) == documented_methods, where
            method = next(iter(spec["paths"][template]))  # 405 is documented on every operation of the path
        documented = spec["paths"][template][method]["responses"]
        assert status in documented, where
        body = response.json()
        assert f"`{body['code']}`" in documented[status]["description"], where
        schema = documented[status]["content"]["application/json"]["schema"]
        # The schema's "#/components/..." references resolve against the components put beside it.
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(body)
        for name, header in documented[status].get("headers", {}).items():
            assert not header.get("required") or name.lower() in response.headers, (where, name)
        seen.add((template, status))
    # The corpus reached what it is meant to: each kind of refusal somewhere.
    statuses = {status for _, status in seen}
    assert {"400", "401", "404", "405", "413", "415", "422"} <= statuses, statuses


def test_every_error_code_is_documented(answers: tuple[dict[str, Any], list[Any]]) -> None:
    """A code added to the error hierarchy must be documented on the routes that answer it (or, for
    refusals made before any route, in the API description)."""
    spec, _ = answers
    text = spec["info"]["description"] + json.dumps(spec["paths"])
    # internal_error is a bug by definition (an exception nothing expected): never part of the contract.
    missing = {k.code for k in error_classes() if f"`{k.code}`" not in text} - {"internal_error"}
    assert not missing, missing


def test_v2_never_documents_fastapis_422(answers: tuple[dict[str, Any], list[Any]]) -> None:
    spec, _ = answers
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert ("X-Request-ID" in response["headers"] for response in operation["responses"].values()), path
            if path.startswith("/v2"):
                assert "422" not in operation["responses"], path
                errors_ = [r for s, r in operation["responses"].items() if s >= "400" and "content" in r]
                assert all("V2ErrorBody" in json.dumps(r) for r in errors_), path
    timeout = next(
        p for p in spec["paths"]["/api/v1/predict"]["post"]["parameters"] if p["name"] == "x-request-timeout"
    )
    assert timeout["schema"]["type"] == "number" and timeout["schema"]["exclusiveMinimum"] == 0
