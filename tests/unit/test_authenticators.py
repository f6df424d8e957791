"""Authentication logic in-process: API key lookup, JWT checks with a fake JWKS fetch and clock,
the scope a path needs, where the credential comes from, and the settings that must go together."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from ferry.api.auth import credential_of, scope_for
from ferry.auth import ApiKeys, JwtVerifier, Principal, key_digest, token_scopes
from ferry.errors import AuthUnavailable, Unauthorized
from ferry.settings import ApiKeyEntry, AuthSettings, Settings

ISSUER, AUDIENCE = "https://idp.test/", "ferry"


def test_api_keys_match_by_hash_only() -> None:
    keys = ApiKeys(
        [
            ApiKeyEntry(sha256=key_digest("k-alice"), principal="alice", scopes=["jobs"]),
            ApiKeyEntry(sha256=key_digest("k-ops"), principal="ops", scopes=["admin"]),
        ]
    )
    assert keys.lookup("k-alice") == Principal("alice", frozenset({"jobs"}))
    assert keys.lookup(key_digest("k-alice")) is None, "the stored hash is not a key"
    assert keys.lookup("k-alic") is None and keys.lookup("") is None
    ops = keys.lookup("k-ops")
    assert ops is not None and ops.is_admin and ops.allows("predict") and ops.allows("jobs")
    with pytest.raises(Unauthorized):
        asyncio.run(keys.authenticate("nope"))


def test_api_key_entries_are_validated() -> None:
    with pytest.raises(ValidationError):
        ApiKeyEntry(sha256="abc", principal="a", scopes=["jobs"])
    with pytest.raises(ValidationError):
        ApiKeyEntry(sha256=key_digest("x"), principal="a", scopes=["root"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("claim", "defaults", "expected"),
    [
        ("openid jobs predict", (), {"jobs", "predict"}),
        (["jobs", "email"], (), {"jobs"}),
        (None, ("predict",), {"predict"}),
        (42, (), set()),
        ("admin", (), {"admin"}),
    ],
)
def test_token_scopes(claim: Any, defaults: tuple[str, ...], expected: set[str]) -> None:
    assert token_scopes(claim, defaults) == expected


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/livez", None),
        ("/readyz", None),
        ("/metrics", None),
        ("/api/v1/jobs", "jobs"),
        ("/api/v1/jobs/abc/events", "jobs"),
        ("/api/v1/jobsx", "predict"),
        ("/api/v1/predict", "predict"),
        ("/v2/models/churn/infer", "predict"),
        ("/no/such/route", "predict"),
    ],
)
def test_scope_for(path: str, scope: str | None) -> None:
    assert scope_for(path) == scope


def test_credential_of() -> None:
    assert credential_of({b"authorization": b"Bearer abc"}) == "abc"
    assert credential_of({b"authorization": b"bearer  abc "}) == "abc"
    assert credential_of({b"authorization": b"Basic abc"}) is None
    assert credential_of({b"authorization": b"Bearer"}) is None
    assert credential_of({b"x-api-key": b"k"}) == "k"
    assert credential_of({}) is None


class Idp:
    """Keys and a JWKS fetch that counts its calls, with a clock the test moves."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        self.now = 1000.0
        self.down = False

    def jwks(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise OSError("connection refused")
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [jwk | {"kid": "k1", "use": "sig"}]}

    def token(self, key: Any = None, kid: str = "k1", algorithm: str = "RS256", **claims: Any) -> str:
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 60, "scope": "jobs"}
        return jwt.encode(payload | claims, key or self.key, algorithm=algorithm, headers={"kid": kid})

    def verifier(self, **settings: Any) -> JwtVerifier:
        values = {
            "mode": "jwt",
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_jwks_url": "http://127.0.0.1:1/jwks",
            "jwt_leeway_s": 0,
        }
        return JwtVerifier(AuthSettings(**(values | settings)), fetch=self.jwks, clock=lambda: self.now)


def authenticate(verifier: JwtVerifier, token: str) -> Principal:
    return asyncio.run(verifier.authenticate(token))


def refused(verifier: JwtVerifier, token: str, match: str) -> None:
    with pytest.raises(Unauthorized, match=match) as caught:
        authenticate(verifier, token)
    assert 'error="invalid_token"' in caught.value.headers["www-authenticate"]


def test_a_valid_token_names_its_principal_and_scopes() -> None:
    idp = Idp()
    principal = authenticate(idp.verifier(), idp.token(scope="jobs predict email"))
    assert principal == Principal("alice", frozenset({"jobs", "predict"}))


def test_invalid_tokens_are_refused() -> None:
    idp = Idp()
    verifier = idp.verifier()
    refused(verifier, idp.token(aud="other"), "audience")
    refused(verifier, idp.token(exp=int(time.time()) - 5), "expired")
    refused(verifier, idp.token(iss="https://evil.test/"), "issuer")
    refused(verifier, idp.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "invalid token")
    refused(verifier, idp.token(sub=""), "sub")
    refused(verifier, idp.token(key="k" * 32, algorithm="HS256"), "algorithm")
    refused(verifier, "a.b.c", "malformed")
    es_key = ec.generate_private_key(ec.SECP256R1())
    refused(verifier, idp.token(key=es_key, algorithm="ES256"), "does not match its key")  # k1 is an RSA key


def test_hmac_and_none_are_never_accepted_even_if_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        Idp().verifier(jwt_algorithms=["HS256", "none"])


def test_unknown_key_ids_refetch_at_most_once_per_interval() -> None:
    idp = Idp()
    verifier = idp.verifier(jwks_min_refresh_s=60)
    authenticate(verifier, idp.token())
    assert idp.fetches == 1
    for _ in range(5):
        refused(verifier, idp.token(kid="forged"), "unknown key")
    assert idp.fetches == 1, "no refetch within the interval, however many unknown key ids arrive"
    idp.now += 61
    for _ in range(5):
        refused(verifier, idp.token(kid="forged"), "unknown key")
    assert idp.fetches == 2, "one refetch once the interval passed"
    authenticate(verifier, idp.token())  # known key: no fetch at all
    assert idp.fetches == 2


def test_an_unreachable_issuer_is_503_until_keys_are_known_then_cached_keys_serve() -> None:
    idp = Idp()
    idp.down = True
    verifier = idp.verifier(jwks_min_refresh_s=0)
    with pytest.raises(AuthUnavailable):
        authenticate(verifier, idp.token())
    idp.down = False
    authenticate(verifier, idp.token())
    idp.down = True
    assert authenticate(verifier, idp.token()).name == "alice"


def test_settings_that_must_go_together() -> None:
    with pytest.raises(ValidationError, match="api_keys"):
        Settings(auth={"mode": "api_key"})
    with pytest.raises(ValidationError, match="jwt_issuer"):
        Settings(auth={"mode": "jwt", "jwt_issuer": ISSUER})
    with pytest.raises(ValidationError, match=r"metrics\.port"):
        Settings(port=8000, metrics={"port": 8000})
    assert Settings().auth.mode == "none" and Settings().model.require_card is True
