"""The app in process (no server): readiness states and the route table."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ferry import lifecycle
from ferry.main import create_app
from ferry.settings import Settings


def get(app, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_readiness_follows_loading_and_draining(churn_model: Path, monkeypatch) -> None:
    app = create_app(Settings(model={"path": churn_model}))
    assert get(app, "/readyz").json()["status"] == "loading"  # lifespan not run: nothing loaded
    app.state.core.holder.load()
    assert get(app, "/readyz").status_code == 200
    monkeypatch.setattr(lifecycle, "_draining", type(lifecycle._draining)())
    lifecycle.start_draining()
    draining = get(app, "/readyz")
    assert (draining.status_code, draining.json()["status"]) == (503, "draining")
    assert get(app, "/livez").status_code == 200


def test_routes(churn_model: Path) -> None:
    spec = get(create_app(Settings(model={"path": churn_model})), "/openapi.json").json()
    assert {
        "/livez",
        "/readyz",
        "/metrics",
        "/api/v1/predict",
        "/api/v1/predict/batch",
        "/api/v1/models",
        "/api/v1/models/{name}",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
    } <= set(spec["paths"])
    record = spec["components"]["schemas"]["Record"]
    assert record["additionalProperties"] is False
    assert record["properties"]["contract_type"]["enum"] == ["month_to_month", "one_year", "two_year"]
