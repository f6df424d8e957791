"""Time as the job machinery sees it: wall time, monotonic time and sleeping, behind one object.

Production code uses :data:`SYSTEM_CLOCK`. Unit tests hand in a virtual clock instead, so leases of
30 s, retry delays and purge intervals run in microseconds and in a fixed order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (stored in job documents)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (run deadlines, intervals)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
