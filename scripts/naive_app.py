"""The naive pattern for ``make bench``: FastAPI ``async def`` endpoints calling ``predict_proba`` inline.

What one writes without ferry: pydantic request models typed like the model card, the joblib model
loaded at start, ``model.predict_proba`` called right in the endpoint (on the event loop), a dict
returned. The same routes, request shapes and model as ferry, served by the same gunicorn
configuration and worker class (``ferry serve --app naive_app:create_app()``, which also pins native
thread pools to one thread per worker). Nothing else: no batching, deadlines, breaker, metrics or
access log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = Path(os.environ.get("FERRY_MODEL__PATH", "models/churn/model.joblib"))


class Record(BaseModel):
    tenure_months: int
    monthly_charges: float
    total_charges: float
    num_products: int
    has_phone_service: bool
    has_internet: bool
    contract_type: Literal["month_to_month", "one_year", "two_year"]
    payment_method: Literal["electronic_check", "mailed_check", "bank_transfer", "credit_card"]


class PredictRequest(BaseModel):
    record: Record


class BatchRequest(BaseModel):
    records: list[Record]


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def create_app() -> FastAPI:
    model: Any = joblib.load(MODEL_PATH)
    card = json.loads(MODEL_PATH.with_name("model.card.json").read_text())
    names = [f["name"] for f in card["features"]]
    categories = {i: f["categories"] for i, f in enumerate(card["features"]) if f["type"] == "categorical"}
    classes = [str(c) for c in model.classes_]
    meta = {"name": card["name"], "version": card["version"]}
    app = FastAPI()

    def rows(records: list[Record]) -> np.ndarray:
        return np.array([[getattr(r, n) for n in names] for r in records], dtype=object)

    def labelled(proba: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"prediction": classes[int(p.argmax())], "probabilities": dict(zip(classes, p.tolist(), strict=True))}
            for p in proba
        ]

    @app.post("/api/v1/predict")
    async def predict(body: PredictRequest) -> dict[str, Any]:
        proba = model.predict_proba(rows([body.record]))
        return {**labelled(proba)[0], "model": meta}

    @app.post("/api/v1/predict/batch")
    async def predict_batch(body: BatchRequest) -> dict[str, Any]:
        proba = model.predict_proba(rows(body.records))
        return {"predictions": labelled(proba), "model": meta}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, body: InferRequest) -> dict[str, Any]:
        tensor = body.inputs[0]
        x = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape).astype(object)
        for column, codes in categories.items():
            x[:, column] = np.asarray(codes, dtype=object)[x[:, column].astype(int)]
        proba = model.predict_proba(x)
        labels = [classes[int(i)] for i in proba.argmax(axis=1)]
        return {
            "model_name": meta["name"],
            "model_version": meta["version"],
            "outputs": [
                {"name": "predict", "shape": [len(labels)], "datatype": "BYTES", "data": labels},
                {
                    "name": "predict_proba",
                    "shape": list(proba.shape),
                    "datatype": "FP64",
                    "data": proba.ravel().tolist(),
                },
            ],
        }

    @app.get("/livez")
    @app.get("/readyz")
    async def probe() -> dict[str, str]:
        return {"status": "ok"}

    return app
