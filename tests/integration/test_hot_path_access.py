"""Access lines name the pod, the model version and the error code, on the lean hot path and on the
FastAPI routes (``FERRY_API__LEAN_PATH=false``), one line per request, under real gunicorn."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from support.server import Server


@pytest.mark.parametrize("lean", ["true", "false"])
def test_access_lines_carry_pod_model_version_and_code(
    lean: str, churn_model: Path, record: dict, card: dict, tmp_path: Path
) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text("{}")
    env = {
        "HOSTNAME": f"ferry-7d9c-{lean}",
        "FERRY_API__LEAN_PATH": lean,
        "FERRY_FAULTS__ENABLED": "true",
        "FERRY_FAULTS__FILE": str(faults),
        "FERRY_BREAKER__FAIL_MAX": "1",
        "FERRY_BREAKER__RESET_TIMEOUT_S": "60",
    }
    infer = f"/v2/models/{card['name']}/infer"
    with Server(tmp_path, churn_model, env=env, workers=1) as server:

        def post(rid: str, path: str, body: object) -> int:
            return httpx.post(server.url + path, json=body, headers={"X-Request-ID": rid}).status_code

        assert post("ok", "/api/v1/predict", {"record": record}) == 200
        assert post("invalid", "/api/v1/predict", {"record": {"bad": 1}}) == 422
        assert post("no-model", "/v2/models/nope/infer", {"inputs": []}) == 400  # body validated first
        assert post("no-model-valid", "/v2/models/nope/infer", {"inputs": [_tensor(record, card)]}) == 404
        assert post("v2-ok", infer, {"inputs": [_tensor(record, card)]}) == 200
        faults.write_text(json.dumps({"error_rate": 1.0}))
        # The worker polls the fault file every 0.25 s and logs the faults it took: awaited, not slept for.
        assert [
            r
            for r in server.records_when(lambda found: any(r.get("event") == "FAULT_INJECTION_ACTIVE" for r in found))
            if r.get("event") == "FAULT_INJECTION_ACTIVE" and r["error_rate"] == 1.0
        ]
        assert post("fails", "/api/v1/predict", {"record": record}) == 500
        assert post("open", "/api/v1/predict/batch", {"records": [record]}) == 503
        expected = {
            "ok": (200, None, "/api/v1/predict"),
            "invalid": (422, "validation_error", "/api/v1/predict"),
            "no-model": (400, "validation_error", "/v2/models/{name}/infer"),
            "no-model-valid": (404, "model_not_found", "/v2/models/{name}/infer"),
            "v2-ok": (200, None, "/v2/models/{name}/infer"),
            "fails": (500, "model_error", "/api/v1/predict"),
            "open": (503, "circuit_open", "/api/v1/predict/batch"),
        }
        for rid, (status, code, route) in expected.items():
            (line,) = server.requests(request_id=rid)  # exactly one access line
            assert (line["status"], line["code"], line["route"]) == (status, code, route), line
            assert line["pod"] == f"ferry-7d9c-{lean}"
            assert line["model_version"] == card["version"]


def _tensor(record: dict, card: dict) -> dict:
    from ferry_client.protocol import record_row, v2_tensor

    return v2_tensor([record_row(record, card["features"])], name="input-0")
