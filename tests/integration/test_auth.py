"""Authentication, job ownership and quotas against the real service (gunicorn, 2 workers).

API keys come from a file (as mounted from a Secret) and from the environment; JWTs are signed by a
key whose JWKS this test serves on 127.0.0.1, as an OIDC issuer would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ferry.auth import key_digest
from support.server import REPO, Server, free_port

KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
    "carol": "carol-key-0123456789",
    "erin": "erin-key-0123456789",
}
ADMIN_KEY = "admin-key-0123456789abcdef"
PER_PRINCIPAL = 3
PER_PRINCIPAL_BYTES = 200_000


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def api_key_server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("auth")
    keys_file = workdir / "api-keys.json"
    keys_file.write_text(
        json.dumps(
            [
                {"sha256": key_digest(KEYS["alice"]), "principal": "alice", "scopes": ["predict", "jobs"]},
                {"sha256": key_digest(KEYS["bob"]), "principal": "bob", "scopes": ["jobs"]},
                {"sha256": key_digest(KEYS["carol"]), "principal": "carol", "scopes": ["jobs"]},
                {"sha256": key_digest(KEYS["erin"]), "principal": "erin", "scopes": ["jobs"]},
            ]
        )
    )
    env = {
        "FERRY_AUTH__MODE": "api_key",
        "FERRY_AUTH__API_KEYS_FILE": str(keys_file),
        "FERRY_AUTH__API_KEYS": json.dumps(
            [{"sha256": key_digest(ADMIN_KEY), "principal": "ops", "scopes": ["admin"]}]
        ),
        "FERRY_JOBS__RUNNERS": "0",  # jobs stay queued: quotas and cancel see them
        "FERRY_JOBS__MAX_QUEUED_PER_PRINCIPAL": str(PER_PRINCIPAL),
        "FERRY_JOBS__MAX_STORE_BYTES_PER_PRINCIPAL": str(PER_PRINCIPAL_BYTES),
        "FERRY_API__DOCS_ENABLED": "false",
        "FERRY_METRICS__PORT": str(free_port()),
    }
    srv = Server(workdir, churn_model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def submit(url: str, key: str | None, record: dict, idempotency_key: str | None = None) -> httpx.Response:
    headers = bearer(key) if key else {}
    if idempotency_key:
        headers["idempotency-key"] = idempotency_key
    return httpx.post(f"{url}/api/v1/jobs", json={"records": [record]}, headers=headers, timeout=10)


def test_no_or_wrong_credentials_are_401_and_probes_stay_open(api_key_server: Server, record: dict) -> None:
    url = api_key_server.url
    for headers in ({}, bearer("not-a-key"), {"authorization": "Basic YWxpY2U6eA=="}, {"x-api-key": "nope"}):
        for method, path in (("POST", "/api/v1/predict"), ("GET", "/api/v1/jobs/" + "0" * 32), ("GET", "/v2")):
            response = httpx.request(method, url + path, json={"record": record}, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"].startswith('Bearer realm="ferry"')
            body = response.json()
            assert body["code"] == "unauthorized" and body["request_id"] == response.headers["x-request-id"]
    assert httpx.get(url + "/livez").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    # The right key, in either header, passes.
    assert (
        httpx.post(url + "/api/v1/predict", json={"record": record}, headers=bearer(KEYS["alice"])).status_code == 200
    )
    ok = httpx.post(url + "/api/v1/predict", json={"record": record}, headers={"x-api-key": KEYS["alice"]})
    assert ok.status_code == 200


def test_a_key_without_the_scope_is_403(api_key_server: Server, record: dict) -> None:
    response = httpx.post(api_key_server.url + "/api/v1/predict", json={"record": record}, headers=bearer(KEYS["bob"]))
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_principals_see_only_their_own_jobs(api_key_server: Server, record: dict) -> None:
    url = api_key_server.url
    created = submit(url, KEYS["alice"], record)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job_url = f"{url}/api/v1/jobs/{job_id}"
    bob = bearer(KEYS["bob"])
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/callback/redeliver"), ("DELETE", "")):
        response = httpx.request(method, job_url + path, headers=bob)
        assert (response.status_code, response.json()["code"]) == (404, "job_not_found"), (method, path)
    # Exactly what a job that does not exist answers: no oracle for other principals' ids.
    assert (
        httpx.get(f"{url}/api/v1/jobs/{'0' * 32}", headers=bob).json()["message"]
        == httpx.get(job_url, headers=bob).json()["message"]
    )
    assert httpx.get(job_url, headers=bearer(KEYS["alice"])).json()["status"] == "queued"
    assert httpx.get(job_url, headers=bearer(ADMIN_KEY)).status_code == 200  # admin sees every job
    assert httpx.delete(job_url, headers=bearer(KEYS["alice"])).json()["status"] == "canceled"


def test_idempotency_keys_are_per_principal(api_key_server: Server, record: dict) -> None:
    url = api_key_server.url
    first = submit(url, KEYS["alice"], record, "order-12345")
    squatter = submit(url, KEYS["bob"], {**record, "tenure_months": 1}, "order-12345")
    assert first.status_code == squatter.status_code == 202, (first.text, squatter.text)
    assert first.json()["id"] != squatter.json()["id"]
    assert "idempotent-replayed" not in first.headers and "idempotent-replayed" not in squatter.headers
    replay = submit(url, KEYS["alice"], record, "order-12345")
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    for response in (first, squatter):
        httpx.delete(f"{url}/api/v1/jobs/{response.json()['id']}", headers=bearer(ADMIN_KEY))


def test_queued_jobs_per_principal_are_capped_with_429(api_key_server: Server, record: dict) -> None:
    url = api_key_server.url
    accepted = [submit(url, KEYS["carol"], record) for _ in range(PER_PRINCIPAL)]
    assert [r.status_code for r in accepted] == [202] * PER_PRINCIPAL
    refused = submit(url, KEYS["carol"], record)
    assert (refused.status_code, refused.json()["code"]) == (429, "job_quota_exceeded"), refused.text
    assert int(refused.headers["retry-after"]) >= 1
    # Another principal's queue is its own.
    other = submit(url, KEYS["bob"], record)
    assert other.status_code == 202, other.text
    # A canceled job leaves the queue, and the principal may submit again.
    httpx.delete(f"{url}/api/v1/jobs/{accepted[0].json()['id']}", headers=bearer(KEYS["carol"]))
    assert submit(url, KEYS["carol"], record).status_code == 202


def test_a_principals_share_of_the_store_is_capped_with_429(api_key_server: Server, record: dict) -> None:
    """Canceled jobs leave the queue but stay (with their input) until they expire: they still count."""
    url, erin = api_key_server.url, bearer(KEYS["erin"])
    body = {"records": [record] * 100}  # about 20 kB of input
    statuses = []
    for _ in range(20):
        response = httpx.post(f"{url}/api/v1/jobs", json=body, headers=erin)
        statuses.append(response.status_code)
        if response.status_code != 202:
            break
        httpx.delete(f"{url}/api/v1/jobs/{response.json()['id']}", headers=erin)
    assert statuses[-1] == 429 and 3 <= len(statuses) < 20, statuses
    assert response.json()["code"] == "job_store_full" and int(response.headers["retry-after"]) >= 1
    assert "your jobs" in response.json()["message"]
    other = httpx.post(f"{url}/api/v1/jobs", json=body, headers=bearer(KEYS["bob"]))
    assert other.status_code == 202, other.text


def test_docs_off_and_metrics_only_on_their_own_port(api_key_server: Server) -> None:
    url = api_key_server.url
    for path in ("/docs", "/openapi.json", "/metrics"):
        assert httpx.get(url + path, headers=bearer(ADMIN_KEY)).status_code == 404, path
    metrics_url = f"http://127.0.0.1:{api_key_server.env['FERRY_METRICS__PORT']}/metrics"
    livez = 'ferry_http_requests_total{method="GET",route="/livez",status_class="2xx"}'
    before = [line for line in httpx.get(metrics_url).text.splitlines() if line.startswith(livez)]
    for _ in range(20):  # spread over both workers
        httpx.get(url + "/livez")
    for _ in range(6):  # whichever worker answers on the metrics port (SO_REUSEPORT) counts every worker's requests
        response = httpx.get(metrics_url)
        assert response.status_code == 200
        after = [line for line in response.text.splitlines() if line.startswith(livez)]
        assert after and float(after[0].split()[-1]) >= 20 + (float(before[0].split()[-1]) if before else 0)
    assert httpx.get(metrics_url.replace("/metrics", "/api/v1/jobs")).status_code == 404


# -- JWT ---------------------------------------------------------------------------------------------
ISSUER = "https://idp.test/"
AUDIENCE = "ferry-api"


class Issuer:
    """An OIDC issuer's JWKS endpoint on 127.0.0.1 and the private key that signs its tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [jwk | {"kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, key: Any = None, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "scope": "jobs"}
        return jwt.encode(payload | claims, key or self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    idp = Issuer()
    yield idp
    idp.httpd.shutdown()
    idp.httpd.server_close()


@pytest.fixture(scope="module")
def jwt_server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Server]:
    env = {
        "FERRY_AUTH__MODE": "jwt",
        "FERRY_AUTH__JWT_ISSUER": ISSUER,
        "FERRY_AUTH__JWT_AUDIENCE": AUDIENCE,
        "FERRY_AUTH__JWT_JWKS_URL": issuer.jwks_url,
        "FERRY_AUTH__JWT_LEEWAY_S": "0",
        "FERRY_JOBS__RUNNERS": "0",
    }
    srv = Server(tmp_path_factory.mktemp("jwt"), churn_model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def test_the_api_description_declares_bearer_auth(jwt_server: Server) -> None:
    spec = httpx.get(jwt_server.url + "/openapi.json").json()  # open: docs are on by default
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key or an OIDC access token.",
    }
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/livez"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/api/v1/jobs"]["post"]


