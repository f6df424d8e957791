"""Shared fixtures. Tier markers come from the directory: tests/<tier>/... gets @pytest.mark.<tier>."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
TIERS = ("unit", "integration", "deploy", "alerts", "live", "image")
CLIENT_TESTS = ROOT / "clients/python/tests"  # the client distribution's own tests: in-process, so unit


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.is_relative_to(CLIENT_TESTS):
            item.add_marker(pytest.mark.unit)
            continue
        parts = path.relative_to(ROOT / "tests").parts
        tier = parts[0] if parts else ""
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/<tier>/ with tier in {TIERS}")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def churn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default churn model and card, built once per test session."""
    from ferry.train import train

    out = tmp_path_factory.mktemp("churn")
    train(out)
    return out / "model.joblib"


@pytest.fixture(scope="session")
def card(churn_model: Path) -> dict:
    return json.loads(churn_model.with_name("model.card.json").read_text())


@pytest.fixture(scope="session")
def record(card: dict) -> dict:
    """A valid record for the default model (the card's example)."""
    return dict(card["example"])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on 127.0.0.1 for the session (each user takes its own key prefix)."""
    from support.redis import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()
