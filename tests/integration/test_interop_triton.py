"""tritonclient[http] as shipped (the dev lock's version), sync and aio, against the real service:
JSON and binary tensors in and out, async_infer, one named input per feature with BYTES categoricals,
a 1-D one-row tensor, gzip/deflate request bodies. Every answer equals the estimator's own
predict_proba to 1e-9 and its predict labels."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio

from support.interop import Sample, sample
from support.server import Server

MODEL = "churn"
ROWS = 16


@pytest.fixture(scope="module")
def rows(card: dict, churn_model: Path) -> Sample:
    return sample(card, churn_model, ROWS, seed=17)


def tensor_input(matrix: np.ndarray, binary: bool) -> list[triton.InferInput]:
    tensor = triton.InferInput("input-0", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix, binary_data=binary)
    return [tensor]


def named_inputs(columns: dict[str, list[Any]], card: dict, binary: bool) -> list[triton.InferInput]:
    """One input per card feature, reversed order: categoricals BYTES (their names), the rest numbers."""
    inputs = []
    for f in reversed(card["features"]):
        values = columns[f["name"]]
        if f["type"] == "categorical":
            array = np.array([v.encode() for v in values], dtype=np.object_)
            datatype = "BYTES"
        elif f["type"] in ("integer", "boolean"):
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        else:
            array, datatype = np.array(values, dtype=np.float64), "FP64"
        tensor = triton.InferInput(f["name"], [len(values)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def requested(binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]


def check(result: Any, rows: Sample, binary_out: bool | None = None) -> None:
    """Both outputs, equal to the in-process estimator; ``binary_out`` also checks how each came back."""
    proba = result.as_numpy("predict_proba")
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("predict").reshape(-1)]
    np.testing.assert_allclose(proba, rows.proba, rtol=0, atol=1e-9)
    assert labels == rows.labels
    if binary_out is not None:
        for output in result.get_response()["outputs"]:
            assert ("binary_data_size" in output.get("parameters", {})) is binary_out, output
            assert ("data" in output) is not binary_out, output


def sync_client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


# (inputs binary, outputs binary): tritonclient's default is binary inputs (set_data_from_numpy).
MODES = [(False, False), (True, True), (True, False), (False, True)]


@pytest.mark.parametrize(("binary_in", "binary_out"), MODES, ids=lambda b: "binary" if b else "json")
def test_sync_tensor(server: Server, rows: Sample, binary_in: bool, binary_out: bool) -> None:
    client = sync_client(server)
    result = client.infer(MODEL, tensor_input(rows.matrix, binary_in), outputs=requested(binary_out), request_id="t1")
    assert result.get_response()["id"] == "t1"
    check(result, rows, binary_out)


def test_sync_default_outputs_binary(server: Server, rows: Sample) -> None:
    """No outputs named: tritonclient asks binary_data_output for all, and gets both outputs so."""
    check(sync_client(server).infer(MODEL, tensor_input(rows.matrix, True)), rows, binary_out=True)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_sync_named_inputs_with_bytes(server: Server, rows: Sample, card: dict, binary: bool) -> None:
    client = sync_client(server)
    result = client.infer(MODEL, named_inputs(rows.columns, card, binary), outputs=requested(binary))
    check(result, rows, binary)


def test_sync_one_row_1d(server: Server, rows: Sample) -> None:
    tensor = triton.InferInput("input-0", [rows.matrix.shape[1]], "FP64")
    tensor.set_data_from_numpy(rows.matrix[0], binary_data=True)
    result = sync_client(server).infer(MODEL, [tensor], outputs=requested(True))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), rows.proba[:1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_sync_compressed_request(server: Server, rows: Sample, algorithm: str) -> None:
    result = sync_client(server).infer(
        MODEL, tensor_input(rows.matrix, True), outputs=requested(True), request_compression_algorithm=algorithm
    )
    check(result, rows, binary_out=True)


def test_sync_async_infer(server: Server, rows: Sample) -> None:
    """async_infer (tritonclient's greenlet pool): 4 requests sent before the first result is read, each
    answered with its own id and rows."""
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=4)
    halves = [rows.matrix[:8], rows.matrix[8:], rows.matrix, rows.matrix[::-1]]
    pending = [
        client.async_infer(MODEL, tensor_input(m, i % 2 == 0), outputs=requested(i % 2 == 1), request_id=str(i))
        for i, m in enumerate(halves)
    ]
    expected = [rows.proba[:8], rows.proba[8:], rows.proba, rows.proba[::-1]]
    for i, call in enumerate(pending):
        result = call.get_result(timeout=30)
        assert result.get_response()["id"] == str(i)
        np.testing.assert_allclose(result.as_numpy("predict_proba"), expected[i], rtol=0, atol=1e-9)
    client.close()


def run_aio(server: Server, call: Callable[[triton_aio.InferenceServerClient], Any]) -> Any:
    async def main() -> Any:
        client = triton_aio.InferenceServerClient(url=server.url.removeprefix("http://"))
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


@pytest.mark.parametrize(("binary_in", "binary_out"), MODES, ids=lambda b: "binary" if b else "json")
def test_aio_tensor(server: Server, rows: Sample, binary_in: bool, binary_out: bool) -> None:
    """tritonclient.http.aio: aiohttp labels even a JSON body application/octet-stream."""

    async def call(client: triton_aio.InferenceServerClient) -> Any:
        assert await client.is_model_ready(MODEL)
        return await client.infer(MODEL, tensor_input(rows.matrix, binary_in), outputs=requested(binary_out))

    check(run_aio(server, call), rows, binary_out)


def test_aio_named_inputs_gzip_and_concurrent(server: Server, rows: Sample, card: dict) -> None:
    async def call(client: triton_aio.InferenceServerClient) -> Any:
        return await asyncio.gather(
            client.infer(MODEL, named_inputs(rows.columns, card, True), request_compression_algorithm="gzip"),
            client.infer(MODEL, tensor_input(rows.matrix, False), outputs=requested(False)),
        )

    named, plain = run_aio(server, call)
    check(named, rows, binary_out=True)
    check(plain, rows, binary_out=False)


def test_server_lists_binary_extension(server: Server) -> None:
    assert "binary_tensor_data" in sync_client(server).get_server_metadata()["extensions"]
