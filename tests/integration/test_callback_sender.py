"""CallbackSender against a real HTTP(S) receiver on 127.0.0.1: signing, classification, pinning, SNI.

The receiver is a threaded ``http.server`` that answers scripted replies, records every request and
verifies the signature the way a customer would, with ``ferry.webhooks.verify``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry import webhooks
from ferry.jobs.callbacks import Attempt, CallbackSender, next_delay
from ferry.metrics import Metrics
from ferry.settings import CallbacksSettings
from support.server import free_port

SECRET = webhooks.generate_secret()
BODY = b'{"job_id":"job_1","status":"succeeded"}'


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: str  # "ok" or the verification error


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: nothing outlives the test
    block_on_close = True

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (timeouts, refused certificates) are expected here; stay quiet."""


class Receiver:
    """A local webhook receiver answering ``replies`` in order (then 200)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.sni: list[str | None] = []
        self.release = threading.Event()  # wakes delayed replies at teardown
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    webhooks.verify(body, headers, SECRET)
                    verified = "ok"
                except webhooks.WebhookVerificationError as exc:
                    verified = str(exc)
                receiver.requests.append(Seen(self.path, headers, body, verified))
                reply = receiver.replies.popleft() if receiver.replies else Reply()
                if verified != "ok":
                    reply = Reply(401, body=verified.encode())
                if reply.delay_s:
                    receiver.release.wait(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST  # a followed redirect would show up as a GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rcv = Receiver().start()
    yield rcv
    rcv.stop()


def callback_settings(url: str | None = None, **overrides) -> CallbacksSettings:
    """Settings that allowlist the host and port of ``url`` (allowlists name a port, never a whole host)."""
    allow = [urlsplit(url).netloc] if url else []
    values = {"signing_secret": [SECRET], "allow_http": True, "allow_hosts": allow, "timeout_s": 5.0}
    return CallbacksSettings(**{**values, **overrides})


def deliver(url: str, webhook_id: str = "job_1.result", *, metrics: Metrics | None = None, **kwargs) -> Attempt:
    resolver = kwargs.pop("resolver", None)
    verify = kwargs.pop("verify", True)

    async def go() -> Attempt:
        async with CallbackSender(callback_settings(url, **kwargs), metrics, resolver, verify=verify) as sender:
            return await sender.deliver(url, webhook_id, BODY)

    return asyncio.run(go())


def to_loopback(calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return ["127.0.0.1"]

    return resolve


def attempts(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("ferry_callback_attempts_total", {"outcome": outcome})
    assert value is not None
    return value


# -- classification -------------------------------------------------------------------------


def test_delivered_and_the_receiver_verifies_the_signature(receiver: Receiver) -> None:
    metrics = Metrics()
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/hooks/ferry?tenant=7", metrics=metrics)
    assert (attempt.outcome, attempt.status_code, attempt.error) == ("delivered", 200, None)
    assert 0 < attempt.duration_s < 5
    [seen] = receiver.requests
    assert seen.verified == "ok"
    assert seen.path == "/hooks/ferry?tenant=7"
    assert seen.body == BODY
    assert seen.headers["webhook-id"] == "job_1.result"
    assert seen.headers["content-type"] == "application/json"
    assert SECRET not in str(seen.headers)
    assert attempts(metrics, "delivered") == 1
    assert attempts(metrics, "retry") == 0
    assert metrics.registry.get_sample_value("ferry_callback_duration_seconds_count") == 1


def test_every_rotated_secret_signs(receiver: Receiver) -> None:
    other = webhooks.generate_secret()
    assert deliver(f"http://127.0.0.1:{receiver.port}/", signing_secret=[other, SECRET]).outcome == "delivered"
    [seen] = receiver.requests
    assert len(seen.headers["webhook-signature"].split()) == 2
    webhooks.verify(seen.body, seen.headers, other)


def test_retries_keep_the_id_and_sign_afresh(receiver: Receiver) -> None:
    receiver.replies.extend([Reply(503, body=b"busy")])
    url = f"http://127.0.0.1:{receiver.port}/"

    async def go() -> list[Attempt]:
        async with CallbackSender(callback_settings(url)) as sender:
            first = await sender.deliver(url, "job_9.result", BODY)
            await asyncio.sleep(1.05)  # the next attempt gets a later timestamp
            return [first, await sender.deliver(url, "job_9.result", BODY)]

    first, second = asyncio.run(go())
    assert (first.outcome, first.status_code, first.error) == ("retry", 503, "HTTP 503")
    assert first.retry_after_s is None
    assert second.outcome == "delivered"
    one, two = receiver.requests
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == "job_9.result"
    assert int(two.headers["webhook-timestamp"]) > int(one.headers["webhook-timestamp"])
    assert one.verified == two.verified == "ok"


def test_503_is_retried(receiver: Receiver) -> None:
    receiver.replies.append(Reply(503))
    metrics = Metrics()
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/", metrics=metrics)
    assert (attempt.outcome, attempt.status_code) == ("retry", 503)
    assert attempts(metrics, "retry") == 1


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_other_transient_statuses_are_retried(receiver: Receiver, status: int) -> None:
    receiver.replies.append(Reply(status))
    assert deliver(f"http://127.0.0.1:{receiver.port}/").outcome == "retry"


def test_429_with_retry_after(receiver: Receiver) -> None:
    receiver.replies.append(Reply(429, {"Retry-After": "7"}))
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/")
    assert (attempt.outcome, attempt.status_code, attempt.retry_after_s) == ("retry", 429, 7.0)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_rejected(receiver: Receiver, status: int) -> None:
    receiver.replies.append(Reply(status, {"Retry-After": "7"}, body=b"gone for good"))
    metrics = Metrics()
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/", metrics=metrics)
    assert (attempt.outcome, attempt.status_code, attempt.retry_after_s) == ("rejected", status, None)
    assert attempt.error == f"HTTP {status}", "the receiver's body is never kept"
    assert attempts(metrics, "rejected") == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_rejected_and_not_followed(receiver: Receiver, status: int) -> None:
    receiver.replies.append(Reply(status, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}))
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/cb")
    assert (attempt.outcome, attempt.status_code) == ("rejected", status)
    assert "not followed" in (attempt.error or "")
    assert [seen.path for seen in receiver.requests] == ["/cb"]


def test_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.replies.append(Reply(200, delay_s=10))
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/", timeout_s=0.5)
    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert "timed out" in (attempt.error or "")
    assert 0.4 < attempt.duration_s < 3


def test_connection_refused_is_retried() -> None:
    metrics = Metrics()
    attempt = deliver(f"http://127.0.0.1:{free_port()}/", metrics=metrics)
    assert (attempt.outcome, attempt.status_code) == ("retry", None)
    assert "ConnectError" in (attempt.error or "")
    assert attempts(metrics, "retry") == 1


def test_an_answer_body_is_never_read_or_kept(receiver: Receiver) -> None:
    receiver.replies.append(Reply(500, body=b"internal-secret " * (1 << 18)))  # 4 MiB
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/")
    assert (attempt.outcome, attempt.error) == ("retry", "HTTP 500")
    assert attempt.duration_s < 2


def test_environment_proxy_is_ignored(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert deliver(f"http://127.0.0.1:{receiver.port}/").outcome == "delivered"


def test_without_a_secret_nothing_is_sent(receiver: Receiver) -> None:
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/", signing_secret=[])
    assert attempt.outcome == "rejected"
    assert "secret" in (attempt.error or "")
    assert receiver.requests == []


# -- SSRF guard and pinning -----------------------------------------------------------------


def test_connection_is_pinned_to_the_checked_address(receiver: Receiver) -> None:
    calls: list[str] = []
    attempt = deliver(
        f"http://callback.test:{receiver.port}/cb",
        allow_hosts=[f"callback.test:{receiver.port}"],
        resolver=to_loopback(calls),
    )
    assert attempt.outcome == "delivered"
    assert calls == ["callback.test"]  # resolved once, by the guard; httpx never looked the name up
    [seen] = receiver.requests
    assert seen.headers["host"] == f"callback.test:{receiver.port}"
    assert seen.verified == "ok"


def test_name_resolving_to_loopback_is_forbidden_and_nothing_is_sent(receiver: Receiver) -> None:
    metrics = Metrics()
    attempt = deliver(f"http://rebind.test:{receiver.port}/cb", metrics=metrics, resolver=to_loopback(), allow_hosts=[])
    assert (attempt.outcome, attempt.status_code) == ("forbidden", None)
    assert "loopback" in (attempt.error or "")
    assert receiver.requests == []
    assert attempts(metrics, "forbidden") == 1


def test_http_is_forbidden_unless_allowed(receiver: Receiver) -> None:
    attempt = deliver(f"http://127.0.0.1:{receiver.port}/", allow_http=False)
    assert attempt.outcome == "forbidden"
    assert receiver.requests == []


def test_every_attempt_resolves_again(receiver: Receiver) -> None:
    """A name that turned private since the last attempt is refused (no cached answer)."""
    answers = deque([["127.0.0.1"], ["10.0.0.8"]])

    async def changing(host: str, port: int) -> list[str]:
        return answers.popleft()

    url = f"http://changing.test:{receiver.port}/"

    async def go() -> list[str]:
        async with CallbackSender(callback_settings(allow_hosts=[]), resolver=changing) as sender:
            return [(await sender.deliver(url, "id_1", BODY)).outcome for _ in range(2)]

    assert asyncio.run(go()) == ["forbidden", "forbidden"]
    assert not answers


# -- TLS: the certificate and SNI use the real name although the socket goes to the address --


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=callback.test",
         "-addext", "subjectAltName=DNS:callback.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    rcv = Receiver(tls=ctx).start()
    yield rcv
    rcv.stop()


def test_https_uses_the_real_name_for_sni_and_certificate(
    tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    attempt = deliver(
        f"https://callback.test:{tls_receiver.port}/cb",
        allow_hosts=[f"callback.test:{tls_receiver.port}"],
        resolver=to_loopback(),
        verify=trust,
    )
    assert attempt.outcome == "delivered", attempt.error
    assert tls_receiver.sni == ["callback.test"]
    [seen] = tls_receiver.requests
    assert seen.headers["host"] == f"callback.test:{tls_receiver.port}"


def test_https_certificate_for_another_name_is_not_accepted(
    tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    attempt = deliver(
        f"https://impostor.test:{tls_receiver.port}/cb",
        allow_hosts=[f"impostor.test:{tls_receiver.port}"],
        resolver=to_loopback(),
        verify=trust,
    )
    assert attempt.outcome == "retry"
    assert "certificate" in (attempt.error or "").lower()
    assert tls_receiver.requests == []


# -- backoff ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(1, 200),
    base_s=st.floats(0.01, 100),
    max_s=st.floats(0.01, 10_000),
    retry_after_s=st.none() | st.floats(0, 100_000),
    seed=st.integers(0, 2**32),
)
def test_next_delay_bounds(attempt: int, base_s: float, max_s: float, retry_after_s: float | None, seed: int) -> None:
    delay = next_delay(attempt, base_s=base_s, max_s=max_s, retry_after_s=retry_after_s, rng=random.Random(seed))
    cap = min(max_s, base_s * 2 ** (attempt - 1))
    assert 0 <= delay <= max_s
    if retry_after_s is None:
        assert delay <= cap
    else:
        assert delay >= min(retry_after_s, max_s)
        assert delay <= max(cap, retry_after_s)


def test_next_delay_is_full_jitter_growing_exponentially() -> None:
    rng = random.Random(1)
    for attempt, cap in [(1, 1.0), (3, 4.0), (6, 32.0), (20, 60.0)]:
        delays = [next_delay(attempt, base_s=1, max_s=60, rng=rng) for _ in range(2000)]
        assert min(delays) < 0.05 * cap  # full jitter reaches down to 0 ...
        assert 0.95 * cap < max(delays) <= cap  # ... and up to the exponential cap
    assert next_delay(1, base_s=1, max_s=60, retry_after_s=7, rng=rng) >= 7
    assert next_delay(1, base_s=1, max_s=60, retry_after_s=3600, rng=rng) == 60
    with pytest.raises(ValueError, match="start at 1"):
        next_delay(0, base_s=1, max_s=60)
