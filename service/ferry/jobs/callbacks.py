"""One delivery attempt of a signed result callback, and the backoff between attempts.

The runner owns the schedule (attempt count, max age, dead letters); this module sends one POST and
reports what happened as an ``Attempt``. It never raises for network trouble: every failure is an
outcome the runner can act on.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ferry import tracing, webhooks
from ferry.backoff import full_jitter
from ferry.errors import CallbackUrlForbidden
from ferry.jobs.ssrf import CallbackTarget, Resolver, check_callback_url
from ferry.jobs.transitions import Delivery
from ferry.metrics import Metrics
from ferry.settings import CallbacksSettings
from ferry_client.protocol import parse_retry_after

MAX_ERROR_CHARS = 200
RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
USER_AGENT = "ferry-callbacks"


@dataclass
class Attempt:
    """What one delivery attempt did. ``retry_after_s`` is the receiver's Retry-After, if it sent one."""

    outcome: Delivery
    status_code: int | None
    error: str | None
    retry_after_s: float | None
    duration_s: float


def next_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed delivery attempt number ``attempt`` (1-based): full jitter, the
    receiver's Retry-After honoured as a lower bound capped at ``max_s`` (``ferry.backoff``)."""
    return full_jitter(attempt, base_s=base_s, max_s=max_s, retry_after_s=retry_after_s, rng=rng)


def _pinned_url(target: CallbackTarget) -> str:
    """``target.url`` with the host replaced by the checked address: the connection goes there."""
    parts = urlsplit(target.url)
    host = f"[{target.address}]" if ":" in target.address else target.address
    query = f"?{parts.query}" if parts.query else ""
    return f"{target.scheme}://{host}:{target.port}{parts.path or '/'}{query}"


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:MAX_ERROR_CHARS]


def _result(
    outcome: Delivery, status: int | None = None, error: str | None = None, retry_after_s: float | None = None
) -> Attempt:
    return Attempt(outcome, status, error, retry_after_s, duration_s=0.0)


class CallbackSender:
    """Delivers signed callbacks, one attempt per ``deliver`` call. Close with ``aclose``.

    ``verify`` is handed to httpx: a CA bundle context for receivers behind a private CA (and tests).
    """

    def __init__(
        self,
        settings: CallbacksSettings,
        metrics: Metrics | None = None,
        resolver: Resolver | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._resolver = resolver
        self._secrets = [s.get_secret_value() for s in settings.signing_secret]
        for secret in self._secrets:
            webhooks.parse_secret(secret)  # a malformed secret fails at start-up, not at the first callback
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect would leave the checked address
            trust_env=False,  # no proxy from the environment: the connection must go to the checked address
            timeout=settings.timeout_s,
            verify=verify,
            # No reuse: a pooled connection is keyed by IP, and one verified for another name on the
            # same IP must not carry this callback. Callbacks are rare enough to pay the handshake.
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def __aenter__(self) -> CallbackSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        """Check ``url`` again (addresses change), sign, POST once to the checked address, classify.

        ``webhook_id`` must be the same on every attempt of one callback so receivers can deduplicate;
        the timestamp and signature are fresh for each attempt.
        """
        started = time.monotonic()
        attempt = await self._attempt(url, webhook_id, body)
        attempt.duration_s = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.callback_attempts.labels(attempt.outcome.value).inc()
            self._metrics.callback_duration.observe(attempt.duration_s)
        return attempt

    async def _attempt(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        if not self._secrets:  # the API refuses callback jobs without a secret; never send unsigned
            return _result(Delivery.REJECTED, error="no callback signing secret configured")
        timeout = self._settings.timeout_s
        deadline = asyncio.get_running_loop().time() + timeout  # one budget for DNS, connect and answer
        try:
            async with asyncio.timeout_at(deadline):
                target = await check_callback_url(
                    url,
                    allow_http=self._settings.allow_http,
                    allow_hosts=self._settings.allow_hosts,
                    resolver=self._resolver,
                )
                response = await self._client.send(self._request(target, webhook_id, body), stream=True)
        except CallbackUrlForbidden as exc:
            return _result(Delivery.FORBIDDEN, error=exc.message)
        except (TimeoutError, httpx.TimeoutException) as exc:  # TimeoutError first: it is an OSError
            return _result(Delivery.RETRY, error=f"timed out after {timeout:g}s ({type(exc).__name__})")
        except (httpx.TransportError, OSError) as exc:
            return _result(Delivery.RETRY, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        except httpx.InvalidURL as exc:
            return _result(Delivery.REJECTED, error=f"invalid callback URL: {exc}"[:MAX_ERROR_CHARS])
        try:
            return self._classify(response)
        finally:
            await response.aclose()

    def _request(self, target: CallbackTarget, webhook_id: str, body: bytes) -> httpx.Request:
        headers = webhooks.headers(self._secrets, webhook_id, body)
        headers.update({"host": target.host_header, "user-agent": USER_AGENT, "accept-encoding": "identity"})
        tracing.inject(headers)  # traceparent of the current callback attempt span (tracing on)
        # SNI and certificate verification use the real name although the URL holds the address.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        return self._client.build_request(
            "POST", _pinned_url(target), headers=headers, content=body, extensions=extensions
        )

    @staticmethod
    def _classify(response: httpx.Response) -> Attempt:
        """From the status line and Retry-After only. The receiver's body is never read: a job that
        carried it back would let a client read whatever a callback URL answers (an internal service's
        error page, a metadata document)."""
        status = response.status_code
        if 200 <= status < 300:
            return _result(Delivery.DELIVERED, status)
        error = f"HTTP {status}"
        if status in RETRY_STATUSES or 500 <= status < 600:
            return _result(Delivery.RETRY, status, error, parse_retry_after(response.headers.get("retry-after")))
        if 300 <= status < 400:
            error = f"HTTP {status} redirect (redirects are not followed)"
        return _result(Delivery.REJECTED, status, error)
