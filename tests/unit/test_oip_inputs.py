"""What the OIP v2 infer route answers to the forms Triton and MLServer clients send (in process, lean
path; tests/unit/test_hot_path_parity.py shows the FastAPI route answers the same bytes)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.main import create_app
from ferry.settings import Settings


@pytest.fixture(scope="module")
def answers(churn_model: Path, card: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, httpx.Response]:
    from ferry_client.protocol import record_row, v2_tensor

    records = [dict(card["example"]), {**card["example"], "tenure_months": 40, "contract_type": "two_year"}]
    rows = [record_row(r, card["features"]) for r in records]
    named = []
    for feature in card["features"]:
        values = [r[feature["name"]] for r in records]
        datatype = {"categorical": "BYTES", "boolean": "BOOL", "integer": "INT64"}.get(feature["type"], "FP64")
        named.append({"name": feature["name"], "shape": [2, 1], "datatype": datatype, "data": values})
    one_row = {"name": "input-1", "shape": [len(rows[0])], "datatype": "FP64", "data": rows[0]}
    header = json.dumps(
        {
            "inputs": [{**v2_tensor(rows), "data": None, "parameters": {"binary_data_size": 16 * len(rows[0])}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    header = header.replace(b'"data": null, ', b"")
    requests: dict[str, tuple[dict[str, str], bytes]] = {
        "tensor": ({}, json.dumps({"inputs": [v2_tensor(rows)]}).encode()),
        "pandas codec": ({}, json.dumps({"parameters": {"content_type": "pd"}, "inputs": named[::-1]}).encode()),
        "pandas codec, proba": (
            {},
            json.dumps(
                {"parameters": {"content_type": "pd"}, "inputs": named, "outputs": [{"name": "predict_proba"}]}
            ).encode(),
        ),
        "named, no codec": ({}, json.dumps({"inputs": named}).encode()),
        "one row 1-D": ({}, json.dumps({"inputs": [one_row]}).encode()),
        "binary both ways": (
            {"inference-header-content-length": str(len(header))},
            header + struct.pack(f"<{2 * len(rows[0])}d", *rows[0], *rows[1]),
        ),
    }

    async def go() -> dict[str, httpx.Response]:
        settings = Settings(
            model={"path": churn_model}, jobs={"runners": 0, "sqlite_path": tmp_path_factory.mktemp("j") / "j.db"}
        )
        app = create_app(settings)
        await app.state.core.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return {
                    name: await client.post(f"/v2/models/{card['name']}/infer", headers=headers, content=body)
                    for name, (headers, body) in requests.items()
                }
        finally:
            await app.state.core.stop()

    return asyncio.run(go())


def _outputs(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_every_input_form_gives_the_same_answer(answers: dict[str, httpx.Response]) -> None:
    tensor = _outputs(answers["tensor"])
    assert _outputs(answers["named, no codec"]) == tensor  # names in card order or not, same numbers
    assert _outputs(answers["pandas codec, proba"])["predict_proba"]["data"] == tensor["predict_proba"]["data"]
    assert _outputs(answers["pandas codec"])["predict"]["data"] == tensor["predict"]["data"]
    one = _outputs(answers["one row 1-D"])
    assert one["predict_proba"]["shape"] == [1, 2]
    assert one["predict_proba"]["data"] == tensor["predict_proba"]["data"][:2]


def test_mlserver_codec_requests_get_mlservers_sklearn_answer(answers: dict[str, httpx.Response]) -> None:
    """MLServer's sklearn runtime: predict only unless asked, a batch dimension, content_type np."""
    assert list(_outputs(answers["pandas codec"])) == ["predict"]
    predict = _outputs(answers["pandas codec"])["predict"]
    assert (predict["shape"], predict["datatype"], predict["parameters"]) == ([2, 1], "BYTES", {"content_type": "np"})
    proba = _outputs(answers["pandas codec, proba"])
    assert list(proba) == ["predict_proba"]
    assert (proba["predict_proba"]["shape"], proba["predict_proba"]["parameters"]) == ([2, 2], {"content_type": "np"})
    # Without a codec, ferry's own default stays: both outputs, labels shaped [rows].
    plain = _outputs(answers["tensor"])
    assert list(plain) == ["predict", "predict_proba"] and plain["predict"]["shape"] == [2]


def test_binary_answer_layout(answers: dict[str, httpx.Response]) -> None:
    response = answers["binary both ways"]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    outputs = header["outputs"]
    assert all("data" not in o for o in outputs)
    sizes = [o["parameters"]["binary_data_size"] for o in outputs]
    assert length + sum(sizes) == len(response.content)
    blob = response.content[length:]
    labels, proba = blob[: sizes[0]], blob[sizes[0] :]
    expected = _outputs(answers["tensor"])
    assert struct.unpack("<4d", proba) == tuple(expected["predict_proba"]["data"])
    decoded, offset = [], 0
    while offset < len(labels):
        (size,) = struct.unpack_from("<I", labels, offset)
        decoded.append(labels[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert decoded == expected["predict"]["data"]
