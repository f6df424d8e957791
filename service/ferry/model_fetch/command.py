"""The fetch itself: card first (small, checked against the pin), then the model, then both renamed
into place. A failure at any step leaves no file under a final name."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType

import httpx
from pydantic import ValidationError

from ferry.card import CARD_SUFFIX, ModelCard
from ferry.logging import JsonLineHandler, configure_logging, get_logger, json_formatter
from ferry.model_fetch.failures import (
    CannotWrite,
    ExitCode,
    FetchError,
    SourceUnavailable,
    Terminated,
    UsageError,
    VerificationFailed,
)
from ferry.model_fetch.landing import Landed, Landing, remove_leftovers, sync_directory
from ferry.model_fetch.locations import Location, card_location, parse_location, redact_text, redact_url
from ferry.model_fetch.retry import RetryPolicy, Transient, with_retries
from ferry.model_fetch.sources import HttpSource, S3Source, Source, http_client

DEFAULT_NAME = "model.joblib"
MAX_CARD_BYTES = 1024 * 1024  # a card is a few kilobytes; anything this large is not one
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")

log = get_logger("ferry.model_fetch")


@dataclass(frozen=True)
class FetchOptions:
    url: str
    sha256: str
    out: Path
    name: str = DEFAULT_NAME
    card_url: str | None = None
    card: bool = True
    allow_http: bool = False
    max_bytes: int | None = None
    timeout_s: float = 20.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Fetched:
    model: Path
    card: Path | None
    sha256: str
    size: int


@dataclass(frozen=True)
class Plan:
    """The options, checked: nothing is fetched for a plan that could not be made."""

    model: Location
    card: Location | None
    sha256: str
    out: Path
    model_name: str
    card_name: str


def make_plan(options: FetchOptions) -> Plan:
    if not _SHA256.fullmatch(options.sha256):
        raise UsageError(f"--sha256 must be 64 hexadecimal digits, not {options.sha256[:80]!r}")
    if not _FILE_NAME.fullmatch(options.name) or options.name.endswith(CARD_SUFFIX):
        raise UsageError(
            f"--name {options.name[:80]!r} must be a plain file name (letters, digits, '_', '.', '-'; "
            f"not starting with '.', not ending in {CARD_SUFFIX})"
        )
    if options.max_bytes is not None and options.max_bytes < 1:
        raise UsageError("--max-bytes must be at least 1")
    model = parse_location(options.url, allow_http=options.allow_http)
    card: Location | None = None
    if options.card:
        card = (
            parse_location(options.card_url, allow_http=options.allow_http, what="--card-url")
            if options.card_url
            else card_location(model)
        )
    return Plan(
        model=model,
        card=card,
        sha256=options.sha256.lower(),
        out=options.out,
        model_name=options.name,
        card_name=PurePosixPath(options.name).stem + CARD_SUFFIX,  # where the service looks (ferry.card)
    )


class Sources:
    """The transports of one fetch: the model and its card share one HTTP client; closed together."""

    def __init__(self, *, allow_http: bool, timeout_s: float) -> None:
        self.allow_http = allow_http
        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()
        self._http: httpx.Client | None = None

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def for_location(self, location: Location) -> Source:
        if location.scheme == "s3":
            return S3Source(location, allow_http=self.allow_http, timeout_s=self.timeout_s)
        if self._http is None:
            self._http = self._stack.enter_context(http_client(allow_http=self.allow_http, timeout_s=self.timeout_s))
        return HttpSource(self._http, location)


def fetch_model(
    options: FetchOptions,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Fetched:
    """Fetch, verify and place the model (and its card). Raises a FetchError; never leaves a partial file."""
    plan = make_plan(options)
    _prepare(plan.out)
    for leftover in remove_leftovers(plan.out, [plan.model_name, plan.card_name]):
        log.info("model_fetch_leftover_removed", path=str(leftover))

    landings: list[Landing] = []
    with Sources(allow_http=options.allow_http, timeout_s=options.timeout_s) as sources:
        try:
            card_landing: Landing | None = None
            if plan.card is not None:
                card_landing = Landing(plan.out, plan.card_name, max_bytes=MAX_CARD_BYTES, what=plan.card.redacted)
                landings.append(card_landing)
                try:
                    _download(sources.for_location(plan.card), card_landing, options.retry, sleep, rng)
                except SourceUnavailable as exc:
                    last = exc.__cause__
                    if not (isinstance(last, Transient) and last.not_found):
                        raise
                    hint = "(no card there: pass --card-url, or --no-card for a model without one)"
                    raise SourceUnavailable(f"{exc} {hint}") from exc
                _check_card(card_landing.read(), plan)  # a card for another file stops us before the big download
            model_landing = Landing(plan.out, plan.model_name, max_bytes=options.max_bytes, what=plan.model.redacted)
            landings.append(model_landing)
            landed = _download(sources.for_location(plan.model), model_landing, options.retry, sleep, rng)
            if landed.sha256 != plan.sha256:
                raise VerificationFailed(
                    f"sha256 mismatch for {plan.model.redacted}: expected {plan.sha256}, got {landed.sha256}; "
                    f"nothing was written to {plan.out}"
                )
            return _place(plan, model_landing, card_landing, landed)
        finally:
            for landing in landings:
                landing.discard()


def _download(
    source: Source,
    landing: Landing,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rng: random.Random | None,
) -> Landed:
    """One file into its landing, every attempt starting over; the hash is checked by the caller."""

    def attempt() -> Landed:
        landing.restart()
        with source.open() as body:
            landing.expect_size(body.size)
            for chunk in body.chunks:
                landing.write(chunk)
        landed = landing.finish()
        if body.size is not None and landed.size != body.size:
            raise Transient(f"the transfer ended after {landed.size} of {body.size} bytes")
        return landed

    def on_retry(number: int, exc: Transient, delay: float) -> None:
        log.warning(
            "model_fetch_retry",
            url=source.location.redacted,
            attempt=number,
            attempts=policy.attempts,
            error=exc.message,
            retry_in_s=round(delay, 3),
        )

    return with_retries(attempt, policy, what=source.location.redacted, on_retry=on_retry, sleep=sleep, rng=rng)


def _prepare(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotWrite(f"cannot create the output directory {out}: {exc.strerror or exc}") from exc
    if not out.is_dir():
        raise CannotWrite(f"--out {out} is not a directory")


def _check_card(raw: bytes, plan: Plan) -> None:
    assert plan.card is not None
    try:
        card = ModelCard.model_validate(json.loads(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise VerificationFailed(
            f"{plan.card.redacted} is not a usable model card: {exc.error_count()} error(s), "
            f"first {where}: {first['msg']}"
        ) from exc
    except ValueError as exc:  # not JSON, not UTF-8
        raise VerificationFailed(f"{plan.card.redacted} is not a usable model card: {exc}") from exc
    if card.sha256 != plan.sha256:
        raise VerificationFailed(
            f"the card {plan.card.redacted} describes another file: its sha256 is {card.sha256}, "
            f"the pinned one is {plan.sha256}; nothing was written to {plan.out}"
        )


def _place(plan: Plan, model: Landing, card: Landing | None, landed: Landed) -> Fetched:
    """Card first, model last: whoever sees the model file also finds its card beside it."""
    card_path = card.commit() if card is not None else None
    try:
        model_path = model.commit()
    except CannotWrite:
        if card_path is not None:
            with contextlib.suppress(OSError):
                card_path.unlink()
        raise
    sync_directory(plan.out)
    return Fetched(model=model_path, card=card_path, sha256=landed.sha256, size=landed.size)


# --- the command --------------------------------------------------------------------------------


def configure_command_logging() -> None:
    """The service's JSON lines, split by level: progress on stdout, the one failure line on stderr
    (an init container's `kubectl logs` shows both; a script reading stderr gets only the failure)."""
    configure_logging("INFO")
    progress = JsonLineHandler(1)
    progress.addFilter(lambda record: record.levelno < logging.ERROR)
    failure = JsonLineHandler(2)
    failure.setLevel(logging.ERROR)
    for handler in (progress, failure):
        handler.setFormatter(json_formatter())
    logging.getLogger().handlers = [progress, failure]
    for name in ("httpx", "httpcore"):  # their request lines quote the URL unredacted (a presigned signature)
        logging.getLogger(name).setLevel(logging.WARNING)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated("terminated by SIGTERM before the fetch finished; nothing was written")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (the pod is deleted) unwinds like an error, so the temporary file is removed."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(options: FetchOptions, *, sleep: Callable[[float], None] = time.sleep) -> int:
    """``ferry model fetch``: one JSON line per step on stdout; on failure one JSON line on stderr. The exit code."""
    configure_command_logging()
    started = time.monotonic()
    url = redact_url(options.url)
    log.info("model_fetch_started", url=url, out=str(options.out), sha256=options.sha256, card=options.card)
    try:
        with _sigterm_raises():
            fetched = fetch_model(options, sleep=sleep)
    except FetchError as exc:
        return _failed(url, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _failed(url, "interrupted before the fetch finished; nothing was written", ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: still one line, not a traceback
        return _failed(url, f"internal error, please report: {type(exc).__name__}: {exc}", ExitCode.INTERNAL)
    log.info(
        "model_fetched",
        url=url,
        model=str(fetched.model),
        card=str(fetched.card) if fetched.card else None,
        sha256=fetched.sha256,
        bytes=fetched.size,
        seconds=round(time.monotonic() - started, 3),
    )
    return ExitCode.OK


def _failed(url: str, message: str, code: ExitCode) -> int:
    log.error("model_fetch_failed", error=redact_text(message), url=url, exit_code=int(code))
    return code
