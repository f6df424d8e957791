"""Exponential backoff with full jitter: the wait before retrying something that failed.

Used by the callback deliverer (a receiver that failed) and ``ferry model fetch`` (a model store
that failed). Full jitter — uniform(0, min(max_s, base_s * 2**(attempt-1))) — spreads the retries of
many callers that failed together (an outage) instead of sending them back in lockstep.
"""

from __future__ import annotations

import random

_rng = random.Random()


def full_jitter(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    retry_after_max_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The other side's Retry-After is honoured as a lower bound (it knows when it will be back), capped
    at ``retry_after_max_s`` (default ``max_s``) so that a hostile or confused peer cannot park us.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 64))  # the exponent cap avoids float overflow
    delay = (rng or _rng).uniform(0.0, ceiling)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, max_s if retry_after_max_s is None else retry_after_max_s))
    return delay
