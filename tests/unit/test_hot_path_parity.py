"""The lean hot path and the documented FastAPI routes answer the same bytes.

Two apps on one model, one with ``api.lean_path`` on (the default) and one with it off, get the same
corpus of good and bad requests in process; status, body, content type and the request-id echo must
be identical. Behaviour (not speed) of ``ferry.api.hot_path``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import struct
import zlib
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
        **oip_wire_corpus(record, card),
        # paths and methods the hot path leaves to FastAPI
        "GET predict": ("GET", "/api/v1/predict", {}, b""),
        "PUT infer": ("PUT", infer, js, b"{}"),
        "trailing slash": post("/api/v1/predict/", {"record": record}),
        "empty model name": post("/v2/models//infer", {"inputs": [tensor]}),
        "too deep v2 path": post(f"/v2/models/{name}/versions/x/y/infer", {"inputs": [tensor]}),
    }


def _binary(header: dict[str, Any], *blobs: bytes, length: int | None = None) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a binary tensor extension request."""
    raw = json.dumps(header).encode()
    size = len(raw) if length is None else length
    return {"inference-header-content-length": str(size), "content-type": "application/octet-stream"}, raw + b"".join(
        blobs
    )


def _bytes_tensor(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def oip_wire_corpus(record: dict[str, Any], card: dict[str, Any]) -> dict[str, Case]:
    """Binary tensors, compressed bodies and the input forms of Triton and MLServer clients."""
    from ferry_client.protocol import record_row

    features = card["features"]
    row = record_row(record, features)
    width = len(row)
    infer = f"/v2/models/{card['name']}/infer"
    js = {"content-type": "application/json"}
    fp64 = struct.pack(f"<{width}d", *row)
    tensor = {"name": "input-0", "shape": [1, width], "datatype": "FP64", "parameters": {"binary_data_size": 64}}
    outputs_binary = [{"name": "predict", "parameters": {"binary_data": True}}, {"name": "predict_proba"}]

    def named(value_of: Any = None, order: list[str] | None = None, shape: Any = None) -> list[dict[str, Any]]:
        inputs = []
        for feature in features:
            value = record[feature["name"]]
            datatype = {"categorical": "BYTES", "boolean": "BOOL", "integer": "INT64"}.get(feature["type"], "FP64")
            tensor = {"name": feature["name"], "shape": shape or [2, 1], "datatype": datatype, "data": [value, value]}
            if datatype == "BYTES":
                tensor["parameters"] = {"content_type": "str"}
            inputs.append(value_of(tensor) if value_of else tensor)
        by_name = {t["name"]: t for t in inputs}
        return [by_name[n] for n in order] if order else inputs

    def post(body: Any, headers: dict[str, str] | None = None, path: str = infer) -> Case:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return ("POST", path, {**js, **(headers or {})}, raw)

    def binary(header: dict[str, Any], *blobs: bytes, length: int | None = None) -> Case:
        headers, body = _binary(header, *blobs, length=length)
        return ("POST", infer, headers, body)

    good = {"inputs": [{**tensor, "parameters": None, "data": row}]}
    binary_headers, fp64_body = _binary({"inputs": [tensor]}, fp64)
    bomb = gzip.compress(b" " * (5 * 1024 * 1024))  # 5 MiB of spaces, 5 kB compressed
    categorical = next(f for f in features if f["type"] == "categorical")["name"]
    numeric = next(f for f in features if f["type"] == "number")["name"]
    reversed_names = [f["name"] for f in reversed(features)]
    binary_named = []
    blobs = []
    for feature in features:
        value = record[feature["name"]]
        if feature["type"] == "categorical":
            blob, datatype = _bytes_tensor(value), "BYTES"
        elif feature["type"] == "boolean":
            blob, datatype = bytes([int(value)]), "BOOL"
        else:
            blob, datatype = struct.pack("<d", float(value)), "FP64"
        binary_named.append(
            {"name": feature["name"], "shape": [1], "datatype": datatype, "parameters": {"binary_data_size": len(blob)}}
        )
        blobs.append(blob)
    return {
        # the binary tensor extension
        "binary in": binary({"inputs": [tensor]}, fp64),
        "binary in, binary predict out": binary({"inputs": [tensor], "outputs": outputs_binary}, fp64),
        "binary in, all out binary": binary({"inputs": [tensor], "parameters": {"binary_data_output": True}}, fp64),
        "json in, binary out, one opted out": post(
            {
                "inputs": good["inputs"],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "predict"}, {"name": "predict_proba", "parameters": {"binary_data": False}}],
            }
        ),
        "binary named inputs with BYTES": binary({"inputs": binary_named}, *blobs),
        "binary header, json content type": ("POST", infer, {**_binary({"inputs": [tensor]})[0], **js}, fp64_body),
        "octet-stream JSON": post(good, {"content-type": "application/octet-stream"}),
        "octet-stream not JSON": post(b"\x00\x01", {"content-type": "application/octet-stream"}),
        "octet-stream on REST": post(
            {"record": record}, {"content-type": "application/octet-stream"}, "/api/v1/predict"
        ),
        "header longer than body": binary({"inputs": [tensor]}, fp64, length=10_000),
        "header not a number": ("POST", infer, {"inference-header-content-length": "12a"}, b"{}"),
        "header cuts the JSON": binary({"inputs": [tensor]}, fp64, length=10),
        "trailing bytes": binary({"inputs": [tensor]}, fp64, b"\x00"),
        "missing bytes": binary({"inputs": [tensor]}, fp64[:-8]),
        "size against shape": binary({"inputs": [{**tensor, "parameters": {"binary_data_size": 56}}]}, fp64[:56]),
        "negative binary size": binary({"inputs": [{**tensor, "parameters": {"binary_data_size": -1}}]}),
        "data and binary size": binary({"inputs": [{**tensor, "data": row}]}, fp64),
        "BYTES cut off": binary(
            {
                "inputs": [
                    {"name": categorical, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
                ]
            },
            _bytes_tensor("abcdef")[:6],
        ),
        "BOOL byte 2": binary(
            {"inputs": [{"name": "b", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}]},
            b"\x02",
        ),
        "too many binary values": binary(
            {"inputs": [{**tensor, "shape": [2000, width], "parameters": {"binary_data_size": 2000 * width * 8}}]},
            fp64 * 2000,
        ),
        # compressed bodies
        "gzip predict": post(
            gzip.compress(json.dumps({"record": record}).encode()), {"content-encoding": "gzip"}, "/api/v1/predict"
        ),
        "gzip infer": post(gzip.compress(json.dumps(good).encode()), {"content-encoding": "gzip"}),
        "deflate infer": post(zlib.compress(json.dumps(good).encode()), {"content-encoding": "deflate"}),
        "raw deflate infer": post(_raw_deflate(json.dumps(good).encode()), {"content-encoding": "deflate"}),
        "gzip binary": ("POST", infer, {**binary_headers, "content-encoding": "gzip"}, gzip.compress(fp64_body)),
        "gzip bomb": post(bomb, {"content-encoding": "gzip"}),
        "corrupt gzip": post(
            gzip.compress(json.dumps(good).encode())[:-12] + b"garbage!!!!!", {"content-encoding": "gzip"}
        ),
        "truncated gzip": post(gzip.compress(json.dumps(good).encode())[:-8], {"content-encoding": "gzip"}),
        "unknown encoding": post(json.dumps(good).encode(), {"content-encoding": "br"}),
        # inputs as MLServer and Triton clients send them
        "one row, 1-D shape": post({"inputs": [{**good["inputs"][0], "shape": [width]}]}),
        "named inputs, pandas codec": post({"parameters": {"content_type": "pd"}, "inputs": named()}),
        "named inputs, any order, [n] shapes": post({"inputs": named(order=reversed_names, shape=[2])}),
        "named inputs, all outputs": post(
            {
                "parameters": {"content_type": "pd"},
                "inputs": named(),
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            }
        ),
        "numpy codec": post(
            {
                "parameters": {"content_type": "np"},
                "inputs": [{**good["inputs"][0], "parameters": {"content_type": "np"}}],
            }
        ),
        "unknown input name": post({"inputs": [*named(), {**named()[0], "name": "colour"}]}),
        "missing input": post({"inputs": named()[1:]}),
        "duplicate input": post({"inputs": [*named(), named()[0]]}),
        "row count mismatch": post(
            {"inputs": [*named()[:-1], {**named()[-1], "shape": [1, 1], "data": named()[-1]["data"][:1]}]}
        ),
        "BYTES for a number": post(
            {"inputs": named(lambda t: {**t, "datatype": "BYTES", "data": ["1", "2"]} if t["name"] == numeric else t)}
        ),
        "unknown category": post(
            {"inputs": named(lambda t: {**t, "data": ["weekly", "weekly"]} if t["name"] == categorical else t)}
        ),
        "named shape [n, 2]": post({"inputs": named(shape=[1, 2])}),
        "unknown content type": post({"parameters": {"content_type": "hg"}, "inputs": good["inputs"]}),
        "str content type on FP64": post({"inputs": [{**good["inputs"][0], "parameters": {"content_type": "str"}}]}),
        "classification asked": post(
            {"inputs": good["inputs"], "outputs": [{"name": "predict", "parameters": {"classification": 2}}]}
        ),
    }


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


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


