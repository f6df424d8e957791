"""Model card, verified loading, and the default model's training."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import joblib
import numpy as np

from ferry.card import card_path_for
from ferry.model import ModelHolder, ModelState
from ferry.settings import ModelSettings
from ferry.train import FEATURES, TrainParams, generate, train
from support.models import SlowModel


def holder_for(path: Path, **settings) -> ModelHolder:
    holder = ModelHolder(ModelSettings(path=path, **settings))
    holder.load()
    return holder


def test_default_model_loads_verified(churn_model: Path) -> None:
    holder = holder_for(churn_model)
    assert holder.state is ModelState.READY
    assert holder.name == "churn" and holder.version == "1.0.0"
    assert holder.loaded.classes == ["churn", "stay"]
    assert holder.loaded.sha256 == hashlib.sha256(churn_model.read_bytes()).hexdigest()


def test_tampered_file_is_never_unpickled(churn_model: Path, tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(churn_model.parent, tmp_path / "m")
    path = tmp_path / "m" / "model.joblib"
    path.write_bytes(path.read_bytes() + b"\0")
    calls = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: calls.append(a))
    holder = holder_for(path)
    assert holder.state is ModelState.FAILED
    assert "sha256 mismatch" in holder.reason
    assert calls == []


def test_card_must_match_model(churn_model: Path, tmp_path: Path) -> None:
    shutil.copytree(churn_model.parent, tmp_path / "m")
    path = tmp_path / "m" / "model.joblib"
    card = json.loads(card_path_for(path).read_text())
    card["classes"] = ["yes", "no"]
    card_path_for(path).write_text(json.dumps(card))
    assert "classes" in holder_for(path).reason
    card["classes"], card["features"] = ["churn", "stay"], card["features"][:3]
    card_path_for(path).write_text(json.dumps(card))
    assert "features" in holder_for(path).reason


def test_broken_card_fails_without_crashing(churn_model: Path, tmp_path: Path) -> None:
    shutil.copytree(churn_model.parent, tmp_path / "m")
    path = tmp_path / "m" / "model.joblib"
    card_path_for(path).write_text("{not json")
    holder = holder_for(path)
    assert holder.state is ModelState.FAILED and "card" in holder.reason


def test_card_less_model(tmp_path: Path) -> None:
    path = tmp_path / "plain.joblib"
    joblib.dump(SlowModel(delay_s=0, n_features=4), path)
    holder = holder_for(path, require_card=False)
    assert holder.state is ModelState.READY and holder.name == "plain"
    assert holder.schema.n_features == 4 and holder.schema.example == [0.0] * 4
    assert holder_for(path, name="custom", require_card=False).name == "custom"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert holder_for(path, sha256=digest, require_card=False).state is ModelState.READY
    assert holder_for(path, sha256="0" * 64, require_card=False).state is ModelState.FAILED


def test_a_card_less_model_is_refused_by_default(tmp_path: Path) -> None:
    """Unpickling runs code: without a card (or an explicit opt-out) the file is never unpickled."""
    path = tmp_path / "plain.joblib"
    joblib.dump(SlowModel(delay_s=0, n_features=4), path)
    for settings in ({}, {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}):
        holder = holder_for(path, **settings)
        assert holder.state is ModelState.FAILED and holder.loaded is None
        assert holder.reason is not None and "no card" in holder.reason and "REQUIRE_CARD=false" in holder.reason
        assert str(tmp_path) not in holder.reason


def test_failure_reasons_name_no_path_and_no_hash(churn_model: Path, tmp_path: Path) -> None:
    """/readyz publishes the reason: paths and hashes go to the log only."""
    tampered = tmp_path / "model.joblib"
    tampered.write_bytes(churn_model.read_bytes() + b"x")
    tampered.with_name("model.card.json").write_bytes(churn_model.with_name("model.card.json").read_bytes())
    card_sha = json.loads(tampered.with_name("model.card.json").read_text())["sha256"]
    reasons = [
        holder_for(tampered).reason,
        holder_for(churn_model, sha256="0" * 64).reason,
        holder_for(tmp_path / "missing.joblib").reason,
    ]
    assert [str(r).split(":")[0].split(" (")[0] for r in reasons] == [
        "sha256 mismatch",
        "sha256 mismatch",
        "cannot read the model file",
    ]
    for reason in reasons:
        assert str(tmp_path) not in str(reason) and str(churn_model.parent) not in str(reason)
        assert not re.search(r"[0-9a-f]{64}", str(reason)), reason
    assert card_sha not in str(reasons)


def test_missing_file(tmp_path: Path) -> None:
    holder = holder_for(tmp_path / "nope.joblib")
    assert holder.state is ModelState.FAILED and "cannot read" in holder.reason


def test_training_is_deterministic(tmp_path: Path) -> None:
    params = TrainParams(n_samples=3000, n_estimators=30)
    a = train(tmp_path / "a", params)
    b = train(tmp_path / "b", params)
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a/model.joblib").read_bytes() == (tmp_path / "b/model.joblib").read_bytes()
    for key in (
        "name",
        "version",
        "sha256",
        "features",
        "classes",
        "performance",
        "args",
        "dataset",
        "created_at",
        "libraries",
    ):
        assert key in a, key


def test_default_card_is_complete(card: dict) -> None:
    assert card["performance"]["roc_auc"] > 0.75
    assert card["performance"]["n_test"] == 4000
    assert {f["type"] for f in card["features"]} == {"integer", "number", "boolean", "categorical"}
    assert all("minimum" in f and "maximum" in f for f in card["features"] if f["type"] in ("integer", "number"))
    assert card["libraries"]["scikit-learn"]


def test_synthetic_data_has_the_documented_correlations() -> None:
    x, y = generate(20_000, np.random.default_rng(0))
    tenure, monthly, total = (x[:, i].astype(float) for i in range(3))
    assert np.corrcoef(total, monthly * tenure)[0, 1] > 0.99
    mtm = x[:, 6] == "month_to_month"
    churn = y == "churn"
    assert churn[mtm].mean() > 2 * churn[x[:, 6] == "two_year"].mean()
    assert np.corrcoef(tenure, churn)[0, 1] < -0.2
    assert churn[x[:, 7] == "electronic_check"].mean() > churn[x[:, 7] == "credit_card"].mean()
    assert [f["name"] for f in FEATURES][:3] == ["tenure_months", "monthly_charges", "total_charges"]
