"""Request ids, trace ids, content types, error rendering, logging and metrics, in process."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from pydantic import ValidationError

from ferry.api.errors import from_status, render
from ferry.api.middleware import is_json_content_type, request_id_from, trace_id_from
from ferry.card import Feature
from ferry.errors import BatchTooLarge, InvalidInput, MalformedJson, Overloaded, from_validation
from ferry.features import FeatureSchema
from ferry.logging import JsonLineHandler, json_formatter
from ferry.metrics import Metrics


def test_request_id() -> None:
    assert request_id_from("abc-123") == "abc-123"
    for bad in (None, "", "a" * 129, "has space", "new\nline", '"quote"'):
        generated = request_id_from(bad)
        assert len(generated) == 32 and generated != bad


def test_trace_id() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_from(good) == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
        None,
    ):
        assert trace_id_from(bad) != "4bf92f3577b34da6a3ce929d0e0e4736"
        assert len(trace_id_from(bad)) == 32


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_content_types(value: str | None, ok: bool) -> None:
    assert is_json_content_type(value) is ok


def test_render_shapes() -> None:
    r = render(Overloaded(retry_after_s=1.4), "rid", "/api/v1/predict")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert json.loads(r.body) == {"code": "overloaded", "message": Overloaded.default_message, "request_id": "rid"}
    oip = render(InvalidInput("bad tensor"), "rid", "/v2/models/m/infer")
    assert oip.status_code == 400
    assert json.loads(oip.body)["error"] == "bad tensor"
    assert from_status(405).code == "method_not_allowed"
    assert from_status(418).status == 400


def test_validation_mapping() -> None:
    assert isinstance(from_validation([{"type": "json_invalid", "loc": ("body", 3), "msg": "x"}], 10), MalformedJson)
    too_long = from_validation([{"type": "too_long", "loc": ("body", "records"), "msg": "x", "input": [1] * 99}], 10)
    assert isinstance(too_long, BatchTooLarge) and "input" not in too_long.details[0]
    assert type(from_validation([{"type": "missing", "loc": ("body",), "msg": "x"}], 10)) is InvalidInput


def test_typed_schema_rows_and_tensor_decoding() -> None:
    features = [
        Feature(name="n", type="integer", minimum=0, maximum=10),
        Feature(name="f", type="number", minimum=0.0, maximum=1.0),
        Feature(name="b", type="boolean"),
        Feature(name="c", type="categorical", categories=["x", "y"]),
    ]
    schema = FeatureSchema(features)
    record = schema.record_type.model_validate({"n": 3.0, "f": 0.5, "b": True, "c": "y"})
    assert record.n == 3 and isinstance(record.n, int)
    rows = schema.rows_from_records([record])
    assert rows.tolist() == [[3, 0.5, True, "y"]]
    for bad in (
        {"n": "3", "f": 0.5, "b": True, "c": "y"},
        {"n": 3, "f": 0.5, "b": 1, "c": "y"},
        {"n": 3, "f": 2.0, "b": True, "c": "y"},
        {"n": 3, "f": 0.5, "b": True, "c": "z"},
        {"n": 3, "f": 0.5, "b": True},
        {"n": 3, "f": 0.5, "b": True, "c": "y", "extra": 1},
    ):
        with pytest.raises(ValidationError):
            schema.record_type.model_validate(bad)
    decoded = schema.rows_from_tensor(np.array([[3.0, 0.5, 1.0, 1.0]]), loc=["inputs", 0])
    assert decoded.tolist() == rows.tolist()
    with pytest.raises(InvalidInput) as err:
        schema.rows_from_tensor(np.array([[3.5, 0.5, 2.0, 5.0]]), loc=["inputs", 0])
    assert [d["loc"][-1] for d in err.value.details] == [0, 2, 3]
    with pytest.raises(InvalidInput):
        schema.rows_from_tensor(np.array([[1.0, 0.5, 1.0]]), loc=["inputs", 0])


def test_log_handler_writes_one_json_line_per_record() -> None:
    read, write = os.pipe()
    handler = JsonLineHandler(write)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("ferry.test.handler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain %s", "message", extra={"k": "v"})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        os.close(write)
    lines = os.read(read, 1 << 20).decode().splitlines()
    os.close(read)
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "plain message" and first["k"] == "v" and first["level"] == "warning"
    assert "ValueError: bad" in second["exception"]


def test_metrics_labels_are_bounded() -> None:
    metrics = Metrics()
    metrics.observe_request("/api/v1/predict", "BREW", 418, 0.01)
    metrics.observe_request("/api/v1/predict", "POST", 200, 0.01)
    text = metrics.exposition()[0].decode()
    assert 'ferry_http_requests_total{method="OTHER",route="/api/v1/predict",status_class="4xx"} 1.0' in text
    assert 'ferry_http_requests_total{method="POST",route="/api/v1/predict",status_class="2xx"} 1.0' in text