def _answer(response: httpx.Response) -> tuple[Any, ...]:
    h = response.headers
    return (
        response.status_code,
        response.content,
        h.get("content-type"),
        h.get("x-request-id"),
        h.get("www-authenticate"),
        h.get("retry-after"),
        h.get("inference-header-content-length"),
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
    good = [k for k, v in oip_wire_corpus(record, card).items() if v and statuses[k] == 200]
    assert sorted(good) == sorted(
        [
            "binary in",
            "binary in, binary predict out",
            "binary in, all out binary",
            "json in, binary out, one opted out",
            "binary named inputs with BYTES",
            "binary header, json content type",
            "octet-stream JSON",
            "gzip predict",
            "gzip infer",
            "deflate infer",
            "raw deflate infer",
            "gzip binary",
            "one row, 1-D shape",
            "named inputs, pandas codec",
            "named inputs, any order, [n] shapes",
            "named inputs, all outputs",
            "numpy codec",
        ]
    )
    assert statuses["gzip bomb"] == statuses["too many binary values"] == 413
    assert statuses["unknown encoding"] == statuses["octet-stream on REST"] == 415
    refused = {k for k, v in statuses.items() if v == 400}
    assert {
        "header longer than body",
        "trailing bytes",
        "missing bytes",
        "size against shape",
        "corrupt gzip",
    } <= refused
    assert {
        "unknown input name",
        "missing input",
        "duplicate input",
        "row count mismatch",
        "BYTES for a number",
    } <= refused


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
