"""Request deadlines: one absolute monotonic instant per request, set at admission."""

from __future__ import annotations

import time
from dataclasses import dataclass


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

    def at_most(self, seconds: float) -> Deadline:
        """This deadline, lowered to ``seconds`` from the same start if that is earlier."""
        if seconds >= self.budget_s:
            return self
        return Deadline(at=self.at - self.budget_s + seconds, budget_s=seconds)
