"""ferry_errors_total counts each error against the route template it answered, so the alert rules can
divide a predict route's errors by the same route's requests (docs/metrics.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client import generate_latest

from ferry.main import create_app
from ferry.metrics import PREDICTION_ROUTES
from ferry.settings import Settings


def post(app, path: str, body: object) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(path, json=body)

    return asyncio.run(go())


def errors(app) -> dict[tuple[str, str], float]:
    text = generate_latest(app.state.core.metrics.registry).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("ferry_errors_total{"):
            labels, value = line.rsplit(" ", 1)
            found = dict(part.split("=", 1) for part in labels[len("ferry_errors_total{") : -1].split(","))
            out[(found["route"].strip('"'), found["code"].strip('"'))] = float(value)
    return out


def test_an_error_counts_against_its_route_template(churn_model: Path) -> None:
    app = create_app(Settings(model={"path": churn_model}))
    assert post(app, "/api/v1/predict", {"record": {}}).status_code == 422
    v2 = post(app, "/v2/models/churn/infer", {"inputs": "nope"})
    assert v2.status_code == 400
    assert post(app, "/no/such/path", {}).status_code == 404
    counted = {key: value for key, value in errors(app).items() if value}
    assert counted == {
        ("/api/v1/predict", "validation_error"): 1,
        ("/v2/models/{name}/infer", v2.json()["code"]): 1,
        ("unmatched", "not_found"): 1,
    }


def test_server_error_series_exist_before_the_first_error(churn_model: Path) -> None:
    """rate() misses the first increment of a series that appears with it: the 5xx codes of every
    prediction route start at 0, the cause alerts' codes among them."""
    series = errors(create_app(Settings(model={"path": churn_model})))
    for route in PREDICTION_ROUTES:
        for code in ("overloaded", "deadline_exceeded", "circuit_open", "model_error"):
            assert series[(route, code)] == 0, (route, code)
    assert not any(code == "validation_error" for _, code in series), "4xx series appear at first use"


def test_prediction_routes_are_the_apps_model_calling_routes(churn_model: Path) -> None:
    app = create_app(Settings(model={"path": churn_model}))
    paths = app.openapi()["paths"]
    posts = {
        path
        for path, ops in paths.items()
        if "post" in ops and path.endswith(("/predict", "/batch", "/stream", "/infer"))
    }
    assert posts == set(PREDICTION_ROUTES)
