"""What the synchronous client does its own way: sleeping the thread, and ``predict_many``, which runs
the asynchronous fan-out (``_aio_runtime.fan_out``) to completion on an event loop of its own.
``_aio_runtime`` has the same names for the asynchronous client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from time import sleep
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry_client.sync import Client

__all__ = ["fan_out", "sleep"]


def fan_out(
    client: Client,
    records: Sequence[Any],
    *,
    batch_size: int,
    concurrency: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """``Client.predict_many``: an AsyncClient with this client's URL, timeout, retries and headers (a
    custom ``transport`` is not carried over) on a new event loop. RuntimeError inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "Client.predict_many starts its own event loop and cannot run inside a running one; "
            "in async code use `await AsyncClient(...).predict_many(...)` instead"
        )
    from ferry_client.aio import AsyncClient

    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(
            client.base_url, timeout=client.timeout, max_retries=client.max_retries, headers=client.headers
        ) as async_client:
            return await async_client.predict_many(
                records, batch_size=batch_size, concurrency=concurrency, on_progress=on_progress
            )

    return asyncio.run(run())
