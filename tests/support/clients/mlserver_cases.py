"""Requests built with MLServer's own codecs, answers parsed as MLServer's types: run by
tests/integration/test_interop_mlserver.py with the Python of .tools/interop-mlserver (mlserver 1.7.1).

argv[1] is the service's URL; stdin is JSON ``{"matrix": [[...]], "columns": {name: [...]}}``. Every case
runs, a failure is reported as its case's ``error``; stdout is one JSON document ``{case: result}``
with each output decoded by MLServer's codecs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlserver.cli.main import root
from mlserver.codecs import NumpyCodec, NumpyRequestCodec, PandasCodec
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, RequestOutput

MODEL = "churn"


def post(url: str, request: InferenceRequest) -> InferenceResponse:
    """As a user of MLServer's types sends one: the request's JSON, the answer parsed strictly."""
    call = urllib.request.Request(
        f"{url}/v2/models/{MODEL}/infer",
        data=request.model_dump_json(exclude_none=True).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(call, timeout=30) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:500]!r}") from None
    return InferenceResponse.model_validate_json(body)


def described(response: InferenceResponse) -> dict[str, Any]:
    """Every output decoded with NumpyCodec (what MLServer users call on an np-typed output)."""
    outputs = {}
    for output in response.outputs:
        array = NumpyCodec.decode_output(output)
        values = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        outputs[output.name] = {
            "datatype": output.datatype,
            "shape": output.shape,
            "content_type": output.parameters.content_type if output.parameters else None,
            "values": values,
            "array_shape": list(array.shape),
        }
    return {"model_name": response.model_name, "id": response.id, "outputs": outputs}


def frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(columns)


def numpy_default(url: str, data: dict[str, Any]) -> dict[str, Any]:
    request = NumpyRequestCodec.encode_request(np.array(data["matrix"], dtype=np.float64))
    request.id = "np-1"
    response = post(url, request)
    result = described(response)
    result["decoded_response"] = NumpyRequestCodec.decode_response(response).reshape(-1).tolist()
    return result


def numpy_proba(url: str, data: dict[str, Any]) -> dict[str, Any]:
    request = NumpyRequestCodec.encode_request(np.array(data["matrix"], dtype=np.float64))
    request.outputs = [RequestOutput(name="predict_proba")]
    return described(post(url, request))


def types_one_row_1d(url: str, data: dict[str, Any]) -> dict[str, Any]:
    """One row as a 1-D [features] tensor, built with MLServer's types (NumpyRequestCodec would make a
    1-D array [n, 1]: n rows of one feature, as MLServer reads its first axis as the batch)."""
    row = data["matrix"][0]
    tensor = RequestInput(name="input-0", shape=[len(row)], datatype="FP64", data=row)
    request = InferenceRequest(inputs=[tensor], outputs=[RequestOutput(name="predict_proba")])
    return described(post(url, request))


def pandas_default(url: str, data: dict[str, Any]) -> dict[str, Any]:
    request = PandasCodec.encode_request(frame(data["columns"]))
    response = post(url, request)
    result = described(response)
    decoded = PandasCodec.decode_response(response)
    result["decoded_response"] = {"columns": list(decoded.columns), "predict": decoded["predict"].tolist()}
    result["request_inputs"] = {i.name: i.datatype for i in request.inputs}
    return result


def pandas_both(url: str, data: dict[str, Any]) -> dict[str, Any]:
    df = frame(data["columns"])
    request = PandasCodec.encode_request(df[list(reversed(df.columns))])  # any column order
    request.outputs = [RequestOutput(name="predict"), RequestOutput(name="predict_proba")]
    return described(post(url, request))


def cli_infer(url: str, data: dict[str, Any], binary: bool) -> dict[str, Any]:
    """``mlserver infer`` (its batch client, tritonclient.http.aio underneath) over a file of one
    NumpyRequestCodec and one PandasCodec request; -b sends binary tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        source, sink = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl")
        numpy_request = NumpyRequestCodec.encode_request(np.array(data["matrix"], dtype=np.float64))
        numpy_request.id = "cli-np"
        pandas_request = PandasCodec.encode_request(frame(data["columns"]))
        pandas_request.id = "cli-pd"
        source.write_text(
            "\n".join(r.model_dump_json(exclude_none=True) for r in (numpy_request, pandas_request)) + "\n"
        )
        argv = ["infer", "-u", url.removeprefix("http://"), "-m", MODEL, "-i", str(source), "-o", str(sink)]
        argv += ["--workers", "1", "--retries", "1", "--batch-size", "1", *(["-b"] if binary else [])]
        root.main(argv, standalone_mode=False)
        lines = [json.loads(line) for line in sink.read_text().splitlines() if line]
    answers = {}
    for line in lines:
        if "error" in line:
            raise RuntimeError(f"mlserver infer reported: {line['error']}")
        answers[line["id"]] = described(InferenceResponse.model_validate(line))
    return answers


CASES = {
    "numpy_codec_default_output": numpy_default,
    "numpy_codec_predict_proba": numpy_proba,
    "types_one_row_1d": types_one_row_1d,
    "pandas_codec_default_output": pandas_default,
    "pandas_codec_both_outputs": pandas_both,
    "mlserver_infer_json": lambda url, data: cli_infer(url, data, binary=False),
    "mlserver_infer_binary": lambda url, data: cli_infer(url, data, binary=True),
}


def main() -> None:
    url = sys.argv[1]
    data = json.load(sys.stdin)
    results = {}
    for name, case in CASES.items():
        try:
            results[name] = {"result": case(url, data)}
        except Exception as exc:  # reported per case; the test names it
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
