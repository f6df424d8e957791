"""Micro-batching: concurrent single-record requests (REST and OIP v2) share model calls, and each
caller gets exactly its own answer (never a neighbour's row or parameters), property-tested with
distinct generated inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.card import Feature
from ferry.features import FeatureSchema
from ferry_client.protocol import record_row, v2_tensor
from support.metrics import counter, scrape
from support.server import Server


def record_strategy(card: dict) -> st.SearchStrategy[dict]:
    fields = {}
    for f in card["features"]:
        if f["type"] == "categorical":
            fields[f["name"]] = st.sampled_from(f["categories"])
        elif f["type"] == "boolean":
            fields[f["name"]] = st.booleans()
        elif f["type"] == "integer":
            fields[f["name"]] = st.integers(int(f["minimum"]), int(f["maximum"]))
        else:
            fields[f["name"]] = st.floats(f["minimum"], f["maximum"], allow_nan=False).map(lambda v: round(v, 2))
    return st.fixed_dictionaries(fields)


@pytest.fixture(scope="module")
def batching_server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory):
    with Server(tmp_path_factory.mktemp("batching"), churn_model, env={"FERRY_BATCHING__MAX_WAIT_MS": "2"}) as srv:
        yield srv


def test_concurrent_callers_each_get_their_own_answer(batching_server: Server, churn_model: Path, card: dict) -> None:
    estimator = joblib.load(churn_model)
    schema = FeatureSchema([Feature(**f) for f in card["features"]])
    names = [f["name"] for f in card["features"]]
    classes = card["classes"]

    def expected(record: dict) -> list[float]:
        row = schema.rows_from_records([schema.record_type.model_validate(record)])
        return estimator.predict_proba(row)[0].tolist()

    async def fire(records: list[dict]) -> list[list[float]]:
        limits = httpx.Limits(max_connections=len(records))
        async with httpx.AsyncClient(base_url=batching_server.url, limits=limits, timeout=30) as client:

            async def one(i: int, record: dict) -> list[float]:
                if i % 3 == 2:  # every third caller speaks the Open Inference Protocol
                    body = {"inputs": [v2_tensor([record_row(record, card["features"])])], "id": str(i)}
                    r = await client.post("/v2/models/churn/infer", json=body)
                    assert r.status_code == 200, r.text
                    out = {o["name"]: o for o in r.json()["outputs"]}
                    assert r.json()["id"] == str(i)
                    return out["predict_proba"]["data"]
                r = await client.post("/api/v1/predict", json={"record": record}, headers={"X-Request-ID": f"c{i}"})
                assert r.status_code == 200, r.text
                assert r.json()["request_id"] == f"c{i}"
                return [r.json()["probabilities"][c] for c in classes]

            return await asyncio.gather(*(one(i, rec) for i, rec in enumerate(records)))

    @given(
        records=st.lists(
            record_strategy(card), min_size=24, max_size=64, unique_by=lambda r: tuple(r[n] for n in names)
        )
    )
    @settings(max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def check(records: list[dict]) -> None:
        answers = asyncio.run(fire(records))
        for record, answer in zip(records, answers, strict=True):
            np.testing.assert_allclose(answer, expected(record), rtol=0, atol=1e-9)

    check()
    text = scrape(batching_server)
    calls = counter(text, "ferry_inference_batch_requests_count")
    merged = counter(text, "ferry_inference_batch_requests_sum")
    assert merged / calls > 1.5, f"{merged:.0f} requests in {calls:.0f} model calls: batching did not merge"


def test_batching_off_runs_one_request_per_call(churn_model: Path, record: dict, tmp_path: Path) -> None:
    with Server(tmp_path, churn_model, env={"FERRY_BATCHING__ENABLED": "false"}) as server:

        async def fire() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                rs = await asyncio.gather(*(client.post("/api/v1/predict", json={"record": record}) for _ in range(40)))
                assert {r.status_code for r in rs} == {200}

        asyncio.run(fire())
        text = scrape(server)
        assert counter(text, "ferry_inference_batch_requests_count") == 40
        assert counter(text, "ferry_inference_batch_requests_sum") == 40


def test_a_poison_record_fails_only_its_own_request(tmp_path: Path) -> None:
    from support.models import TRUSTED_CARDLESS, PickyModel

    path = tmp_path / "picky.joblib"
    joblib.dump(PickyModel(delay_s=0.1), path)  # long enough for concurrent arrivals to queue and merge
    with Server(tmp_path, path, env=TRUSTED_CARDLESS) as server:

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                bodies = [{"record": [13.0 if i == 7 else i + 0.5, 1.0, 2.0]} for i in range(40)]
                return await asyncio.gather(*(client.post("/api/v1/predict", json=b) for b in bodies))

        responses = asyncio.run(fire())
        failed = {i: (r.status_code, r.text[:200]) for i, r in enumerate(responses) if r.status_code != 200}
        assert list(failed) == [7], failed
        assert responses[7].json()["code"] == "model_error"
        # The poison record must have failed a call it shared with other requests (logged with the
        # call's request count), else isolation was not exercised.
        merged_failures = [r for r in server.records() if r.get("event") == "model_error" and r["requests"] > 1]
        assert merged_failures, "the poison record never shared a call, so isolation was not exercised"
