"""What the asynchronous client does its own way: sleeping on the event loop, and the fan-out of
``predict_many`` (tasks taking batches from one shared iterator). ``_sync_runtime`` has the same names
for the synchronous client; ``aio.py`` imports them from here, the generated ``sync.py`` from there."""

from __future__ import annotations

import asyncio
from asyncio import sleep
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ferry_client._common import split
from ferry_client.errors import FerryClientError

if TYPE_CHECKING:
    from ferry_client.aio import AsyncClient

__all__ = ["fan_out", "sleep"]


async def fan_out(
    client: AsyncClient,
    records: Sequence[Any],
    *,
    batch_size: int,
    concurrency: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """``AsyncClient.predict_many``: at most ``concurrency`` batches in flight, results in input order."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    records = list(records)
    batches = split(records, batch_size)
    results: list[list[dict[str, Any]] | None] = [None] * len(batches)
    pending = iter(range(len(batches)))
    done = 0

    async def worker() -> None:
        nonlocal done
        for index in pending:  # one shared iterator: each batch is taken by exactly one worker
            try:
                answer = await client._batch(batches[index])
            except FerryClientError as exc:  # its details name records of the batch: name them in ``records``
                raise exc.shifted(index * batch_size) from None
            if len(answer) != len(batches[index]):
                raise FerryClientError(
                    f"batch {index}: {len(answer)} predictions for {len(batches[index])} records",
                    code="bad_response",
                )
            results[index] = answer
            done += len(answer)
            if on_progress is not None:
                on_progress(done, len(records))

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(batches)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return [row for batch in results if batch is not None for row in batch]
