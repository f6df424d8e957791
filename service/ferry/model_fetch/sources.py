"""Where the bytes come from: ``https://``/``http://`` through httpx, ``s3://`` through obstore.

Each source opens one download at a time and sorts its failures: ``Transient`` (worth another
attempt: transport errors, 404 while an object is being uploaded, 408, 429, 5xx) or ``SourceRefused``
(retrying cannot help: 401, 403, other 4xx, an untrusted TLS certificate). The retry loop lives in
``retry``; the bytes go to ``landing``.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

import httpx

from ferry import __version__
from ferry.model_fetch.failures import SourceRefused, UsageError
from ferry.model_fetch.locations import Location, redact_text, redact_url
from ferry.model_fetch.retry import Transient
from ferry_client.protocol import parse_retry_after

if TYPE_CHECKING:
    from obstore.store import S3Store
    from typing_extensions import Buffer

CHUNK_BYTES = 1024 * 1024
USER_AGENT = f"ferry/{__version__} (model fetch)"
RETRIED_STATUSES = frozenset({404, 408, 425, 429})  # and every 5xx; 404: the object may still be uploading
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


@dataclass(frozen=True)
class Download:
    size: int | None  # as announced by the source, when it did
    chunks: Iterator[Buffer]


class Source(Protocol):
    location: Location

    def open(self) -> contextlib.AbstractContextManager[Download]: ...


def retried_status(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


# --- https:// and http:// ---------------------------------------------------------------------


def http_client(*, allow_http: bool, timeout_s: float) -> httpx.Client:
    """One client for the model and its card. ``timeout_s`` bounds the connect and each read (a stall),
    not the whole transfer: a large model on a slow link is fine as long as bytes keep coming."""

    def refuse_plain_http(request: httpx.Request) -> None:
        if request.url.scheme == "http":  # only a redirect can get here: --url itself was checked
            raise SourceRefused(
                f"redirected to plain http {redact_url(str(request.url))}; pass --allow-http to accept it"
            )

    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=True,  # release pages and artifact stores redirect to blob storage
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},  # the file's own bytes, not gzip
        event_hooks={"request": [] if allow_http else [refuse_plain_http]},
    )


class HttpSource:
    def __init__(self, client: httpx.Client, location: Location) -> None:
        self.client = client
        self.location = location

    @contextlib.contextmanager
    def open(self) -> Iterator[Download]:
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(self.client.stream("GET", self.location.url))
            except httpx.HTTPError as exc:
                raise _http_failure(exc) from exc
            self._check(response)
            yield Download(_content_length(response), self._chunks(response))

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        answer = f"{status} {response.reason_phrase}".strip()
        if str(response.url) != self.location.url:
            answer += f" from {redact_url(str(response.url))}"
        if retried_status(status):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise Transient(answer, retry_after, not_found=status == 404)
        raise SourceRefused(f"{self.location.redacted} answered {answer}; not retried (check the URL and credentials)")

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_raw(CHUNK_BYTES)  # raw: what is hashed is what the server stores
        except httpx.HTTPError as exc:
            raise _http_failure(exc) from exc


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _request_url(exc: httpx.HTTPError) -> str:
    try:
        return redact_url(str(exc.request.url))
    except RuntimeError:  # an error raised before a request existed
        return "the source"


def _http_failure(exc: httpx.HTTPError) -> Exception:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SourceRefused(
                f"the TLS certificate of {_request_url(exc)} is not trusted ({cause.verify_message}); "
                "set SSL_CERT_FILE to a bundle that holds its CA"
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TooManyRedirects | httpx.UnsupportedProtocol):
        return SourceRefused(redact_text(f"{type(exc).__name__}: {exc}"))
    kinds: dict[type[Exception], str] = {
        httpx.ConnectError: "cannot connect",
        httpx.ConnectTimeout: "connect timed out",
        httpx.ReadTimeout: "no bytes within the timeout (stalled)",
        httpx.RemoteProtocolError: "connection broken",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    detail = str(exc).strip()
    return Transient(redact_text(f"{kind}: {detail}" if detail else kind))


# --- s3:// --------------------------------------------------------------------------------------


class S3Source:
    """An S3 object read with obstore. Credentials and endpoint come from the standard environment:
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN (a Secret), AWS_ROLE_ARN with
    AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), the container or instance role; AWS_REGION; AWS_ENDPOINT_URL
    for an S3-compatible store."""

    def __init__(
        self, location: Location, *, allow_http: bool, timeout_s: float, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.location = location
        endpoint = next((environ[name] for name in S3_ENDPOINT_VARIABLES if environ.get(name)), None)
        if endpoint and endpoint.lower().startswith("http://") and not allow_http:
            raise UsageError(
                f"the S3 endpoint {redact_url(endpoint)} is plain http; pass --allow-http to accept it "
                "(the pinned sha256 still decides what is kept)"
            )
        from obstore.exceptions import BaseError
        from obstore.store import S3Store

        try:
            self.store: S3Store = S3Store(
                location.host,
                client_options={
                    "allow_http": allow_http,
                    "connect_timeout": timedelta(seconds=timeout_s),
                    "read_timeout": timedelta(seconds=timeout_s),  # a stall; the whole transfer has no bound
                    "timeout": timedelta(days=1),  # obstore's default (30 s) would cut a large model short
                    "user_agent": USER_AGENT,
                },
                retry_config={"max_retries": 0},  # one retry loop, ours: same backoff, logs and limits as https
            )
        except (BaseError, ValueError) as exc:
            raise UsageError(f"cannot configure S3 for {location.redacted}: {summarize_store_error(str(exc))}") from exc

    @contextlib.contextmanager
    def open(self) -> Iterator[Download]:
        import obstore

        try:
            result = obstore.get(self.store, self.location.path)
        except Exception as exc:  # obstore raises builtins and its own BaseError family
            raise _store_failure(exc, self.location) from exc
        yield Download(result.meta["size"], self._chunks(iter(result.stream(min_chunk_size=CHUNK_BYTES))))

    def _chunks(self, stream: Iterator[Buffer]) -> Iterator[Buffer]:
        try:
            yield from stream
        except Exception as exc:
            raise _store_failure(exc, self.location) from exc


_STATUS = re.compile(r"status code: (\d{3})([^:\n]*)")
_S3_CODE = re.compile(r"<Code>([^<]{1,80})</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]{1,200})</Message>")
_OS_MESSAGE = re.compile(r'message: "([^"]{1,200})"')
_REQUEST = re.compile(r"Error performing (\w+) (\S+)")


def summarize_store_error(text: str) -> str:
    """One line out of obstore's multi-line error text (first line plus a debug dump with an XML body)."""
    head = text.strip().split("\n", 1)[0]
    request = _REQUEST.search(head)
    where = f" ({request.group(1)} {redact_url(request.group(2))})" if request else ""
    status = _STATUS.search(text)
    if status:
        detail = ": ".join(m.group(1).strip() for m in (_S3_CODE.search(text), _S3_MESSAGE.search(text)) if m)
        answer = f"{status.group(1)}{status.group(2).rstrip()}"
        return f"{answer} ({detail}){where}" if detail else f"{answer}{where}"
    what = head.rsplit(" - ", 1)[-1] if " - " in head else head
    causes = _OS_MESSAGE.findall(text)
    if causes:
        what += f": {causes[-1]}"
    return redact_text(what + where)


def store_status(text: str) -> int | None:
    match = _STATUS.search(text)
    return int(match.group(1)) if match else None


def _store_failure(exc: Exception, location: Location) -> Exception:
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    text = str(exc)
    summary = summarize_store_error(text)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return SourceRefused(
            f"{location.redacted}: access denied, {summary}; not retried "
            "(check the AWS_* credentials or the role of the service account)"
        )
    status = store_status(text)
    if isinstance(exc, FileNotFoundError) or status is None or retried_status(status):
        return Transient(summary, not_found=isinstance(exc, FileNotFoundError) or status == 404)
    return SourceRefused(f"{location.redacted}: {summary}; not retried")
