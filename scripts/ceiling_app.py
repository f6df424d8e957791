"""The stack's ceiling for ``make bench``: a bare FastAPI app answering ferry's routes from a cache.

No model, no validation, no middleware: each route reads the request body and answers the bytes it
answered the first time it saw that body (a response of ferry's shape, with constant
probabilities). Served by the same gunicorn configuration and worker class as ferry (``ferry serve
--app ceiling_app:create_app()``), what it carries per second is what FastAPI, uvicorn and gunicorn
alone carry on this machine: the most any service on this stack can do.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response

CLASSES = ("churn", "stay")
MODEL = {"name": "churn", "version": "1.0.0"}
ROW = {"prediction": CLASSES[1], "probabilities": dict.fromkeys(CLASSES, 0.5)}


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _answer(route: str, body: bytes) -> bytes:
    """The response of ferry's shape for one body (computed once per distinct body)."""
    document: Any = json.loads(body)
    if route == "single":
        return _dumps({**ROW, "model": MODEL}).encode()
    if route == "batch":
        return _dumps({"predictions": [ROW] * len(document["records"]), "model": MODEL}).encode()
    rows = int(document["inputs"][0]["shape"][0])
    outputs = [
        {"name": "predict", "shape": [rows], "datatype": "BYTES", "data": [CLASSES[1]] * rows},
        {"name": "predict_proba", "shape": [rows, 2], "datatype": "FP64", "data": [0.5] * (2 * rows)},
    ]
    return _dumps({"model_name": MODEL["name"], "model_version": MODEL["version"], "outputs": outputs}).encode()


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    cache: dict[tuple[str, bytes], bytes] = {}

    def cached(route: str, body: bytes) -> Response:
        key = (route, body)
        if key not in cache:
            cache[key] = _answer(route, body)
        return Response(cache[key], media_type="application/json")

    @app.post("/api/v1/predict")
    async def predict(request: Request) -> Response:
        return cached("single", await request.body())

    @app.post("/api/v1/predict/batch")
    async def predict_batch(request: Request) -> Response:
        return cached("batch", await request.body())

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        return cached("v2", await request.body())

    @app.get("/livez")
    @app.get("/readyz")
    async def probe() -> dict[str, str]:
        return {"status": "ok"}

    return app