def test_jwt_checked_for_signature_issuer_audience_and_expiry(jwt_server: Server, issuer: Issuer, record: dict) -> None:
    url = jwt_server.url
    good = submit(url, issuer.token(), record)
    assert good.status_code == 202, good.text
    job_url = f"{url}/api/v1/jobs/{good.json()['id']}"
    assert httpx.get(job_url, headers=bearer(issuer.token())).status_code == 200
    other_subject = httpx.get(job_url, headers=bearer(issuer.token(sub="mallory")))
    assert other_subject.status_code == 404, "jobs belong to the token's subject"
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "wrong audience": issuer.token(aud="another-service"),
        "expired": issuer.token(exp=int(time.time()) - 60),
        "wrong issuer": issuer.token(iss="https://evil.test/"),
        "foreign signature": issuer.token(key=forger),
        "unknown key id": issuer.token(kid="k2"),
        "no subject": issuer.token(sub=None),
        "HMAC-signed": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300},
            "a-shared-secret-nobody-should-accept",
            algorithm="HS256",
            headers={"kid": "k1"},
        ),
        "garbage": "not.a.token",
    }
    fetches = issuer.fetches
    for why, token in bad.items():
        response = submit(url, token, record)
        assert response.status_code == 401, (why, response.text)
        assert response.json()["code"] == "unauthorized"
        assert 'error="invalid_token"' in response.headers["www-authenticate"], why
    assert issuer.fetches - fetches <= 2, "an unknown key id must not refetch the JWKS on every request"
    no_scope = submit(url, issuer.token(scope="openid"), record)
    assert (no_scope.status_code, no_scope.json()["code"]) == (403, "forbidden")


def test_the_client_and_the_cli_send_a_key(api_key_server: Server, record: dict, tmp_path: Path) -> None:
    from ferry_client import Client, FerryClientError

    url = api_key_server.url
    with Client(url, token=KEYS["alice"]) as client:
        assert client.predict(record)["prediction"] in ("churn", "stay")
        job = client.submit_job([record])
    with Client(url) as anonymous, pytest.raises(FerryClientError) as caught:
        anonymous.predict(record)
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["PYTHONPATH"] = str(REPO / "service")
    argv = [sys.executable, "-m", "ferry", "jobs", "status", "--url", url, job["id"]]
    as_alice = subprocess.run(argv, env=env | {"FERRY_TOKEN": KEYS["alice"]}, capture_output=True, text=True)
    assert as_alice.returncode == 0, as_alice.stderr
    assert json.loads(as_alice.stdout)["id"] == job["id"]
    as_bob = subprocess.run([*argv, "--token", KEYS["bob"]], env=env, capture_output=True, text=True)
    assert as_bob.returncode == 1 and "job_not_found" in as_bob.stderr + as_bob.stdout
