"""Serving any model: verification, card-less models, slow and failing models, and OIP v2 clients."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from support.metrics import Background
from support.models import TRUSTED_CARDLESS, ExplodingModel, SlowModel
from support.records import make_records
from support.server import Server


def failed_loads(server: Server, workers: int) -> list[dict]:
    """Once every worker has logged that its model failed to load (awaited, where a sleep would guess)."""
    records = server.records_when(
        lambda found: sum(r.get("event") == "model_load_failed" for r in found) >= workers, timeout=30
    )
    failures = [r for r in records if r.get("event") == "model_load_failed"]
    assert len(failures) >= workers, failures
    return failures


def test_tampered_model_never_becomes_ready(churn_model: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "tampered"
    shutil.copytree(churn_model.parent, model_dir)
    path = model_dir / "model.joblib"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(blob))
    with Server(tmp_path, path).start(wait_ready=False) as server:
        failed_loads(server, 2)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        reason = ready.json()["reason"]
        assert "sha256 mismatch" in reason
        # Public: no path, no hash. The log has both, for the operator.
        assert str(tmp_path) not in ready.text and "model.joblib" not in ready.text, ready.text
        assert not re.search(r"[0-9a-f]{64}", ready.text), ready.text
        assert httpx.get(server.url + "/livez").status_code == 200
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
        r = httpx.post(
            server.url + "/api/v1/predict",
            json={"record": json.loads(path.with_name("model.card.json").read_text())["example"]},
        )
        assert (r.status_code, r.json()["code"]) == (503, "model_not_ready")
    failures = [r for r in server.records() if r.get("event") == "model_load_failed"]
    assert len(failures) == 2  # one per worker, each saying why
    assert all("sha256 mismatch" in f["reason"] and f["level"] == "error" for f in failures)
    assert all(f["path"] == str(path) and len(f["actual_sha256"]) == 64 for f in failures)
    assert not [r for r in server.records() if r.get("event") == "model_loaded"]


def test_pinned_hash_must_match(churn_model: Path, tmp_path: Path) -> None:
    with Server(tmp_path, churn_model, env={"FERRY_MODEL__SHA256": "0" * 64}).start(wait_ready=False) as server:
        failed_loads(server, 2)
        assert httpx.get(server.url + "/readyz").json()["status"] == "failed"


@pytest.fixture
def slow_model(tmp_path: Path) -> Path:
    path = tmp_path / "slowpoke.joblib"
    joblib.dump(SlowModel(delay_s=1.5), path)
    return path


def test_card_less_model_generic_schema(slow_model: Path, tmp_path: Path) -> None:
    joblib.dump(SlowModel(delay_s=0.0), slow_model)
    with Server(tmp_path, slow_model, env=TRUSTED_CARDLESS).start() as server:
        listing = httpx.get(server.url + "/api/v1/models").json()["models"][0]
        assert listing["name"] == "slowpoke"  # the file stem
        card = httpx.get(server.url + "/api/v1/models/slowpoke").json()
        assert [f["name"] for f in card["features"]] == ["x0", "x1", "x2"]
        r = httpx.post(server.url + "/api/v1/predict", json={"record": [0.5, 1.0, -2.0]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == {"name": "slowpoke", "version": "unversioned"}
        wrong_width = httpx.post(server.url + "/api/v1/predict", json={"record": [0.5]})
        assert (wrong_width.status_code, wrong_width.json()["code"]) == (422, "validation_error")
        spec = httpx.get(server.url + "/openapi.json").json()
        assert spec["components"]["schemas"]["PredictRequest"]["examples"] == [{"record": [0.0, 0.0, 0.0]}]
    warnings = [r for r in server.records() if r.get("event") == "model_unverified"]
    assert warnings and warnings[0]["level"] == "warning"


def test_model_name_setting_and_require_card(slow_model: Path, tmp_path: Path) -> None:
    env = TRUSTED_CARDLESS | {"FERRY_MODEL__NAME": "named", "FERRY_MODEL__LOAD_WAIT_S": "0"}
    with Server(tmp_path, slow_model, env=env) as server:
        assert httpx.get(server.url + "/api/v1/models").json()["models"][0]["name"] == "named"
    # The default: a card-less file is never unpickled, and /readyz says why without naming the file.
    with Server(tmp_path, slow_model).start(wait_ready=False) as server:
        server.wait_for("/readyz", 503, 10)
        ready = httpx.get(server.url + "/readyz")
        assert "no card" in ready.json()["reason"] and "REQUIRE_CARD=false" in ready.json()["reason"]
        assert str(slow_model) not in ready.text and ready.json()["status"] == "failed"
    refusals = [r for r in server.records() if r.get("event") == "model_load_failed"]
    assert refusals and not [r for r in server.records() if r.get("event") == "model_loaded"]


def test_livez_answers_while_the_model_is_busy_and_sigterm_lets_in_flight_requests_finish(
    slow_model: Path, tmp_path: Path
) -> None:
    with Server(tmp_path, slow_model, env=TRUSTED_CARDLESS).start() as server:
        # The longest deadline: on a slow machine more requests than needed may queue behind 1.5 s calls.
        busy = Background(
            server.url + "/api/v1/predict", {"record": [1.0, 2.0, 3.0]}, headers={"X-Request-Timeout": "30"}
        )
        busy.until(server, "ferry_model_calls_in_flight", 2)  # both workers inside 1.5 s model calls
        worst = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert httpx.get(server.url + "/livez", timeout=1).status_code == 200
            worst = max(worst, time.perf_counter() - started)
        assert set(busy.join()) == {200}
        # A blocked event loop would hold /livez for most of a 1.5 s model call; 0.5 s leaves room for a
        # loaded 2-core CI machine (typical here: < 15 ms).
        assert worst < 0.5, f"/livez took {worst * 1000:.0f} ms while the model was busy"

        # The same server then shows SIGTERM lets an in-flight request finish (one start for both).
        sigterm_lets_in_flight_requests_finish(server)


def sigterm_lets_in_flight_requests_finish(server: Server) -> None:
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(server.url + "/api/v1/predict", json={"record": [1.0, 2.0, 3.0]}, timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.4)  # the request is inside its 1.5 s model call
    assert server.stop(timeout=15) == 0
    caller.join()
    assert result["r"].status_code == 200


def test_model_failure_is_500_model_error(tmp_path: Path) -> None:
    path = tmp_path / "exploding.joblib"
    joblib.dump(ExplodingModel(delay_s=0), path)
    with Server(tmp_path, path, env=TRUSTED_CARDLESS).start() as server:
        r = httpx.post(server.url + "/api/v1/predict", json={"record": [1.0, 2.0, 3.0]})
        assert (r.status_code, r.json()["code"]) == (500, "model_error")
        assert "boom" not in r.text and "Traceback" not in r.text
        assert httpx.get(server.url + "/readyz").status_code == 200
    logged = [r for r in server.records() if r.get("event") == "model_error"]
    assert logged and "RuntimeError: boom" in logged[0]["exception"]


def test_oip_v2_with_unmodified_triton_client(server: Server, churn_model: Path, card: dict) -> None:
    """tritonclient[http], as shipped, against ferry; results equal in-process predict_proba."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("churn")
    meta = client.get_model_metadata("churn")
    assert meta["inputs"][0]["shape"] == [-1, 8]
    assert client.get_server_metadata()["name"] == "ferry"

    rng = np.random.default_rng(7)
    n = 64
    features = card["features"]
    matrix = np.empty((n, len(features)))
    for col, f in enumerate(features):
        if f["type"] == "categorical":
            matrix[:, col] = rng.integers(0, len(f["categories"]), n)
        elif f["type"] == "boolean":
            matrix[:, col] = rng.integers(0, 2, n)
        elif f["type"] == "integer":
            matrix[:, col] = rng.integers(f["minimum"], f["maximum"] + 1, n)
        else:
            matrix[:, col] = np.round(rng.uniform(f["minimum"], f["maximum"] / 10, n), 2)
    tensor = triton.InferInput("input-0", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix, binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")]
    result = client.infer("churn", [tensor], outputs=outputs, request_id="oip-1")
    proba = result.as_numpy("predict_proba")
    labels = result.as_numpy("predict")
    assert result.get_response()["id"] == "oip-1"

    estimator = joblib.load(churn_model)
    rows = np.empty(matrix.shape, dtype=object)
    for col, f in enumerate(features):
        values = matrix[:, col]
        if f["type"] == "categorical":
            rows[:, col] = np.array(f["categories"], dtype=object)[values.astype(int)]
        elif f["type"] == "boolean":
            rows[:, col] = values == 1
        elif f["type"] == "integer":
            rows[:, col] = values.astype(int)
        else:
            rows[:, col] = values
    expected = estimator.predict_proba(rows)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-9)
    assert [x.decode() if isinstance(x, bytes) else x for x in labels] == list(estimator.predict(rows))

    with pytest.raises(triton.InferenceServerException) as bad:
        wrong = triton.InferInput("input-0", [1, 3], "FP64")
        wrong.set_data_from_numpy(np.zeros((1, 3)), binary_data=False)
        client.infer("churn", [wrong], outputs=outputs)
    assert "expected 8 features" in str(bad.value)


