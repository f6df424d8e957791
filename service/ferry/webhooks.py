"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/).

ferry signs every result callback with this module; receivers may import it to verify them. It is
deliberately stdlib-only so that it can be copied into a receiver as a single file.

Signed content is ``f"{webhook-id}.{webhook-timestamp}."`` followed by the raw body; the signature is
base64(HMAC-SHA256(key, content)) sent as ``webhook-signature: v1,<signature>``. Several signatures,
separated by spaces, let a sender rotate keys: every configured key signs, and a receiver accepts the
message if any of them matches any of its keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "headers",
    "parse_secret",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
# The spec asks for 24-64 byte keys; shorter keys are refused because they are guessable, longer ones
# are accepted (HMAC handles them) so a receiver never rejects a sender's otherwise valid key.
MIN_KEY_BYTES = 24
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The message is not authentic, or too old/new to be trusted. ``str(exc)`` says why."""


def parse_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_<base64>`` secret; ``ValueError`` if it is not one."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    encoded += "=" * (-len(encoded) % 4)  # tolerate stripped padding
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64 after the 'whsec_' prefix") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"webhook secret key must be at least {MIN_KEY_BYTES} bytes (got {len(key)})")
    return key


def generate_secret() -> str:
    """A fresh random secret (32-byte key) in the ``whsec_`` format."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def _check_id(msg_id: str) -> None:
    # The id travels in a header: refuse what would corrupt it (or be rejected by an HTTP client).
    if not msg_id or not msg_id.isascii() or not msg_id.isprintable() or " " in msg_id:
        raise ValueError("webhook id must be non-empty printable ASCII without spaces")


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<base64>`` per secret, space-separated."""
    if isinstance(secrets, str):  # a lone str is a Sequence[str] of characters: never what was meant
        secrets = [secrets]
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    _check_id(msg_id)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("webhook timestamp must be a non-negative integer (unix seconds)")
    return " ".join(
        "v1," + base64.b64encode(_signature(parse_secret(s), msg_id, timestamp, body)).decode("ascii") for s in secrets
    )


def headers(secrets: Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers of a signed delivery; ``timestamp`` defaults to now (each attempt is signed afresh)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secrets, msg_id, ts, body),
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Return if the message is authentic and fresh; raise ``WebhookVerificationError`` otherwise.

    ``body`` must be the raw bytes received (not re-serialised JSON). ``secret`` may list several
    secrets during a rotation. The timestamp must be within ``tolerance_s`` of ``now`` either way,
    which bounds how long a captured message can be replayed. A malformed *secret* is a configuration
    error and raises ``ValueError``.
    """
    keys = [parse_secret(s) for s in ([secret] if isinstance(secret, str) else secret)]
    if not keys:
        raise ValueError("at least one webhook secret is needed to verify")
    lowered = {k.lower(): v for k, v in headers.items()}
    values: dict[str, str] = {}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = lowered.get(name)
        if not value:
            raise WebhookVerificationError(f"missing {name} header")
        values[name] = value.strip()
    msg_id, raw_ts, raw_sigs = values["webhook-id"], values["webhook-timestamp"], values["webhook-signature"]

    if not (raw_ts.isascii() and raw_ts.isdigit()):
        raise WebhookVerificationError("webhook-timestamp is not an integer number of seconds")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old (possible replay)")
    if timestamp > current + tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far in the future")

    offered = []
    for item in raw_sigs.split():
        version, _, encoded = item.partition(",")
        if version != "v1":  # other schemes (e.g. v1a, asymmetric) are not ours to judge
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not offered:
        raise WebhookVerificationError("webhook-signature has no v1 signature")
    # Compare every pair without an early exit on the first mismatch; compare_digest keeps each
    # comparison constant-time so the signature cannot be guessed byte by byte.
    matched = False
    for key in keys:
        expected = _signature(key, msg_id, timestamp, body)
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no signature matches (wrong secret, or id, timestamp or body altered)")
