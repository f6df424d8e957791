"""Request deadlines: one absolute monotonic instant per request, set at admission."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferry.errors import InvalidInput
from ferry.settings import DeadlineSettings


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # time.monotonic() instant
    budget_s: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.at


def parse_timeout_header(value: str | None, settings: DeadlineSettings) -> float:
    """Seconds from ``X-Request-Timeout`` (a decimal), clamped to the maximum; default when absent."""
    if value is None:
        return settings.default_s
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):  # also catches NaN
        raise InvalidInput(
            "X-Request-Timeout must be a positive number of seconds",
            details=[
                {"loc": ["header", "x-request-timeout"], "msg": "positive decimal seconds", "type": "value_error"}
            ],
        )
    return min(seconds, settings.max_s)


def from_microseconds(value: object, settings: DeadlineSettings, current_s: float) -> float:
    """The Open Inference Protocol ``timeout`` parameter (microseconds, as Triton clients send it).
    It may only lower the deadline already in force."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(
            "parameters.timeout must be a positive number of microseconds",
            details=[{"loc": ["body", "parameters", "timeout"], "msg": "positive microseconds", "type": "value_error"}],
        )
    return min(current_s, value / 1e6, settings.max_s)
