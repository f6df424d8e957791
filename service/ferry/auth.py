"""Who is calling: API keys (stored hashed) and OIDC bearer tokens (JWT, checked against the issuer's JWKS).

Knows nothing of HTTP: ``ferry.api.auth`` takes the credential from the request and turns failures into
401/403 answers. A ``Principal`` owns the jobs it submits; ``None`` as a principal means authentication
is off and every job is everyone's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from ferry.errors import AuthUnavailable, Unauthorized
from ferry.logging import get_logger
from ferry.settings import ApiKeyEntry, AuthSettings

log = get_logger("ferry.auth")

SCOPES = ("predict", "jobs", "admin")
ADMIN = "admin"
# Algorithms never accepted whatever the settings say: 'none' is no signature, and an HMAC algorithm
# would let anyone holding the issuer's *public* key (published in its JWKS) sign tokens.
FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """``admin`` implies every scope."""
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Principal:
        """The principal a credential proves, or raise ``Unauthorized`` (``AuthUnavailable`` when the
        keys needed to decide cannot be fetched)."""


def key_digest(key: str) -> str:
    """How an API key is stored: the sha256 hex digest of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """API keys by sha256. Comparison is constant time and visits every entry, so neither the match
    nor its position leaks through timing."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries = [(entry.sha256.encode(), entry) for entry in entries]
        if not self._entries:
            raise ValueError("no API keys configured")

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> ApiKeys:
        entries = list(settings.api_keys)
        if settings.api_keys_file is not None:
            raw = json.loads(settings.api_keys_file.read_bytes())
            entries += [ApiKeyEntry.model_validate(item) for item in raw]
        return cls(entries)

    def lookup(self, key: str) -> Principal | None:
        digest = key_digest(key).encode()
        found: ApiKeyEntry | None = None
        for stored, entry in self._entries:
            if hmac.compare_digest(stored, digest):
                found = entry
        return None if found is None else Principal(found.principal, frozenset(found.scopes))

    async def authenticate(self, credential: str) -> Principal:
        principal = self.lookup(credential)
        if principal is None:
            raise Unauthorized("invalid API key", headers=_challenge("invalid_token", "invalid API key"))
        return principal


JwksFetch = Callable[[], dict[str, Any]]


class JwtVerifier:
    """Bearer JWTs signed by the issuer's keys, with issuer, audience, expiry and algorithm checked
    by PyJWT. Keys come from the JWKS URL through ``jwt.PyJWKClient`` and are kept in memory; a token
    naming an unknown key id causes a fetch at most once per ``jwks_min_refresh_s`` (key rotation
    works, forged key ids cannot make ferry hammer the issuer)."""

    def __init__(
        self,
        settings: AuthSettings,
        fetch: JwksFetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.jwt_jwks_url and settings.jwt_issuer and settings.jwt_audience
        self.settings = settings
        self.algorithms = [a for a in settings.jwt_algorithms if a not in FORBIDDEN_ALGORITHMS]
        if not self.algorithms:
            raise ValueError("auth.jwt_algorithms names no asymmetric algorithm")
        client = jwt.PyJWKClient(settings.jwt_jwks_url, cache_jwk_set=False, timeout=5)
        self._fetch: JwksFetch = fetch or (lambda: client.fetch_data())
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        """Fetch the JWKS unless another caller did within the minimum interval. Blocking."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.settings.jwks_min_refresh_s:
                return
            self._fetched_at = now
            try:
                data = self._fetch()
                keys = jwt.PyJWKSet.from_dict(data).keys
            except (jwt.PyJWKClientError, jwt.PyJWKSetError, OSError, ValueError) as exc:
                log.error("jwks_fetch_failed", url=self.settings.jwt_jwks_url, error=f"{type(exc).__name__}: {exc}")
                if not self._keys:
                    raise AuthUnavailable(retry_after_s=5) from None
                return  # keep the keys we have
            self._keys = {key.key_id: key for key in keys if key.public_key_use in (None, "sig")}
            log.info("jwks_fetched", keys=len(self._keys))

    def _key_for(self, kid: str | None) -> jwt.PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:  # a token without kid, an issuer with one key
            return next(iter(self._keys.values()))
        return None

    async def authenticate(self, credential: str) -> Principal:
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.PyJWTError:
            raise _invalid("malformed token") from None
        if header.get("alg") not in self.algorithms:
            raise _invalid("token algorithm not accepted")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        key = self._key_for(kid)
        if key is None:
            await asyncio.to_thread(self._refresh)  # urllib blocks: never on the event loop
            key = self._key_for(kid)
            if key is None:
                raise _invalid("token signed by an unknown key")
        if header["alg"] != key.algorithm_name:
            # PyJWT would hand an RSA key to the EC verifier (a TypeError): refuse the mix-up here.
            raise _invalid("token algorithm does not match its key")
        return self.verify(credential, key)

    def verify(self, token: str, key: jwt.PyJWK) -> Principal:
        settings = self.settings
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway_s,
                options={"require": ["exp", "iss", "aud", settings.jwt_principal_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("token expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid("token audience is not this service") from None
        except jwt.InvalidIssuerError:
            raise _invalid("token issuer not accepted") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # a hostile token must never become a 500
            raise _invalid(f"invalid token ({type(exc).__name__})") from None
        name = claims.get(settings.jwt_principal_claim)
        if not isinstance(name, str) or not name:
            raise _invalid(f"token has no {settings.jwt_principal_claim!r} claim")
        return Principal(name, token_scopes(claims.get(settings.jwt_scopes_claim), settings.jwt_default_scopes))


def token_scopes(claim: Any, defaults: Iterable[str] = ()) -> frozenset[str]:
    """ferry's scopes in a token's scope claim (a space-separated string or a list); others are ignored."""
    words = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
    return frozenset(w for w in [*words, *defaults] if w in SCOPES)


def _challenge(error: str, description: str) -> dict[str, str]:
    # RFC 6750 section 3: the description is a quoted string; ours never contains quotes.
    return {"www-authenticate": f'Bearer realm="ferry", error="{error}", error_description="{description}"'}


def _invalid(description: str) -> Unauthorized:
    return Unauthorized(description, headers=_challenge("invalid_token", description))


def authenticator_for(settings: AuthSettings) -> Authenticator | None:
    """The configured authenticator; None when authentication is off."""
    if settings.mode == "api_key":
        return ApiKeys.from_settings(settings)
    if settings.mode == "jwt":
        return JwtVerifier(settings)
    return None
