"""MLServer 1.7.1's codecs and types against the real service, as a team leaving MLServer's sklearn
runtime would call it: NumpyRequestCodec and PandasCodec requests (one named input per column, BYTES
categoricals, BOOL and INT64 columns), answers parsed as ``mlserver.types.InferenceResponse`` and
decoded with MLServer's codecs, and the ``mlserver infer`` batch command with JSON and binary (-b)
tensors. mlserver lives in .tools/interop-mlserver (its own lock): one subprocess runs every case
(tests/support/clients/mlserver_cases.py), each case below asserts on its part of the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.interop import Sample, run_client, sample
from support.server import Server

ROWS = 12


@pytest.fixture(scope="module")
def rows(card: dict, churn_model: Path) -> Sample:
    return sample(card, churn_model, ROWS, seed=23)


@pytest.fixture(scope="module")
def cases(server: Server, rows: Sample) -> dict[str, Any]:
    return run_client("mlserver", "mlserver_cases.py", server.url, rows.as_json())


def result(cases: dict[str, Any], name: str) -> dict[str, Any]:
    case = cases[name]
    assert "error" in case or "result" in case, case
    assert "error" not in case, f"{name}: {case['error']}\n{case.get('trace', '')}"
    return case["result"]


def assert_predict(output: dict[str, Any], labels: list[str]) -> None:
    """``predict`` as MLServer's sklearn runtime answers it: labels, BYTES, [rows, 1], content_type np."""
    assert (output["datatype"], output["shape"], output["content_type"]) == ("BYTES", [len(labels), 1], "np")
    assert output["values"] == labels


def assert_proba(output: dict[str, Any], proba: np.ndarray) -> None:
    assert (output["datatype"], output["shape"]) == ("FP64", list(proba.shape))
    np.testing.assert_allclose(np.array(output["values"]).reshape(proba.shape), proba, rtol=0, atol=1e-9)


def test_numpy_codec_default_output_is_predict(cases: dict[str, Any], rows: Sample) -> None:
    got = result(cases, "numpy_codec_default_output")
    assert (got["model_name"], got["id"]) == ("churn", "np-1")
    assert list(got["outputs"]) == ["predict"]
    assert_predict(got["outputs"]["predict"], rows.labels)
    assert [v.decode() if isinstance(v, bytes) else v for v in got["decoded_response"]] == rows.labels


def test_numpy_codec_predict_proba(cases: dict[str, Any], rows: Sample) -> None:
    got = result(cases, "numpy_codec_predict_proba")
    assert list(got["outputs"]) == ["predict_proba"]
    assert_proba(got["outputs"]["predict_proba"], rows.proba)


def test_types_one_row_1d(cases: dict[str, Any], rows: Sample) -> None:
    assert_proba(result(cases, "types_one_row_1d")["outputs"]["predict_proba"], rows.proba[:1])


def test_pandas_codec_default_output(cases: dict[str, Any], rows: Sample, card: dict) -> None:
    got = result(cases, "pandas_codec_default_output")
    # What PandasCodec made of the frame: one input per column, the categoricals as BYTES.
    datatypes = {"categorical": "BYTES", "boolean": "BOOL", "integer": "INT64", "number": "FP64"}
    assert got["request_inputs"] == {f["name"]: datatypes[f["type"]] for f in card["features"]}
    assert_predict(got["outputs"]["predict"], rows.labels)
    assert got["decoded_response"]["columns"] == ["predict"]
    assert [v.decode() if isinstance(v, bytes) else v for v in got["decoded_response"]["predict"]] == rows.labels


def test_pandas_codec_columns_in_any_order_both_outputs(cases: dict[str, Any], rows: Sample) -> None:
    got = result(cases, "pandas_codec_both_outputs")
    assert list(got["outputs"]) == ["predict", "predict_proba"]
    assert_predict(got["outputs"]["predict"], rows.labels)
    assert_proba(got["outputs"]["predict_proba"], rows.proba)


@pytest.mark.parametrize("mode", ["json", "binary"])
def test_mlserver_infer_command(cases: dict[str, Any], rows: Sample, mode: str) -> None:
    """``mlserver infer`` drops the request codec's content_type, so both outputs come back."""
    got = result(cases, f"mlserver_infer_{mode}")
    assert set(got) == {"cli-np", "cli-pd"}
    for answer in got.values():
        assert [v.decode() if isinstance(v, bytes) else v for v in answer["outputs"]["predict"]["values"]] == (
            rows.labels
        )
        proba = answer["outputs"]["predict_proba"]
        np.testing.assert_allclose(np.array(proba["values"]).reshape(rows.proba.shape), rows.proba, atol=1e-9, rtol=0)
