"""Python client for a ferry service: sync and async, retries, fan-out, streams and jobs.

>>> from ferry.client import Client
>>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     client.predict({"tenure_months": 3, ...})

Needs only ``httpx``; it does not import the server.
"""

from ferry.client.aio import AsyncClient
from ferry.client.errors import FerryClientError
from ferry.client.sse import ServerSentEvent, SSEParser
from ferry.client.sync import Client

__all__ = ["AsyncClient", "Client", "FerryClientError", "SSEParser", "ServerSentEvent"]
