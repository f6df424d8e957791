"""Standard Webhooks signing: known answers, round trips, rotation, and every way to forge or replay."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ferry import webhooks
from ferry.webhooks import WebhookVerificationError

# The reference vector used by the Standard Webhooks / Svix libraries' own test suites.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000
BODY = b'{"job_id":"j1","status":"succeeded"}'


@pytest.fixture
def secret() -> str:
    return webhooks.generate_secret()


def signed(secrets: list[str], body: bytes = BODY, msg_id: str = "msg_1", ts: int = NOW) -> dict[str, str]:
    return webhooks.headers(secrets, msg_id, body, timestamp=ts)


def test_known_answer_from_the_spec() -> None:
    assert webhooks.sign([SPEC_SECRET], SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    hdrs = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIGNATURE}
    webhooks.verify(SPEC_BODY, hdrs, SPEC_SECRET, now=SPEC_TS)


def test_signature_is_hmac_sha256_of_id_timestamp_body_computed_independently() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    content = b"msg_2Xy.1700000000." + BODY
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    assert webhooks.sign([secret], "msg_2Xy", 1700000000, BODY) == expected


def test_headers_carry_id_timestamp_signature_and_json_type(secret: str) -> None:
    hdrs = signed([secret])
    assert hdrs["webhook-id"] == "msg_1"
    assert hdrs["webhook-timestamp"] == str(NOW)
    assert hdrs["webhook-signature"] == webhooks.sign([secret], "msg_1", NOW, BODY)
    assert hdrs["content-type"] == "application/json"


def test_headers_default_to_the_current_time(secret: str) -> None:
    import time

    before = int(time.time())
    ts = int(webhooks.headers([secret], "msg_1", BODY)["webhook-timestamp"])
    assert before <= ts <= int(time.time())


def test_round_trip_with_case_insensitive_headers(secret: str) -> None:
    hdrs = {k.title(): v for k, v in signed([secret]).items()}  # Webhook-Id etc., as proxies rewrite them
    webhooks.verify(BODY, hdrs, secret, now=NOW)


def test_rotation_every_secret_signs_and_either_verifies() -> None:
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    hdrs = signed([old, new])
    assert len(hdrs["webhook-signature"].split(" ")) == 2
    webhooks.verify(BODY, hdrs, old, now=NOW)
    webhooks.verify(BODY, hdrs, new, now=NOW)
    webhooks.verify(BODY, hdrs, [webhooks.generate_secret(), new], now=NOW)  # receiver with several keys
    # A receiver that only knows the new key still accepts a sender that has not rotated yet, and vice versa.
    webhooks.verify(BODY, signed([old]), [old, new], now=NOW)


def test_wrong_secret_rejected(secret: str) -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        webhooks.verify(BODY, signed([secret]), webhooks.generate_secret(), now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("body", None), ("webhook-id", "msg_2"), ("webhook-timestamp", str(NOW + 1))],
)
def test_tampering_rejected(secret: str, field: str, value: str | None) -> None:
    hdrs = signed([secret])
    body = BODY
    if field == "body":
        body = BODY.replace(b"succeeded", b"failed")
    else:
        hdrs[field] = value
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        webhooks.verify(body, hdrs, secret, now=NOW)


@pytest.mark.parametrize(("offset", "reason"), [(-301, "too old"), (301, "future")])
def test_timestamp_outside_tolerance_rejected_even_when_correctly_signed(secret: str, offset: int, reason: str) -> None:
    hdrs = signed([secret], ts=NOW + offset)
    with pytest.raises(WebhookVerificationError, match=reason):
        webhooks.verify(BODY, hdrs, secret, now=NOW)
    webhooks.verify(BODY, hdrs, secret, now=NOW, tolerance_s=abs(offset))  # the bound is inclusive


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_rejected(secret: str, header: str) -> None:
    hdrs = signed([secret])
    del hdrs[header]
    with pytest.raises(WebhookVerificationError, match=f"missing {header}"):
        webhooks.verify(BODY, hdrs, secret, now=NOW)


@pytest.mark.parametrize(
    "ts", ["1700000000.5", "-1700000000", "abc", "1e9", "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660"]
)
def test_malformed_timestamp_rejected(secret: str, ts: str) -> None:
    hdrs = signed([secret])
    hdrs["webhook-timestamp"] = ts
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        webhooks.verify(BODY, hdrs, secret, now=NOW)


@pytest.mark.parametrize("sig", ["v2,AAAA", "v1,not-base64!", "garbage", "v1a,abc"])
def test_signature_header_without_usable_v1_rejected(secret: str, sig: str) -> None:
    hdrs = signed([secret])
    hdrs["webhook-signature"] = sig
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        webhooks.verify(BODY, hdrs, secret, now=NOW)


def test_unknown_versions_beside_a_valid_signature_are_ignored(secret: str) -> None:
    hdrs = signed([secret])
    hdrs["webhook-signature"] = "v1a,xyz " + hdrs["webhook-signature"] + " v1,AAAA"
    webhooks.verify(BODY, hdrs, secret, now=NOW)


@pytest.mark.parametrize(
    "bad",
    ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_***", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_parse_secret_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        webhooks.parse_secret(bad)


def test_parse_secret_and_generate_secret() -> None:
    assert webhooks.parse_secret(SPEC_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    generated = webhooks.generate_secret()
    assert generated.startswith("whsec_")
    assert len(webhooks.parse_secret(generated)) == 32
    assert generated != webhooks.generate_secret()
    # Stripped base64 padding is tolerated: the key is the same.
    padded = "whsec_" + base64.b64encode(bytes(range(25))).decode()
    assert padded.endswith("=")
    assert webhooks.parse_secret(padded.rstrip("=")) == bytes(range(25))


def test_sign_refuses_what_would_not_be_a_valid_message(secret: str) -> None:
    with pytest.raises(ValueError, match="at least one"):
        webhooks.sign([], "msg_1", NOW, BODY)
    with pytest.raises(ValueError, match="webhook id"):
        webhooks.sign([secret], "msg 1\r\nx-evil: 1", NOW, BODY)
    # A bare string is one secret, not a sequence of one-character secrets.
    assert webhooks.sign(secret, "msg_1", NOW, BODY) == webhooks.sign([secret], "msg_1", NOW, BODY)  # type: ignore[arg-type]


def test_verify_with_a_malformed_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        webhooks.verify(BODY, signed([secret]), "not-a-secret", now=NOW)
