"""Facts of ferry's HTTP protocol that both sides need, written once: the service imports them from here.

- ``parse_retry_after``: the seconds a ``Retry-After`` header asks for (the client's retries after a
  429/503, the service's callback retries after a receiver's 429/503);
- ``TERMINAL_JOB_STATUSES``: the statuses a job never leaves;
- ``record_row`` and ``v2_tensor``: a record as the numeric row, and rows as the input tensor, of the
  Open Inference Protocol v2 (``GET /v2/models/{name}`` documents the same encoding).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any, Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

V2_INPUT_NAME = "input-0"

_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for; None when it is absent or not valid.

    RFC 9110: delay-seconds (digits; a decimal fraction is tolerated) or an HTTP-date (a date in the
    past means 0; a date without a zone is GMT, as HTTP-dates are). Anything else is not valid and
    reads as no header at all, as the RFC says: a negative number, an exponent, ``inf``/``nan``, a
    number too large for a float. Not capped: each caller bounds the wait by its own policy.
    """
    if value is None or not (value := value.strip()):
        return None
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def record_row(record: Mapping[str, Any], features: Sequence[Mapping[str, Any]]) -> list[float]:
    """A record as an Open Inference Protocol row: the model card's features in card order, a
    categorical value as the index of its category in the card, a boolean as 0/1, numbers as floats.

    ``features`` is the card's ``features`` list (``GET /api/v1/models/{name}``). KeyError names a
    missing feature; ValueError an unknown category.
    """
    row: list[float] = []
    for feature in features:
        value = record[feature["name"]]
        if feature.get("type") == "categorical":
            row.append(float(list(feature["categories"]).index(value)))
        else:
            row.append(float(value))
    return row


def v2_tensor(rows: Sequence[Sequence[float]], name: str = V2_INPUT_NAME) -> dict[str, Any]:
    """Rows of numbers as the one FP64 input tensor ``[len(rows), width]`` of an inference request,
    its data flattened row by row."""
    width = len(rows[0]) if rows else 0
    return {"name": name, "shape": [len(rows), width], "datatype": "FP64", "data": [v for row in rows for v in row]}
