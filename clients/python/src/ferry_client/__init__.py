"""Python client for a ferry service: sync and async, retries, fan-out, streams and jobs.

>>> from ferry_client import Client
>>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     client.predict({"tenure_months": 3, ...})

Its own distribution (``ferry-client``), which depends on ``httpx`` alone; the ferry service reuses
it for its ``ferry predict`` / ``ferry jobs`` commands and for the protocol facts in
:mod:`ferry_client.protocol`.
"""

from ferry_client._version import __version__
from ferry_client.aio import AsyncClient
from ferry_client.errors import FerryClientError
from ferry_client.sse import ServerSentEvent, SSEParser
from ferry_client.sync import Client

__all__ = ["AsyncClient", "Client", "FerryClientError", "SSEParser", "ServerSentEvent", "__version__"]