def test_oip_errors_use_protocol_shape(server: Server) -> None:
    base = server.url + "/v2/models/churn/infer"
    cases = [
        ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "BYTES", "data": ["a"] * 8}]}, "not supported"),
        ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": [0] * 7}]}, "do not fill"),
        (
            {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": [-1, 0, 0, 1, 0, 0, 0, 0]}]},
            "outside",
        ),
        ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": [1, 1, 1, 1, 0, 0, 7, 0]}]}, "outside"),
        ({"inputs": []}, "validation"),
    ]
    for body, text in cases:
        r = httpx.post(base, json=body)
        assert r.status_code == 400, (body, r.text)
        assert text in r.json()["error"] or text in json.dumps(r.json()), r.json()
    assert httpx.post(server.url + "/v2/models/nope/infer", json=cases[0][0]).status_code == 404
    assert httpx.get(server.url + "/v2/models/nope").json()["error"].startswith("no model")


# -- the wire as Triton's own client speaks it: binary tensors in and out, JSON, compressed requests, one
# input per feature. Every answer equals in-process predict_proba to 1e-9.
OIP_ROWS = 40


@pytest.fixture(scope="module")
def triton_client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def oip_records(card: dict) -> list[dict[str, Any]]:
    return make_records(card, OIP_ROWS, seed=17)


