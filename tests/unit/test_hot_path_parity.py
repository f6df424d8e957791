"""The lean hot path and the documented FastAPI routes answer the same bytes.

Two apps on one model, one with ``api.lean_path`` on (the default) and one with it off, get the same
corpus of good and bad requests in process; status, body, content type and the request-id echo must
be identical. Behaviour (not speed) of ``ferry.api.hot_path``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.main import create_app
from ferry.settings import Settings

MAX_BATCH = 5
KEY = "parity-test-key-1"
JOBS_ONLY_KEY = "parity-test-key-2"

Case = tuple[str, str, dict[str, str], bytes]  # method, path, headers, body


def corpus(record: dict[str, Any], card: dict[str, Any]) -> dict[str, Case]:
    """name -> request. Every request names its X-Request-ID, so the bodies can be compared whole."""
    from ferry_client.protocol import record_row, v2_tensor

    row = record_row(record, card["features"])
    width = len(row)
    js = {"content-type": "application/json"}
    tensor = v2_tensor([row], name="input-0")

    def post(path: str, body: Any, headers: dict[str, str] | None = None) -> Case:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return ("POST", path, {**js, **(headers or {})}, raw)

    name = card["name"]
    infer = f"/v2/models/{name}/infer"
    return {
        # good
        "predict": post("/api/v1/predict", {"record": record}),
        "batch": post("/api/v1/predict/batch", {"records": [record, {**record, "tenure_months": 2}]}),
        "batch at the limit": post("/api/v1/predict/batch", {"records": [record] * MAX_BATCH}),
        "predict, vendor json type": post(
            "/api/v1/predict", {"record": record}, {"content-type": "application/x+json"}
        ),
        "predict, no content type": ("POST", "/api/v1/predict", {}, json.dumps({"record": record}).encode()),
        "predict, integral float": post("/api/v1/predict", {"record": {**record, "tenure_months": 12.0}}),
        "predict, timeout header": post("/api/v1/predict", {"record": record}, {"x-request-timeout": "2.5"}),
        "infer": post(infer, {"inputs": [tensor]}),
        "infer with id and outputs": post(infer, {"id": "q1", "inputs": [tensor], "outputs": [{"name": "predict"}]}),
        "infer, version": post(f"/v2/models/{name}/versions/{card['version']}/infer", {"inputs": [tensor]}),
        "infer, timeout parameter": post(infer, {"inputs": [tensor], "parameters": {"timeout": 2_000_000}}),
        "infer, 2 rows": post(infer, {"inputs": [v2_tensor([row, row], name="input-0")]}),
        "infer, extra fields ignored": post(infer, {"inputs": [{**tensor, "x": 1}], "y": 2}),
        # bad JSON and bodies
        "malformed json": post("/api/v1/predict", b'{"record": '),
        "malformed json v2": post(infer, b"{nope}"),
        "NaN literal": post("/api/v1/predict", b'{"record": {"tenure_months": NaN}}'),
        "empty body": post("/api/v1/predict", b""),
        "empty body v2": post(infer, b""),
        "null body": post("/api/v1/predict", b"null"),
        "array body": post("/api/v1/predict/batch", b"[]"),
        "number body v2": post(infer, b"1"),
        "deep nesting": post("/api/v1/predict", b"[" * 2000 + b"]" * 2000),
        "too many values": post("/api/v1/predict/batch", ("[" + "0," * 3000 + "0]").encode()),
        "too large body": post("/api/v1/predict", b" " * 2048, {"content-length": str(10**9)}),
        "wrong content type": post("/api/v1/predict", {"record": record}, {"content-type": "text/plain"}),
        # wrong fields and types
        "wrong type": post("/api/v1/predict", {"record": {**record, "tenure_months": "12"}}),
        "bool for int": post("/api/v1/predict", {"record": {**record, "tenure_months": True}}),
        "out of range": post("/api/v1/predict", {"record": {**record, "tenure_months": -5}}),
        "bad category": post("/api/v1/predict", {"record": {**record, "contract_type": "weekly"}}),
        "missing field": post("/api/v1/predict", {"record": {k: v for k, v in record.items() if k != "tenure_months"}}),
        "missing record": post("/api/v1/predict", {}),
        "extra field": post("/api/v1/predict", {"record": {**record, "colour": "red"}}),
        "extra top-level field": post("/api/v1/predict", {"record": record, "x": 1}),
        "too many rows": post("/api/v1/predict/batch", {"records": [record] * (MAX_BATCH + 1)}),
        "empty batch": post("/api/v1/predict/batch", {"records": []}),
        "records not a list": post("/api/v1/predict/batch", {"records": record}),
        # Open Inference Protocol refusals
        "wrong model name": post("/v2/models/nope/infer", {"inputs": [tensor]}),
        "wrong model version": post(f"/v2/models/{name}/versions/9.9/infer", {"inputs": [tensor]}),
        "wrong name and bad body": post("/v2/models/nope/infer", {"inputs": []}),
        "no inputs": post(infer, {"inputs": []}),
        "two inputs": post(infer, {"inputs": [tensor, tensor]}),
        "bad datatype": post(infer, {"inputs": [{**tensor, "datatype": "BYTES"}]}),
        "bad shape": post(infer, {"inputs": [{**tensor, "shape": [width]}]}),
        "wrong width": post(infer, {"inputs": [{**tensor, "shape": [1, width - 1], "data": row[:-1]}]}),
        "short data": post(infer, {"inputs": [{**tensor, "data": row[:-1]}]}),
        "strings as data": post(infer, {"inputs": [{**tensor, "data": ["a"] * width}]}),
        "value outside the card": post(infer, {"inputs": [{**tensor, "data": [-1.0] * width}]}),
        "too many tensor rows": post(infer, {"inputs": [v2_tensor([row] * (MAX_BATCH + 1), name="input-0")]}),
        "unknown output": post(infer, {"inputs": [tensor], "outputs": [{"name": "embedding"}]}),
        "bad timeout parameter": post(infer, {"inputs": [tensor], "parameters": {"timeout": -1}}),
        "tiny timeout parameter": post(infer, {"inputs": [tensor], "parameters": {"timeout": 1e-9}}),
        # deadlines
        "bad timeout header": post("/api/v1/predict", {"record": record}, {"x-request-timeout": "soon"}),
        "zero timeout header": post("/api/v1/predict", {"record": record}, {"x-request-timeout": "0"}),
        "nan timeout header v2": post(infer, {"inputs": [tensor]}, {"x-request-timeout": "nan"}),
        "empty timeout header": post("/api/v1/predict", {"record": record}, {"x-request-timeout": ""}),
        "bad timeout header and bad body": post("/api/v1/predict", {"record": 1}, {"x-request-timeout": "x"}),
        "malformed json and bad timeout": post("/api/v1/predict", b"{", {"x-request-timeout": "x"}),
        "expired deadline": post("/api/v1/predict", {"record": record}, {"x-request-timeout": "0.000000001"}),
        # paths and methods the hot path leaves to FastAPI
        "GET predict": ("GET", "/api/v1/predict", {}, b""),
        "PUT infer": ("PUT", infer, js, b"{}"),
        "trailing slash": post("/api/v1/predict/", {"record": record}),
        "empty model name": post("/v2/models//infer", {"inputs": [tensor]}),
        "too deep v2 path": post(f"/v2/models/{name}/versions/x/y/infer", {"inputs": [tensor]}),
    }


def _settings(model: Path, tmp: Path, lean: bool, **extra: Any) -> Settings:
    return Settings(
        model={"path": model},
        api={"max_batch_size": MAX_BATCH, "lean_path": lean},
        jobs={"runners": 0, "sqlite_path": tmp / f"jobs-{lean}.sqlite3"},
        **extra,
    )


@asynccontextmanager
async def _clients(settings: list[Settings], load: bool = True) -> AsyncIterator[list[httpx.AsyncClient]]:
    apps = [create_app(s) for s in settings]
    for app in apps:
        if load:
            await app.state.core.start()
    try:
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://t") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://t") as b,
        ):
            yield [a, b]
    finally:
        for app in apps:
            if load:
                await app.state.core.stop()


def _answer(response: httpx.Response) -> tuple[int, bytes, str | None, str | None, str | None, str | None]:
    h = response.headers
    return (
        response.status_code,
        response.content,
        h.get("content-type"),
        h.get("x-request-id"),
        h.get("www-authenticate"),
        h.get("retry-after"),
    )


async def _compare(clients: list[httpx.AsyncClient], cases: dict[str, Case]) -> dict[str, int]:
    statuses = {}
    for number, (label, (method, path, headers, body)) in enumerate(cases.items()):
        answers = []
        for client in clients:
            request_headers = {"x-request-id": f"parity-{number}", **headers}
            answers.append(_answer(await client.request(method, path, headers=request_headers, content=body)))
        lean, documented = answers
        assert lean == documented, f"{label}: lean path and FastAPI route differ"
        statuses[label] = lean[0]
    return statuses


def test_lean_and_documented_routes_answer_the_same_bytes(
    churn_model: Path, record: dict[str, Any], card: dict[str, Any], tmp_path: Path
) -> None:
    async def go() -> dict[str, int]:
        async with _clients([_settings(churn_model, tmp_path, lean) for lean in (True, False)]) as clients:
            return await _compare(clients, corpus(record, card))

    statuses = asyncio.run(go())
    # The corpus covers what it claims: answers, refusals of every kind, and FastAPI's own statuses.
    assert statuses["predict"] == statuses["infer"] == statuses["infer, version"] == 200
    assert {statuses[k] for k in ("malformed json", "empty body", "wrong type", "too many rows")} == {400, 422}
    assert statuses["malformed json v2"] == statuses["no inputs"] == 400
    assert statuses["wrong model name"] == 404
    assert statuses["too large body"] == statuses["too many values"] == 413
    assert statuses["wrong content type"] == 415
    assert statuses["GET predict"] == statuses["PUT infer"] == 405
    assert statuses["expired deadline"] == 504


def test_refusals_before_the_model_loaded_are_the_same(
    churn_model: Path, record: dict[str, Any], tmp_path: Path
) -> None:
    cases = {
        "predict, not ready": ("POST", "/api/v1/predict", {}, json.dumps({"record": record}).encode()),
        "bad body, not ready": ("POST", "/api/v1/predict", {}, b"{}"),
    }

    async def go() -> dict[str, int]:
        settings = [_settings(churn_model, tmp_path, lean) for lean in (True, False)]
        async with _clients(settings, load=False) as clients:
            return await _compare(clients, cases)

    assert asyncio.run(go()) == {"predict, not ready": 503, "bad body, not ready": 422}


@pytest.mark.parametrize("mode", ["api_key"])
def test_authentication_is_enforced_the_same_way(
    mode: str, churn_model: Path, record: dict[str, Any], card: dict[str, Any], tmp_path: Path
) -> None:
    keys = [
        {"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "principal": "alice", "scopes": ["predict"]},
        {"sha256": hashlib.sha256(JOBS_ONLY_KEY.encode()).hexdigest(), "principal": "bob", "scopes": ["jobs"]},
    ]
    body = json.dumps({"record": record}).encode()
    infer = f"/v2/models/{card['name']}/infer"
    cases: dict[str, Case] = {
        "no credential": ("POST", "/api/v1/predict", {}, body),
        "no credential v2": ("POST", infer, {}, b"{}"),
        "wrong key": ("POST", "/api/v1/predict", {"authorization": "Bearer nope"}, body),
        "not bearer": ("POST", "/api/v1/predict", {"authorization": f"Basic {KEY}"}, body),
        "missing scope": ("POST", "/api/v1/predict/batch", {"x-api-key": JOBS_ONLY_KEY}, body),
        "good key": ("POST", "/api/v1/predict", {"authorization": f"Bearer {KEY}"}, body),
        "good key, bad body": ("POST", "/api/v1/predict", {"x-api-key": KEY}, b"{"),
        "no credential, too large": ("POST", "/api/v1/predict", {"content-length": str(10**9)}, b"{}"),
    }

    async def go() -> dict[str, int]:
        auth = {"mode": mode, "api_keys": keys}
        settings = [_settings(churn_model, tmp_path, lean, auth=auth) for lean in (True, False)]
        async with _clients(settings) as clients:
            return await _compare(clients, cases)

    statuses = asyncio.run(go())
    assert statuses == {
        "no credential": 401,
        "no credential v2": 401,
        "wrong key": 401,
        "not bearer": 401,
        "missing scope": 403,
        "good key": 200,
        "good key, bad body": 400,
        "no credential, too large": 413,
    }


def test_the_setting_switches_the_path(churn_model: Path, tmp_path: Path) -> None:
    """The comparison above compares two paths: the FastAPI route really serves when the setting is off."""
    from ferry.api.middleware import RequestMiddleware

    for lean in (True, False):
        app = create_app(_settings(churn_model, tmp_path, lean))
        stack = app.build_middleware_stack()
        while not isinstance(stack, RequestMiddleware):
            stack = stack.app  # type: ignore[attr-defined]
        assert (stack.hot_path is not None) is lean
