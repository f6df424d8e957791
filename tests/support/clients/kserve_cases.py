"""KServe 0.21's Python client against the service: run by tests/integration/test_interop_kserve.py with
the Python of .tools/interop-kserve.

argv[1] is the service's URL; stdin is JSON ``{"matrix": [[...]], "columns": {name: [...]}}``. Every case
runs ``InferenceRESTClient(RESTConfig(protocol="v2")).infer`` with an ``InferRequest``, a failure is
reported as its case's ``error``; stdout is one JSON document ``{case: result}``, each output decoded
with ``InferOutput.as_numpy``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

MODEL = "churn"


def described(response: InferResponse, headers: dict[str, str]) -> dict[str, Any]:
    """The decoded outputs, and whether the answer came as binary tensors (the client decodes those
    and drops their binary_data_size, so the header length tells)."""
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        values = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        outputs[output.name] = {"datatype": output.datatype, "shape": list(output.shape), "values": values}
    binary = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length") is not None
    return {"model_name": response.model_name, "id": response.id, "binary_answer": binary, "outputs": outputs}


def tensor(matrix: np.ndarray, binary: bool) -> list[InferInput]:
    infer_input = InferInput(name="input-0", shape=list(matrix.shape), datatype="FP64")
    infer_input.set_data_from_numpy(matrix, binary_data=binary)
    return [infer_input]


def named(columns: dict[str, list[Any]], binary: bool) -> list[InferInput]:
    """One input per feature: strings as BYTES, booleans BOOL, integers INT64, the rest FP64."""
    inputs = []
    for name, values in columns.items():
        if isinstance(values[0], str):
            array, datatype = np.array([v.encode() for v in values], dtype=np.object_), "BYTES"
        elif isinstance(values[0], bool):
            array, datatype = np.array(values, dtype=np.bool_), "BOOL"
        elif isinstance(values[0], int):
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        else:
            array, datatype = np.array(values, dtype=np.float64), "FP64"
        infer_input = InferInput(name=name, shape=[len(values)], datatype=datatype)
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    return inputs


def outputs(binary: bool) -> list[RequestedOutput]:
    return [RequestedOutput(name, parameters={"binary_data": binary}) for name in ("predict", "predict_proba")]


async def run(url: str, data: dict[str, Any]) -> dict[str, Any]:
    matrix = np.array(data["matrix"], dtype=np.float64)
    cases = {
        # (inputs, requested outputs)
        "tensor_json": (tensor(matrix, False), outputs(False)),
        "tensor_binary": (tensor(matrix, True), outputs(True)),
        "tensor_binary_in_json_out": (tensor(matrix, True), None),
        "named_bytes_binary": (named(data["columns"], True), outputs(True)),
        "named_bytes_json": (named(data["columns"], False), outputs(False)),
    }
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    results: dict[str, Any] = {}
    try:
        try:
            results["model_ready"] = {"result": await client.is_model_ready(url, MODEL)}
        except Exception as exc:
            results["model_ready"] = {"error": f"{type(exc).__name__}: {exc}"}
        for name, (inputs, requested) in cases.items():
            request = InferRequest(model_name=MODEL, infer_inputs=inputs, request_id=name, request_outputs=requested)
            try:
                headers: dict[str, str] = {}
                response = await client.infer(url, request, model_name=MODEL, response_headers=headers)
                results[name] = {"result": described(response, headers)}
            except Exception as exc:  # reported per case; the test names it
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
        # A refusal (one tensor of 1 feature): the client raises httpx.HTTPStatusError with the "error" message.
        bad = InferRequest(model_name=MODEL, infer_inputs=named({"no_such_feature": [1.0]}, False))
        try:
            await client.infer(url, bad, model_name=MODEL)
            results["refusal"] = {"error": "a tensor of 1 feature was accepted"}
        except httpx.HTTPStatusError as exc:
            results["refusal"] = {"result": {"status": exc.response.status_code, "message": str(exc)}}
    finally:
        await client.close()
    return results


def main() -> None:
    json.dump(asyncio.run(run(sys.argv[1], json.load(sys.stdin))), sys.stdout)


if __name__ == "__main__":
    main()