@pytest.fixture(scope="module")
def oip_expected(churn_model: Path, card: dict, oip_records: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """predict_proba and predict of the model file itself, in this process."""
    names = [f["name"] for f in card["features"]]
    rows = np.array([[r[n] for n in names] for r in oip_records], dtype=object)
    estimator = joblib.load(churn_model)
    return estimator.predict_proba(rows), [str(label) for label in estimator.predict(rows)]


def _matrix(card: dict, records: list[dict[str, Any]]) -> np.ndarray:
    """The single-tensor encoding: card order, categorical index, boolean 0/1."""
    from ferry_client.protocol import record_row

    return np.array([record_row(r, card["features"]) for r in records], dtype=np.float64)


def _check(result: Any, expected: tuple[np.ndarray, list[str]]) -> None:
    proba, labels = expected
    np.testing.assert_allclose(result.as_numpy("predict_proba"), proba, rtol=0, atol=1e-9)
    got = result.as_numpy("predict").ravel()
    assert [x.decode() if isinstance(x, bytes) else x for x in got] == labels


def _outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True)])
def test_triton_binary_tensors(
    triton_client, card, oip_records, oip_expected, binary_in: bool, binary_out: bool
) -> None:
    tensor = triton.InferInput("input-0", [OIP_ROWS, len(card["features"])], "FP64")
    tensor.set_data_from_numpy(_matrix(card, oip_records), binary_data=binary_in)
    result = triton_client.infer("churn", [tensor], outputs=_outputs(binary_out), request_id="b1")
    _check(result, oip_expected)
    response = result.get_response()
    assert response["id"] == "b1"
    sizes = {o["name"]: o.get("parameters", {}).get("binary_data_size") for o in response["outputs"]}
    assert sizes == (
        {"predict": 4 * OIP_ROWS + sum(map(len, oip_expected[1])), "predict_proba": OIP_ROWS * 2 * 8}
        if binary_out
        else {"predict": None, "predict_proba": None}
    )


def test_triton_one_input_per_feature_with_bytes_categoricals(triton_client, card, oip_records, oip_expected) -> None:
    """What MLServer's PandasCodec sends, built with Triton's client: names in any order, BYTES categories."""
    inputs = []
    for feature in reversed(card["features"]):
        values = [r[feature["name"]] for r in oip_records]
        if feature["type"] == "categorical":
            array, datatype = np.array(values, dtype=np.object_).reshape(-1, 1), "BYTES"
        elif feature["type"] == "boolean":
            array, datatype = np.array(values, dtype=bool).reshape(-1, 1), "BOOL"
        elif feature["type"] == "integer":
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        else:
            array, datatype = np.array(values, dtype=np.float64), "FP64"
        tensor = triton.InferInput(feature["name"], list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    _check(triton_client.infer("churn", inputs, outputs=_outputs(True)), oip_expected)
    with pytest.raises(InferenceServerException, match="missing input"):
        triton_client.infer("churn", inputs[1:], outputs=_outputs(True))


def test_extensions_and_wire_refusals(server: Server, triton_client) -> None:
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    infer = server.url + "/v2/models/churn/infer"
    header = b'{"inputs":[{"name":"input-0","shape":[1,8],"datatype":"FP64","parameters":{"binary_data_size":64}}]}'
    for body in (header + b"\0" * 63, header + b"\0" * 65):  # a byte short, a byte over
        r = httpx.post(infer, content=body, headers={"Inference-Header-Content-Length": str(len(header))})
        assert (r.status_code, r.json()["code"]) == (400, "malformed_binary_data"), r.text
    # 10 MB of zeros in 10 kB of gzip: refused at the body limit without inflating the rest.
    bomb = gzip.compress(b"\0" * 10_000_000)
    started = time.perf_counter()
    r = httpx.post(infer, content=bomb, headers={"Content-Encoding": "gzip"})
    assert (r.status_code, r.json()["code"]) == (413, "decompressed_too_large"), r.text
    assert time.perf_counter() - started < 2.0
    r = httpx.post(infer, content=b"{}", headers={"Content-Encoding": "br"})
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_content_encoding")
    assert httpx.get(server.url + "/readyz").status_code == 200
