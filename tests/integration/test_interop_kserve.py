"""KServe 0.21's ``InferenceRESTClient(RESTConfig(protocol="v2"))`` against the real service: JSON and
binary tensors in and out, one tensor or one named input per feature (BYTES categoricals). kserve
lives in .tools/interop-kserve (its own lock): one subprocess runs every case
(tests/support/clients/kserve_cases.py), each case below asserts on its part of the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.interop import Sample, run_client, sample
from support.server import Server

ROWS = 12
# case -> outputs asked as binary (the answer then has Inference-Header-Content-Length)
CASES = {
    "tensor_json": False,
    "tensor_binary": True,
    "tensor_binary_in_json_out": False,
    "named_bytes_binary": True,
    "named_bytes_json": False,
}


@pytest.fixture(scope="module")
def rows(card: dict, churn_model: Path) -> Sample:
    return sample(card, churn_model, ROWS, seed=29)


@pytest.fixture(scope="module")
def cases(server: Server, rows: Sample) -> dict[str, Any]:
    return run_client("kserve", "kserve_cases.py", server.url, rows.as_json())


def result(cases: dict[str, Any], name: str) -> Any:
    case = cases[name]
    assert "error" not in case, f"{name}: {case['error']}\n{case.get('trace', '')}"
    return case["result"]


def test_model_ready(cases: dict[str, Any]) -> None:
    assert result(cases, "model_ready") is True


@pytest.mark.parametrize("name", list(CASES))
def test_infer(cases: dict[str, Any], rows: Sample, name: str) -> None:
    got = result(cases, name)
    assert (got["model_name"], got["id"]) == ("churn", name)
    assert list(got["outputs"]) == ["predict", "predict_proba"]
    labels, proba = got["outputs"]["predict"], got["outputs"]["predict_proba"]
    assert got["binary_answer"] is CASES[name]
    assert (labels["datatype"], labels["values"]) == ("BYTES", rows.labels)
    assert (proba["datatype"], proba["shape"]) == ("FP64", list(rows.proba.shape))
    np.testing.assert_allclose(np.array(proba["values"]).reshape(rows.proba.shape), rows.proba, rtol=0, atol=1e-9)


def test_refusal_reaches_the_caller_with_the_protocol_message(cases: dict[str, Any]) -> None:
    """KServe's client puts the body's "error" into its exception only for exactly application/json."""
    got = result(cases, "refusal")
    assert got["status"] == 400
    assert got["message"].startswith("expected 8 features per record, got 1"), got["message"]
