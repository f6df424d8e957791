"""CORS (api.cors_origins): preflights answered for listed origins only, before authentication; every kind of
answer (the lean hot path's, errors, event streams) carries the headers for a listed origin; nothing at all
without the setting. In-process apps with the model loaded."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from ferry.api import cors
from ferry.main import create_app
from ferry.settings import Settings

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
KEY = "cors-test-key"
# What a page on APP asks before a JSON predict with a deadline and a request id.
PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,x-request-timeout,x-request-id",
}


def _settings(model: Path, tmp: Path, **api: Any) -> Settings:
    return Settings(
        model={"path": model},
        api=api,
        jobs={"runners": 0, "sqlite_path": tmp / "jobs.sqlite3"},
        **({"auth": {"mode": "api_key", "api_keys": AUTH_KEYS}} if api.get("cors_allow_credentials") else {}),
    )


AUTH_KEYS = [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "principal": "web", "scopes": ["predict", "jobs"]}]


Request = tuple[str, str, dict[str, str], Any]


def _exchange(settings: Settings, requests: dict[str, Request]) -> dict[str, httpx.Response]:
    """Each named request (method, path, headers, JSON body) against one app, started (model, job store)."""

    async def go() -> dict[str, httpx.Response]:
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),  # the model and the job store
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
        ):
            out = {}
            for name, (method, path, headers, body) in requests.items():
                out[name] = await client.request(method, path, headers=headers, json=body)
            return out

    return asyncio.run(go())


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def _requests(record: dict[str, Any], origin: str) -> dict[str, Request]:
    o = {"origin": origin}
    return {
        "preflight": ("OPTIONS", "/api/v1/predict", {**o, **PREFLIGHT}, None),
        "preflight events": (
            "OPTIONS",
            "/api/v1/jobs/0123456789abcdef0123456789abcdef/events",
            {**o, "access-control-request-method": "GET", "access-control-request-headers": "last-event-id"},
            None,
        ),
        "hot path predict": ("POST", "/api/v1/predict", o, {"record": record}),
        "v2 infer error": ("POST", "/v2/models/churn/infer", o, {"inputs": "nope"}),
        "validation error": ("POST", "/api/v1/predict", o, {"record": {}}),
        "stream": ("POST", "/api/v1/predict/stream", o, {"records": [record, record]}),
        "unknown job events": ("GET", "/api/v1/jobs/0123456789abcdef0123456789abcdef/events", o, None),
        "plain OPTIONS": ("OPTIONS", "/api/v1/predict", o, None),
    }


def test_origins_must_be_exact_and_never_a_wildcard() -> None:
    for origins, credentials, error in [
        ("*", False, "'\\*' is not accepted"),
        ("*", True, "'\\*' is not accepted"),
        ("https://app.example.com/", False, "is not an origin"),
        ("https://app.example.com/path", False, "is not an origin"),
        ("HTTPS://APP.example.com", False, "is not an origin"),
        ("null", False, "is not an origin"),
        ("", True, "cors_allow_credentials needs api.cors_origins"),
    ]:
        with pytest.raises(ValidationError, match=error):
            Settings(api={"cors_origins": origins, "cors_allow_credentials": credentials})
    api = Settings(api={"cors_origins": "https://a.example, http://localhost:3000 http://[::1]:8080"}).api
    assert api.cors_origins == ["https://a.example", "http://localhost:3000", "http://[::1]:8080"]
    assert Settings().api.cors_origins == [] and not Settings().api.cors_allow_credentials


def test_a_listed_origin_gets_the_allow_headers_on_every_kind_of_answer(
    churn_model: Path, tmp_path: Path, record: dict
) -> None:
    r = _exchange(_settings(churn_model, tmp_path, cors_origins=[APP]), _requests(record, APP))
    preflight = r["preflight"]
    assert (preflight.status_code, preflight.content) == (204, b"")
    assert preflight.headers["access-control-allow-origin"] == APP
    assert preflight.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert set(PREFLIGHT["access-control-request-headers"].split(",")) | {"last-event-id", "authorization"} <= allowed
    assert allowed >= {"x-api-key", "inference-header-content-length", "content-encoding", "traceparent"}
    assert preflight.headers["access-control-max-age"] == str(cors.MAX_AGE_S)
    assert "access-control-allow-credentials" not in preflight.headers
    assert preflight.headers["vary"] == "Origin" and preflight.headers["x-request-id"]
    assert r["preflight events"].status_code == 204

    for name, status in [
        ("hot path predict", 200),
        ("v2 infer error", 400),
        ("validation error", 422),
        ("stream", 200),
        ("unknown job events", 404),
        ("plain OPTIONS", 405),  # not a preflight (no Access-Control-Request-Method): the route's own answer
    ]:
        answer = r[name]
        assert answer.status_code == status, (name, answer.text)
        assert answer.headers["access-control-allow-origin"] == APP, name
        exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
        assert {"X-Request-ID", "Retry-After", "Location", "Inference-Header-Content-Length"} <= exposed, name
        assert "Origin" in answer.headers["vary"], name
        assert "access-control-allow-credentials" not in answer.headers, name
    assert r["stream"].text.startswith("retry: 3000\n\n") and "event: summary" in r["stream"].text


def test_another_origin_gets_no_cors_header_and_a_refused_preflight(
    churn_model: Path, tmp_path: Path, record: dict
) -> None:
    r = _exchange(_settings(churn_model, tmp_path, cors_origins=[APP]), _requests(record, OTHER))
    for name in ("preflight", "preflight events"):
        assert (r[name].status_code, r[name].json()["code"]) == (403, "cors_origin_not_allowed"), name
        assert r[name].json()["request_id"] == r[name].headers["x-request-id"]
    for name, answer in r.items():
        assert _cors_headers(answer) == {}, name
        assert answer.headers["vary"] == "Origin", name  # a cache must not serve this answer to APP's pages
    assert r["hot path predict"].status_code == 200  # served; the browser withholds it from the page


def test_without_origins_no_cors_header_is_ever_sent(churn_model: Path, tmp_path: Path, record: dict) -> None:
    r = _exchange(_settings(churn_model, tmp_path), _requests(record, APP))
    assert r["preflight"].status_code == 405  # the route knows no OPTIONS: what it always answered
    assert (r["hot path predict"].status_code, r["stream"].status_code) == (200, 200)
    for name, answer in r.items():
        assert _cors_headers(answer) == {}, name
        assert "vary" not in answer.headers, name


def test_credentials_and_authentication(churn_model: Path, tmp_path: Path, record: dict) -> None:
    """With credentials allowed, both the preflight and the answer say so, for the exact origin; the preflight
    needs no credential even with authentication on, and a 401 is readable by the page."""
    origins = [APP, "http://localhost:3000"]
    settings = _settings(churn_model, tmp_path, cors_origins=origins, cors_allow_credentials=True)
    o = {"origin": APP}
    r = _exchange(
        settings,
        {
            "preflight": ("OPTIONS", "/api/v1/predict", {**o, **PREFLIGHT}, None),
            "no key": ("POST", "/api/v1/predict", o, {"record": record}),
            "key": ("POST", "/api/v1/predict", {**o, "authorization": f"Bearer {KEY}"}, {"record": record}),
        },
    )
    assert r["preflight"].status_code == 204
    assert (r["no key"].status_code, r["key"].status_code) == (401, 200)
    for name, answer in r.items():
        assert answer.headers["access-control-allow-origin"] == APP, name
        assert answer.headers["access-control-allow-credentials"] == "true", name
    assert "WWW-Authenticate" in r["no key"].headers["access-control-expose-headers"]
