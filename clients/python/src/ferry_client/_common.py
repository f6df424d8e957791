"""What the sync and async clients share: retry policy, deadlines, error decoding, stream resumption,
batching."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx

from ferry_client._version import __version__
from ferry_client.errors import FerryClientError
from ferry_client.protocol import TERMINAL_JOB_STATUSES, parse_retry_after, v2_tensor
from ferry_client.sse import ServerSentEvent

RETRY_STATUSES = frozenset({429, 503})
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 10.0
RETRY_AFTER_CAP_S = 120.0
RETRY_AFTER_JITTER = 0.2  # up to +20% on top of Retry-After, so shed callers do not return in lockstep
DEFAULT_BATCH_SIZE = 500
USER_AGENT = f"ferry-client/{__version__}"
EVENT_STREAM = {"Accept": "text/event-stream"}

PREDICT = "/api/v1/predict"
PREDICT_BATCH = "/api/v1/predict/batch"
PREDICT_STREAM = "/api/v1/predict/stream"
MODELS = "/api/v1/models"
JOBS = "/api/v1/jobs"
READYZ = "/readyz"


def job_path(job_id: str, suffix: str = "") -> str:
    if not job_id or "/" in job_id:
        raise ValueError(f"invalid job id {job_id!r}")
    return f"{JOBS}/{job_id}{suffix}"


def default_headers(headers: dict[str, str] | None) -> dict[str, str]:
    return {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}


LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)


class ClientSettings:
    """What both clients are configured with; ``http_options()`` feeds the httpx client underneath."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_retries: int,
        headers: dict[str, str] | None,
        token: str | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = str(base_url).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.headers = dict(headers or {})
        if token:  # an API key or an OIDC access token: the service takes either as a bearer credential
            self.headers["Authorization"] = f"Bearer {token}"

    def http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "headers": default_headers(self.headers),
            "limits": LIMITS,
        }


def encode(body: Any, headers: dict[str, str] | None) -> tuple[bytes | None, dict[str, str] | None]:
    """A JSON request body and its headers. NaN and Infinity are refused here rather than by the server."""
    if body is None:
        return None, headers
    try:
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # NaN or Infinity
        raise FerryClientError(f"the request cannot be sent as JSON: {exc}", code="invalid_json") from None
    return content, {"Content-Type": "application/json", **(headers or {})}


def v2_infer_path(model_name: str, version: str | None) -> str:
    return f"/v2/models/{model_name}" + (f"/versions/{version}" if version else "") + "/infer"


def retry_after(headers: httpx.Headers) -> float | None:
    """The answer's Retry-After in seconds (``protocol.parse_retry_after``), at most RETRY_AFTER_CAP_S:
    a server asking for longer is retried after the cap, within ``max_retries``."""
    seconds = parse_retry_after(headers.get("retry-after"))
    return None if seconds is None else min(seconds, RETRY_AFTER_CAP_S)


