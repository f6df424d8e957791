"""Authentication of HTTP requests: the credential from the request, the scope a path needs, 401/403.

``RequestMiddleware`` calls :func:`authenticate` after its body guards and before routing (so refusals
are rendered, counted and logged like every error, on the lean hot path and the FastAPI routes alike),
so an unauthenticated request never gets its body parsed.
Routes read the principal with ``PrincipalDep``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.types import Scope

from ferry.auth import Authenticator, Principal
from ferry.errors import Forbidden, Unauthorized

# Paths anyone may call: probes (the kubelet has no credentials), metrics (scraped in-cluster; move them
# to their own port with metrics.port), and the API description when it is switched on.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
JOBS_PREFIX = "/api/v1/jobs"
_CHALLENGE = {"www-authenticate": 'Bearer realm="ferry"'}
_STATE_KEY = "principal"


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for open paths. Anything else, unknown paths included, needs
    'predict', so an anonymous caller cannot even map which routes exist."""
    if path in OPEN_PATHS:
        return None
    if path == JOBS_PREFIX or path.startswith(JOBS_PREFIX + "/"):
        return "jobs"
    return "predict"


def credential_of(headers: dict[bytes, bytes]) -> str | None:
    """``Authorization: Bearer <credential>``, or an ``X-API-Key`` header."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() or None if key is not None else None


async def authenticate(authenticator: Authenticator, scope: Scope, headers: dict[bytes, bytes]) -> None:
    """Refuse (401/403) a request whose path needs a scope its credential does not grant; else put the
    principal in the request state. ``headers``: the request's headers as a dict (the last of repeats)."""
    needed = scope_for(scope.get("path", ""))
    if needed is None:
        return
    credential = credential_of(headers)
    if credential is None:
        raise Unauthorized(headers=_CHALLENGE)
    principal = await authenticator.authenticate(credential)
    if not principal.allows(needed):
        raise Forbidden(
            f"this operation needs the {needed!r} scope",
            headers={"www-authenticate": f'Bearer realm="ferry", error="insufficient_scope", scope="{needed}"'},
        )
    scope.setdefault("state", {})[_STATE_KEY] = principal


async def get_principal(request: Request) -> Principal | None:
    """The authenticated caller; None when authentication is off."""
    state: dict[str, Any] = request.scope.get("state", {})
    principal = state.get(_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


PrincipalDep = Annotated[Principal | None, Depends(get_principal)]
