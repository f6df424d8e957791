"""A virtual clock for in-process tests of the job machinery (``ferry.clock.Clock``).

Nothing moves until the test says so: ``sleep`` parks the caller until virtual time reaches its
wake-up, and ``advance`` moves time forward, waking sleepers in order and letting every task run
until it blocks again. Leases of 30 s and purge intervals of a minute pass in microseconds, and two
runs of a test see the same interleaving.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

EPOCH = 1_800_000_000.0  # wall time at virtual zero


class VirtualClock:
    def __init__(self, start: float = EPOCH) -> None:
        self._elapsed = 0.0
        self._start = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._start + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), wake))
        await wake

    async def settle(self) -> None:
        """Let every task run until it waits on something (a sleeper here, an event, a future)."""
        for _ in range(200):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in time order."""
        target = self._elapsed + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            at, _, wake = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, at)
            if not wake.done():
                wake.set_result(None)
            await self.settle()
        self._elapsed = target
        await self.settle()

    async def run_until(self, done: Callable[[], bool], *, limit_s: float, step_s: float = 0.05) -> float:
        """Advance in steps until ``done()``; returns the virtual seconds it took. Fails at ``limit_s``."""
        started = self._elapsed
        await self.settle()
        while not done():
            if self._elapsed - started >= limit_s:
                raise AssertionError(f"not done after {limit_s} virtual seconds")
            await self.advance(step_s)
        return self._elapsed - started