def backoff_delay(attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt + 1``.

    The server's Retry-After when it sent one (plus a little jitter, never less), otherwise exponential
    backoff with full jitter: uniform(0, min(cap, base * 2**attempt)).
    """
    uniform = (rng or random).uniform
    if retry_after is not None:
        return retry_after + uniform(0, RETRY_AFTER_JITTER * min(retry_after, 5.0))
    return uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 32)))


def retryable_transport_error(exc: httpx.TransportError, method: str, idempotent: bool) -> bool:
    """Whether a failed request may be sent again.

    A connection that was never made (nothing sent) is always retried. Otherwise only an idempotent
    request is: a GET, or a request the caller marked safe (pure predictions, a job submission
    carrying an Idempotency-Key). A POST that timed out while the server worked on it is not retried,
    so a slow model is not sent the same work again.
    """
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    if not idempotent and method.upper() != "GET":
        return False
    return method.upper() == "GET" or not isinstance(exc, httpx.TimeoutException)


def transport_error(exc: httpx.TransportError, method: str, url: str) -> FerryClientError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport_error"
    return FerryClientError(f"{method} {url}: {type(exc).__name__}: {exc}", code=code)


def error_from_response(response: httpx.Response) -> FerryClientError:
    """FerryClientError from an error answer whose body has been read."""
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    code = message = None
    details = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        message = body.get("message") or body.get("error")
        request_id = body.get("request_id") or request_id
        details = body.get("details")
    if not message:
        text = response.text.strip()
        message = text[:500] if text else (response.reason_phrase or f"HTTP {status}")
    return FerryClientError(
        str(message),
        status=status,
        code=str(code) if code is not None else None,
        request_id=request_id,
        details=details,
        retry_after=retry_after(response.headers),
    )


class Deadline:
    """When a call with a time limit (``wait_job(timeout=...)``) must end, on the monotonic clock.
    ``seconds`` None: no limit."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.at = None if seconds is None else clock() + seconds

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - self.clock()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def cap(self, delay: float) -> float:
        """``delay``, shortened so that it ends at the deadline at the latest."""
        left = self.remaining()
        return delay if left is None else max(0.0, min(delay, left))


class Attempts:
    """The retry policy of one call, free of I/O, so both clients follow it to the letter: after each
    failure it says how long to wait before the next attempt, or that there is none. With a
    ``deadline``, no attempt starts after it and none may last beyond it."""

    def __init__(
        self,
        max_retries: int,
        method: str,
        path: str,
        *,
        idempotent: bool,
        retry: bool,
        deadline: Deadline | None = None,
    ) -> None:
        self.left = max_retries if retry else 0
        self.method, self.path, self.idempotent = method, path, idempotent
        self.deadline = deadline
        self.made = 0

    def timeout(self, default: float) -> httpx.Timeout:
        """The timeout of the attempt about to be sent: ``default``, or the time left before the deadline
        if that is shorter. FerryClientError ``timeout`` when the deadline has passed."""
        left = None if self.deadline is None else self.deadline.remaining()
        if left is None:
            return httpx.Timeout(default)
        if left <= 0:
            raise FerryClientError(f"{self.method} {self.path}: the call's time limit has passed", code="timeout")
        return httpx.Timeout(min(default, left))

    def after_transport_error(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before sending again; raises FerryClientError when the request may not be resent."""
        if self.made >= self.left or not retryable_transport_error(exc, self.method, self.idempotent):
            raise transport_error(exc, self.method, self.path) from exc
        self.made += 1
        return self._within_deadline(backoff_delay(self.made - 1))

    def after_error_answer(self, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying a 429/503, or None: the answer is final (read it, then raise it)."""
        if response.status_code not in RETRY_STATUSES or self.made >= self.left:
            return None
        self.made += 1
        return self._within_deadline(backoff_delay(self.made - 1, retry_after(response.headers)))

    def _within_deadline(self, delay: float) -> float:
        return delay if self.deadline is None else self.deadline.cap(delay)


class JobEvents:
    """Following one job's SSE events across streams that end early (a worker stopping, a cut
    connection): the last status seen, and when to give up."""

    def __init__(self, job_id: str, max_retries: int) -> None:
        self.job_id, self.max_retries = job_id, max_retries
        self.last: dict[str, Any] = {}
        self.failures = 0  # streams in a row that ended without a new status

    def handle(self, sse: ServerSentEvent) -> dict[str, Any] | None:
        """The job once ``sse`` carries a terminal status, else None."""
        if sse.event != "status":
            return None
        self.last = sse.json() or {}
        self.failures = 0
        return self.last if self.last.get("status") in TERMINAL_JOB_STATUSES else None

    def ended(self, error: Exception | None) -> float:
        """The stream ended before a terminal status: seconds to wait before following it again."""
        self.failures += 1
        if self.failures > self.max_retries:
            raise FerryClientError(
                f"the events stream of job {self.job_id} kept ending without a final status",
                code="stream_interrupted",
            ) from error
        return backoff_delay(self.failures - 1)

    def timeout(self, seconds: float | None) -> TimeoutError:
        return TimeoutError(f"job {self.job_id} still {self.last.get('status', 'unknown')} after {seconds} s")


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def split(records: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    return [records[i : i + size] for i in range(0, len(records), size)]


def v2_body(
    inputs: Any, outputs: Iterable[str] | None, parameters: dict[str, Any] | None, request_id: str | None
) -> dict[str, Any]:
    """An Open Inference Protocol request. ``inputs``: the protocol's tensor list, or a 2-D list of
    numbers sent as the one FP64 tensor ``input-0``."""
    if isinstance(inputs, list) and inputs and all(isinstance(row, list | tuple) for row in inputs):
        inputs = [v2_tensor(inputs)]
    body: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    if parameters:
        body["parameters"] = parameters
    if request_id is not None:
        body["id"] = request_id
    return body


def job_body(records: Sequence[Any], callback_url: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"records": list(records)}
    if callback_url is not None:
        body["callback_url"] = callback_url
    if metadata is not None:
        body["metadata"] = metadata
    return body


class StreamState:
    """Bookkeeping of one streamed prediction across resumptions.

    Offsets in the yielded events are positions in the caller's ``records``, whatever request they came
    from. ``event: shutdown`` (the worker is stopping) and a stream cut without a summary both resume
    with the records not yet answered; ``max_retries`` resumptions in a row without progress give up.
    """

    def __init__(self, records: Iterable[Any], chunk_size: int | None, max_retries: int) -> None:
        self.records = list(records)
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.base = 0  # position of the current request's first record
        self.answered = 0  # every record before this one has been yielded in a chunk
        self.finished = False
        self.resume = False  # the current request is over; post the rest again
        self.stalls = 0  # resumptions in a row without a new chunk
        self.requests = 0

    def body(self) -> dict[str, Any]:
        self.requests += 1
        self.resume = False
        body: dict[str, Any] = {"records": self.records[self.base :]}
        if self.chunk_size is not None:
            body["chunk_size"] = self.chunk_size
        return body

    def handle(self, sse: ServerSentEvent) -> dict[str, Any] | None:
        """The event to yield for ``sse`` (None for none); raises FerryClientError on ``event: failed``."""
        name = sse.event
        try:
            data = sse.json()
        except ValueError:
            data = sse.data
        if name == "chunk" and isinstance(data, dict):
            offset = self.base + int(data.get("offset", 0))
            data["offset"] = offset
            end = offset + len(data.get("predictions") or ())
            if end > self.answered:
                self.answered = end
                self.stalls = 0
            return {"event": name, "data": data}
        if name == "summary":
            self.finished = True
            return {"event": name, "data": data}
        if name == "failed":
            info = data if isinstance(data, dict) else {"message": str(data)}
            at = info.get("offset")
            raise FerryClientError(
                str(info.get("message") or "the stream failed"),
                code=info.get("code"),
                request_id=info.get("request_id"),
                details=info.get("details"),
                offset=self.base + at if isinstance(at, int) else None,
            )
        if name == "shutdown":
            # The worker is stopping: {"next_offset"} is the first record it did not answer, which is
            # where the chunks seen so far end. Resume from what was actually received: no gap, no repeat.
            self.resume = True
            return None
        return {"event": name, "data": data}

    def interrupted(self, error: Exception | None) -> float:
        """The current request ended without a summary: prepare the resumption, return the delay before it."""
        self.resume = True
        if self.answered >= len(self.records):
            self.finished = True  # every record was answered; only the summary was lost
            return 0.0
        if self.answered == self.base:
            self.stalls += 1
        if self.stalls > self.max_retries:
            cause = f": {error}" if error else ""
            raise FerryClientError(
                f"the prediction stream stopped {self.stalls} times at record {self.answered}{cause}",
                code="stream_interrupted",
                offset=self.answered,
            ) from error
        self.base = self.answered
        return backoff_delay(max(self.stalls - 1, 0))
