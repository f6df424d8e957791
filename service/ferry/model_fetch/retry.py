"""Retrying a download: which failures are worth another attempt, and how long to wait before it.

Pure logic with the clock, the sleep and the random source injected, so the unit tier drives it
without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ferry.backoff import full_jitter
from ferry.model_fetch.failures import SourceUnavailable

T = TypeVar("T")
RETRY_AFTER_CAP_S = 60.0  # a source asking for longer is waited for this long, then asked again


class Transient(Exception):
    """One attempt failed in a way a later attempt may not (connection refused, 404 while uploading, 503...)."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.not_found = not_found  # the source answered, without the object (404, NoSuchKey)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: after failed attempt n, wait uniform(0, min(max_s, base_s * 2**(n-1))).

    Full jitter spreads the init containers of a rollout that all failed together (a store outage)
    instead of sending them back in lockstep. The defaults give up after about a minute of waiting
    (at most 1+2+4+8+16+30 = 61 s, half that on average) plus the attempts themselves; the kubelet
    then restarts the init container with its own backoff.
    """

    retries: int = 6
    base_s: float = 1.0
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base_s < 0 or self.max_s < 0:
            raise ValueError("retries, base and max delays cannot be negative")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A source's Retry-After is a lower bound (it knows when it will be back), capped at
        RETRY_AFTER_CAP_S so that a hostile or confused source cannot park the pod for hours.
        """
        return full_jitter(
            attempt,
            base_s=self.base_s,
            max_s=self.max_s,
            retry_after_s=retry_after_s,
            retry_after_max_s=RETRY_AFTER_CAP_S,
            rng=rng,
        )


def with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    on_retry: Callable[[int, Transient, float], None] = lambda n, exc, delay: None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``attempt()`` until it returns, retrying on Transient; SourceUnavailable naming ``what`` at the end.

    Any other exception (a refusal, a verification failure) ends at once: retrying cannot change it.
    """
    for number in range(1, policy.attempts + 1):
        try:
            return attempt()
        except Transient as exc:
            if number == policy.attempts:
                tries = "1 attempt" if number == 1 else f"{number} attempts"
                raise SourceUnavailable(f"cannot fetch {what} after {tries}: {exc.message}") from exc
            delay = policy.delay(number, exc.retry_after_s, rng)
            on_retry(number, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
