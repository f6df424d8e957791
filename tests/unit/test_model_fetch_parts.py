"""``ferry model fetch`` pieces in-process: URLs and redaction, backoff and the retry loop (fake
sleep, seeded randomness), obstore error summaries, the landing file, option checks."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from ferry.card import card_path_for
from ferry.cli import main
from ferry.model_fetch import FetchOptions
from ferry.model_fetch.command import _check_card, make_plan
from ferry.model_fetch.failures import (
    SourceRefused,
    SourceUnavailable,
    UsageError,
    VerificationFailed,
)
from ferry.model_fetch.landing import Landing, remove_leftovers
from ferry.model_fetch.locations import card_location, parse_location, redact_text, redact_url
from ferry.model_fetch.retry import RETRY_AFTER_CAP_S, RetryPolicy, Transient, with_retries
from ferry.model_fetch.sources import S3Source, _store_failure, retried_status, summarize_store_error

SHA = "ab" * 32

# Real obstore 0.12 messages (first line and debug dump), captured against moto and a closed port.
S3_404 = (
    "Object at location churn/v2/model.joblib not found: Error performing GET "
    "http://127.0.0.1:34429/models/churn/v2/model.joblib in 23.6ms - Server returned non-2xx status code: "
    '404 Not Found: <?xml version="1.0" encoding="utf-8"?>\n<Error><Code>NoSuchKey</Code><Message>The '
    "specified key does not exist.</Message><Key>churn/v2/model.joblib</Key></Error>\n\nDebug source:\n"
    'NotFound {\n    path: "churn/v2/model.joblib",\n    source: RetryError(...)\n}'
)
S3_REFUSED = (
    "Generic S3 error: Error performing GET http://127.0.0.1:1/models/x in 368.667µs - HTTP error: error "
    'sending request\n\nDebug source:\nGeneric {\n    store: "S3",\n    source: RetryError(\n'
    "        inner: Http(HttpError { kind: Connect, source: reqwest::Error { kind: Request, source: "
    'hyper_util::client::legacy::Error(Connect, ConnectError("tcp connect error", 127.0.0.1:1, Os { '
    'code: 111, kind: ConnectionRefused, message: "Connection refused" })) } })\n    )\n}'
)
S3_403 = (
    "The operation lacked the necessary privileges to complete for path m: Error performing GET "
    "http://127.0.0.1:56371/bkt/m in 39.4ms - Server returned non-2xx status code: 403 Forbidden: "
    '<?xml version="1.0" encoding="utf-8"?>\n<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access '
    "Key Id you provided does not exist in our records.</Message></Error>\n\nDebug source:\nPermissionDenied {}"
)


# --- locations --------------------------------------------------------------------------------


def test_locations_of_each_scheme() -> None:
    https = parse_location("https://models.example.com/churn/v3/model.joblib", allow_http=False)
    assert (https.scheme, https.host, https.path, https.file_name) == (
        "https",
        "models.example.com",
        "/churn/v3/model.joblib",
        "model.joblib",
    )
    s3 = parse_location("s3://ferry-models/churn/v3/model.joblib", allow_http=False)
    assert (s3.scheme, s3.host, s3.path) == ("s3", "ferry-models", "churn/v3/model.joblib")
    assert parse_location("http://10.0.0.1:8080/m.joblib", allow_http=True).scheme == "http"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host/model.joblib", "--allow-http"),
        ("ftp://host/model.joblib", "unsupported scheme"),
        ("model.joblib", "unsupported scheme"),
        ("https:///model.joblib", "no host"),
        ("https://host/models/", "folder"),
        ("https://host:port/model.joblib", "not a URL"),
        ("s3://bucket", "s3://bucket/key"),
        ("s3://bucket/folder/", "s3://bucket/key"),
        ("s3://bucket/model.joblib?versionId=3", "no query"),
        ("s3://key:secret@bucket/model.joblib", "no query, fragment or credentials"),
    ],
)
def test_unusable_urls_are_usage_errors(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_location(url, allow_http=False)
    assert "secret" not in str(caught.value)


def test_the_card_is_looked_for_where_the_service_looks_for_it() -> None:
    for name in ("model.joblib", "churn.v2.joblib", "model"):
        card = card_location(parse_location(f"https://h/a/{name}", allow_http=False))
        assert card.url == f"https://h/a/{card_path_for(Path(name)).name}"
    assert card_location(parse_location("https://h/m.joblib", allow_http=False)).url == "https://h/m.card.json"
    assert card_location(parse_location("s3://b/m.joblib", allow_http=False)).url == "s3://b/m.card.json"
    nested = card_location(parse_location("s3://b/x/y/m.joblib", allow_http=False))
    assert (nested.url, nested.path) == ("s3://b/x/y/m.card.json", "x/y/m.card.json")
    keeps_credentials = card_location(parse_location("https://u:p@h:8443/a/m.joblib", allow_http=False))
    assert keeps_credentials.url == "https://u:p@h:8443/a/m.card.json"


def test_a_signed_url_has_no_default_card() -> None:
    signed = parse_location("https://h/m.joblib?X-Amz-Signature=abc", allow_http=False)
    with pytest.raises(UsageError, match="--card-url") as caught:
        card_location(signed)
    assert "abc" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("https://h/m.joblib", "https://h/m.joblib"),
        ("https://user:pw@h:8443/m.joblib", "https://user:REDACTED@h:8443/m.joblib"),
        ("https://ghp_token@h/m.joblib", "https://REDACTED@h/m.joblib"),
        (
            "https://h/m.joblib?X-Amz-Signature=s&X-Amz-Credential=c",
            "https://h/m.joblib?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED",
        ),
        ("https://h/m.joblib?sv=1&sig=abc#frag", "https://h/m.joblib?sv=REDACTED&sig=REDACTED"),
        ("https://u:p@[::1]:9000/m", "https://u:REDACTED@[::1]:9000/m"),
        ("https://h/m?opaque-token", "https://h/m?REDACTED"),
        ("https://h/m?a=1&&b", "https://h/m?a=REDACTED&REDACTED"),
        ("s3://bucket/key", "s3://bucket/key"),
    ],
)
def test_redaction(url: str, printed: str) -> None:
    assert redact_url(url) == printed


def test_redaction_inside_messages() -> None:
    text = "GET https://u:hunter2@h/m?sig=s3cr3t failed; then http://other/x?a=1"
    assert redact_text(text) == "GET https://u:REDACTED@h/m?sig=REDACTED failed; then http://other/x?a=REDACTED"


# --- backoff and the retry loop ---------------------------------------------------------------


def test_full_jitter_stays_under_the_doubling_ceiling() -> None:
    policy = RetryPolicy(retries=10, base_s=1.0, max_s=30.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (60, 30.0), (10_000, 30.0)]:
        delays = [policy.delay(attempt, rng=rng) for _ in range(300)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # jitter covers the whole range, not a fixed fraction


def test_retry_after_is_a_lower_bound_with_a_cap() -> None:
    policy = RetryPolicy(base_s=0.01, max_s=0.05)
    assert policy.delay(1, retry_after_s=2.0, rng=random.Random(1)) == 2.0
    assert policy.delay(1, retry_after_s=3600.0, rng=random.Random(1)) == RETRY_AFTER_CAP_S
    assert policy.delay(1, retry_after_s=0.0, rng=random.Random(1)) <= 0.01
    with pytest.raises(ValueError, match="start at 1"):
        policy.delay(0)


def test_transient_failures_are_retried_with_backoff_then_succeed() -> None:
    slept: list[float] = []
    retried: list[tuple[int, str, float]] = []
    answers: list[object] = [Transient("503"), Transient("503", retry_after_s=2.0), "bytes"]

    def attempt() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    result = with_retries(
        attempt,
        RetryPolicy(retries=5, base_s=1.0, max_s=30.0),
        what="https://h/m",
        on_retry=lambda n, exc, delay: retried.append((n, exc.message, delay)),
        sleep=slept.append,
        rng=random.Random(3),
    )
    assert result == "bytes"
    assert [n for n, _, _ in retried] == [1, 2]
    assert slept == [delay for _, _, delay in retried]
    assert slept[0] <= 1.0 and slept[1] >= 2.0  # the second honours Retry-After


def test_retries_run_out_with_the_last_error_named() -> None:
    slept: list[float] = []
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise Transient(f"404 Not Found #{len(calls)}")

    with pytest.raises(SourceUnavailable) as caught:
        with_retries(attempt, RetryPolicy(retries=2), what="s3://b/k", sleep=slept.append, rng=random.Random(0))
    assert str(caught.value) == "cannot fetch s3://b/k after 3 attempts: 404 Not Found #3"
    assert len(calls) == 3 and len(slept) == 2
    with pytest.raises(SourceUnavailable, match="after 1 attempt: 404"):
        with_retries(attempt, RetryPolicy(retries=0), what="s3://b/k", sleep=slept.append)


def test_refusals_and_verification_failures_are_not_retried() -> None:
    for failure in (SourceRefused("403"), VerificationFailed("sha256 mismatch")):
        slept: list[float] = []

        def attempt(failure: Exception = failure) -> None:
            raise failure

        with pytest.raises(type(failure)):
            with_retries(attempt, RetryPolicy(retries=5), what="u", sleep=slept.append)
        assert slept == []


@pytest.mark.parametrize(("status", "retried"), [(404, True), (408, True), (429, True), (500, True), (503, True),
                                                 (400, False), (401, False), (403, False), (410, False)])  # fmt: skip
def test_which_statuses_are_retried(status: int, retried: bool) -> None:
    assert retried_status(status) is retried


# --- s3 errors ------------------------------------------------------------------------------


def test_obstore_errors_become_one_line() -> None:
    assert summarize_store_error(S3_404) == (
        "404 Not Found (NoSuchKey: The specified key does not exist.) "
        "(GET http://127.0.0.1:34429/models/churn/v2/model.joblib)"
    )
    assert summarize_store_error(S3_REFUSED) == (
        "HTTP error: error sending request: Connection refused (GET http://127.0.0.1:1/models/x)"
    )
    assert summarize_store_error("just one line") == "just one line"


def test_obstore_errors_are_sorted_into_retried_and_refused() -> None:
    location = parse_location("s3://bkt/m", allow_http=False)
    assert isinstance(_store_failure(FileNotFoundError(S3_404), location), Transient)
    assert isinstance(_store_failure(GenericError(S3_REFUSED), location), Transient)
    assert isinstance(
        _store_failure(GenericError(S3_404.replace("404 Not Found", "503 Slow Down")), location), Transient
    )
    for refused in (PermissionDeniedError(S3_403), UnauthenticatedError(S3_403)):
        failure = _store_failure(refused, location)
        assert isinstance(failure, SourceRefused) and "access denied" in str(failure)
    bad_request = _store_failure(GenericError(S3_404.replace("404 Not Found", "400 Bad Request")), location)
    assert isinstance(bad_request, SourceRefused)


def test_a_plain_http_s3_endpoint_needs_allow_http() -> None:
    location = parse_location("s3://bkt/m", allow_http=False)
    with pytest.raises(UsageError, match="--allow-http"):
        S3Source(location, allow_http=False, timeout_s=1, environ={"AWS_ENDPOINT_URL": "http://minio:9000"})
    S3Source(location, allow_http=True, timeout_s=1, environ={"AWS_ENDPOINT_URL": "http://minio:9000"})
    S3Source(location, allow_http=False, timeout_s=1, environ={"AWS_ENDPOINT_URL": "https://minio:9000"})


# --- the landing file -----------------------------------------------------------------------


def test_a_landing_is_invisible_until_committed(tmp_path: Path) -> None:
    landing = Landing(tmp_path, "model.joblib", max_bytes=None, what="u")
    landing.restart()
    landing.write(b"partial garbage")
    landing.restart()  # a retry starts over: the garbage is neither kept nor hashed
    landing.write(b"model ")
    landing.write(memoryview(b"bytes"))
    landed = landing.finish()
    assert landed.sha256 == hashlib.sha256(b"model bytes").hexdigest() and landed.size == 11
    [temp] = tmp_path.iterdir()
    assert temp.name.startswith(".model.joblib.") and temp.name.endswith(".part")
    assert not (tmp_path / "model.joblib").exists()
    path = landing.commit()
    assert path == tmp_path / "model.joblib" and path.read_bytes() == b"model bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["model.joblib"]


def test_a_discarded_landing_leaves_nothing(tmp_path: Path) -> None:
    landing = Landing(tmp_path, "model.joblib", max_bytes=None, what="u")
    landing.restart()
    landing.write(b"x" * 10)
    landing.discard()
    landing.discard()
    assert list(tmp_path.iterdir()) == []


def test_max_bytes_is_checked_on_the_announcement_and_on_the_bytes(tmp_path: Path) -> None:
    landing = Landing(tmp_path, "model.joblib", max_bytes=10, what="https://h/m")
    with pytest.raises(VerificationFailed, match="is 11 bytes, more than the 10 allowed"):
        landing.expect_size(11)
    landing.expect_size(10)
    landing.expect_size(None)
    landing.restart()
    landing.write(b"x" * 10)
    with pytest.raises(VerificationFailed, match="sent more than the 10 bytes allowed"):
        landing.write(b"x")


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    for name in (".model.joblib.abc123.part", ".model.card.json.x.part", ".other.joblib.y.part", "model.joblib"):
        (tmp_path / name).write_bytes(b"")
    removed = remove_leftovers(tmp_path, ["model.joblib", "model.card.json"])
    assert sorted(p.name for p in removed) == [".model.card.json.x.part", ".model.joblib.abc123.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.joblib.y.part", "model.joblib"]


# --- options --------------------------------------------------------------------------------


def test_the_plan_names_the_files_the_service_reads(tmp_path: Path) -> None:
    plan = make_plan(FetchOptions(url="s3://b/v3/churn.joblib", sha256=SHA.upper(), out=tmp_path))
    assert (plan.model_name, plan.card_name, plan.sha256) == ("model.joblib", "model.card.json", SHA)
    assert plan.card is not None and plan.card.url == "s3://b/v3/churn.card.json"
    named = make_plan(FetchOptions(url="s3://b/churn.joblib", sha256=SHA, out=tmp_path, name="churn-v3.joblib"))
    assert named.card_name == "churn-v3.card.json" == card_path_for(Path("churn-v3.joblib")).name
    override = make_plan(FetchOptions(url="https://h/m?sig=1", sha256=SHA, out=tmp_path, card_url="https://h/c.json"))
    assert override.card is not None and override.card.url == "https://h/c.json"
    assert make_plan(FetchOptions(url="https://h/m?sig=1", sha256=SHA, out=tmp_path, card=False)).card is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sha256": "abc"}, "64 hexadecimal"),
        ({"sha256": "g" * 64}, "64 hexadecimal"),
        ({"name": "../model.joblib"}, "plain file name"),
        ({"name": ".hidden"}, "plain file name"),
        ({"name": "model.card.json"}, "plain file name"),
        ({"max_bytes": 0}, "at least 1"),
        ({"card_url": "ftp://h/c.json"}, "--card-url"),
    ],
)
def test_bad_options_are_usage_errors(changes: dict, message: str, tmp_path: Path) -> None:
    options = {"url": "https://h/m.joblib", "sha256": SHA, "out": tmp_path, **changes}
    with pytest.raises(UsageError, match=message):
        make_plan(FetchOptions(**options))


@pytest.mark.parametrize(
    "extra",
    [["--retries", "-1"], ["--timeout", "0"], ["--max-bytes", "0"], ["--no-card", "--card-url", "https://h/c"]],
)
def test_bad_flags_exit_2(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["model", "fetch", "--url", "https://h/m", "--sha256", SHA, "--out", "/nonexistent", *extra])
    assert caught.value.code == 2
    assert "usage: ferry model fetch" in capsys.readouterr().err


def test_the_card_must_be_a_card_for_the_pinned_file(tmp_path: Path) -> None:
    card = {"name": "churn", "version": "3", "sha256": "cd" * 32, "features": [{"name": "x", "type": "number"}]}
    plan = make_plan(FetchOptions(url="https://h/m.joblib", sha256=card["sha256"], out=tmp_path))
    _check_card(json.dumps(card).encode(), plan)
    other = make_plan(FetchOptions(url="https://h/m.joblib", sha256=SHA, out=tmp_path))
    with pytest.raises(VerificationFailed) as caught:
        _check_card(json.dumps(card).encode(), other)
    assert str(caught.value) == (
        f"the card https://h/m.card.json describes another file: its sha256 is {card['sha256']}, "
        f"the pinned one is {SHA}; nothing was written to {tmp_path}"
    )
    with pytest.raises(VerificationFailed, match=r"not a usable model card: .*Expecting value"):
        _check_card(b"<html>login page</html>", plan)
    with pytest.raises(VerificationFailed, match=r"not a usable model card: 1 error\(s\), first features"):
        _check_card(json.dumps({**card, "features": []}).encode(), plan)
