"""The HTTP API of the real service: answers, and a documented 4xx for every kind of bad input."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from support.server import Server


def post(server: Server, path: str, body: object, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=10, **kw)


def test_probes(server: Server) -> None:
    assert httpx.get(server.url + "/livez").json() == {"status": "ok", "model": None, "version": None, "reason": None}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_predict_one(server: Server, record: dict, card: dict) -> None:
    r = post(server, "/api/v1/predict", {"record": record}, headers={"X-Request-ID": "req-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"] in card["classes"]
    assert set(body["probabilities"]) == set(card["classes"])
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-9
    assert body["model"] == {"name": "churn", "version": card["version"]}
    assert body["request_id"] == "req-123"
    assert r.headers["x-request-id"] == "req-123"


def test_batch_keeps_order(server: Server, record: dict) -> None:
    records = [dict(record, tenure_months=t, contract_type=c) for t in (0, 70) for c in ("month_to_month", "two_year")]
    batch = post(server, "/api/v1/predict/batch", {"records": records}).json()["predictions"]
    singles = [post(server, "/api/v1/predict", {"record": r}).json() for r in records]
    assert [b["probabilities"] for b in batch] == [s["probabilities"] for s in singles]
    assert len({b["probabilities"]["churn"] for b in batch}) == 4  # distinct inputs, distinct answers


def test_models_and_sections(server: Server, card: dict) -> None:
    listing = httpx.get(server.url + "/api/v1/models").json()["models"]
    assert listing == [{"name": "churn", "version": card["version"], "status": "ready", "sha256": card["sha256"]}]
    full = httpx.get(server.url + "/api/v1/models/churn").json()
    assert full["performance"] == card["performance"]
    assert full["args"]["seed"] == card["args"]["seed"]
    assert full["sha256"] == card["sha256"]
    perf = httpx.get(server.url + "/api/v1/models/churn", params={"section": "performance"}).json()
    assert perf == {"name": "churn", "version": card["version"], "performance": card["performance"]}
    assert httpx.get(server.url + "/api/v1/models/churn", params={"section": "nope"}).status_code == 422
    missing = httpx.get(server.url + "/api/v1/models/other")
    assert missing.status_code == 404
    assert missing.json()["code"] == "model_not_found"


def test_openapi_examples_work_unchanged(server: Server) -> None:
    """Every request body example in /openapi.json is accepted as it is ("Try it out" works)."""
    spec = httpx.get(server.url + "/openapi.json").json()
    tried = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not content:
                continue
            ref = content["schema"]["$ref"].split("/")[-1]
            examples = spec["components"]["schemas"][ref].get("examples")
            assert examples, f"{method.upper()} {path} has no request example"
            url = path.replace("{name}", "churn").replace("{version}", "1.0.0")
            for example in examples:
                r = httpx.request(method, server.url + url, json=example)
                expected = op["responses"].keys() & {"200", "202"}
                assert str(r.status_code) in expected, (path, r.status_code, r.text)
                tried += 1
    assert tried >= 6  # predict, batch, stream, jobs, and the two OIP infer routes
    assert httpx.get(server.url + "/docs").status_code == 200


# -- bad input: (what, body or raw bytes, headers, expected status, expected code) ----------------
def _bad_inputs(record: dict) -> list[tuple[str, object, dict, int, str]]:
    def one(**change: object) -> dict:
        return {"record": {**record, **change}}

    without = {k: v for k, v in record.items() if k != "tenure_months"}
    return [
        ("wrong type", one(tenure_months="12"), {}, 422, "validation_error"),
        ("float for integer", one(tenure_months=1.5), {}, 422, "validation_error"),
        ("bool for number", one(monthly_charges=True), {}, 422, "validation_error"),
        ("out of range", one(tenure_months=-1), {}, 422, "validation_error"),
        ("above range", one(monthly_charges=1e9), {}, 422, "validation_error"),
        ("unknown category", one(contract_type="weekly"), {}, 422, "validation_error"),
        ("missing field", {"record": without}, {}, 422, "validation_error"),
        ("extra field", one(favourite_colour="blue"), {}, 422, "validation_error"),
        ("extra top-level field", {"record": record, "debug": True}, {}, 422, "validation_error"),
        ("no body", b"", {}, 422, "validation_error"),
        ("record is a list", {"record": [1, 2, 3]}, {}, 422, "validation_error"),
        ("null record", {"record": None}, {}, 422, "validation_error"),
        ("NaN", b'{"record": {"monthly_charges": NaN}}', {}, 400, "malformed_json"),
        ("Infinity", b'{"record": {"monthly_charges": Infinity}}', {}, 400, "malformed_json"),
        ("truncated JSON", b'{"record": {', {}, 400, "malformed_json"),
        # Deeper than orjson's 1024 levels; with 100,000 levels the body would hold more values than the
        # route's records can, and be refused before parsing (413, test_hostile_bodies.py).
        ("deep nesting", b"[" * 2_000 + b"]" * 2_000, {}, 400, "malformed_json"),
        ("invalid UTF-8", b'{"record": "\xff\xfe"}', {}, 400, "malformed_json"),
        (
            "text/plain",
            json.dumps({"record": record}).encode(),
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (
            "form encoded",
            b"record=1",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
    ]


@pytest.fixture(scope="module")
def bad_inputs(record: dict):
    return _bad_inputs(record)


def test_bad_single_inputs_get_documented_4xx(server: Server, bad_inputs) -> None:
    for what, body, headers, status, code in bad_inputs:
        if isinstance(body, bytes):
            r = httpx.post(
                server.url + "/api/v1/predict", content=body, headers={"content-type": "application/json", **headers}
            )
        else:
            r = httpx.post(server.url + "/api/v1/predict", json=body, headers=headers)
        assert r.status_code == status, (what, r.status_code, r.text[:300])
        err = r.json()
        assert err["code"] == code, (what, err)
        assert err["message"] and err["request_id"] == r.headers["x-request-id"], what
        assert "Traceback" not in r.text


def test_validation_details_name_the_field(server: Server, record: dict) -> None:
    r = post(server, "/api/v1/predict", {"record": {**record, "contract_type": "weekly"}})
    assert r.json()["details"][0]["loc"] == ["body", "record", "contract_type"]
    assert "weekly" not in json.dumps(r.json()["details"])  # input is not echoed back


def test_batch_limits(server: Server, record: dict) -> None:
    empty = post(server, "/api/v1/predict/batch", {"records": []})
    assert (empty.status_code, empty.json()["code"]) == (422, "validation_error")
    over = post(server, "/api/v1/predict/batch", {"records": [record] * 1001})
    assert (over.status_code, over.json()["code"]) == (422, "batch_too_large")
    one_bad = post(server, "/api/v1/predict/batch", {"records": [record, {**record, "num_products": 0}]})
    assert one_bad.status_code == 422
    assert one_bad.json()["details"][0]["loc"] == ["body", "records", 1, "num_products"]


def test_body_over_limit_is_refused_before_it_is_read(server: Server) -> None:
    """Announce 64 MiB, send none of it: the 413 arrives anyway, so the body was never read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            b"POST /api/v1/predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n"
        )
        reply = b""
        while chunk := s.recv(65536):  # the server closes the connection after the 413
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "connection: close" in reply.lower()
    assert '"code":"payload_too_large"' in reply


def test_chunked_body_over_limit_is_refused(server: Server) -> None:
    def chunks():
        for _ in range(10):
            yield b" " * (1024 * 1024)

    r = httpx.post(server.url + "/api/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


def test_unknown_route_and_method(server: Server) -> None:
    r = httpx.get(server.url + "/nope")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = httpx.get(server.url + "/api/v1/predict")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")


def test_request_and_trace_ids(server: Server, record: dict) -> None:
    generated = post(server, "/api/v1/predict", {"record": record})
    assert len(generated.headers["x-request-id"]) == 32
    unsafe = post(server, "/api/v1/predict", {"record": record}, headers={"X-Request-ID": "bad id <script>"})
    assert unsafe.headers["x-request-id"] != "bad id <script>"
    assert len(unsafe.headers["x-request-id"]) == 32
