"""/metrics on a port of its own (``metrics.port``), away from the API port the ingress exposes.

Every worker binds the port with SO_REUSEPORT and the kernel spreads scrapes over them; each answers
with the metrics of *all* workers, because the registry is prometheus-client's multiprocess one (read
from the shared metrics directory), so which worker answers does not matter. A worker that died leaves
the group; the rest keep answering. No thread in the gunicorn master and no extra process to manage.

The protocol is the smallest HTTP/1.1 a scraper needs: one GET per connection, answered with
``Connection: close``; anything else gets 404 or 405. Requests are bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ferry.logging import get_logger

log = get_logger("ferry.metrics_port")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
# Called with the scrape's Accept header (None without one): OpenMetrics when asked, else the text format.
Exposition = Callable[[str | None], tuple[bytes, str]]


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _accept(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"accept":
            return value.strip().decode("latin-1")
    return None


class MetricsListener:
    def __init__(self, host: str, port: int, exposition: Exposition) -> None:
        self.host = host
        self.port = port
        self.exposition = exposition
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_port=True, limit=MAX_REQUEST_BYTES
        )
        log.info("metrics_port_listening", port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].split()
            if len(request_line) != 3:
                writer.write(_response("400 Bad Request", b"bad request\n"))
            elif request_line[0] not in (b"GET", b"HEAD"):
                writer.write(_response("405 Method Not Allowed", b"GET only\n"))
            elif request_line[1].split(b"?", 1)[0] != b"/metrics":
                writer.write(_response("404 Not Found", b"only /metrics is served on this port\n"))
            else:
                payload, content_type = self.exposition(_accept(head))
                response = _response("200 OK", payload, content_type)
                if request_line[0] == b"HEAD":
                    response = response[: response.index(b"\r\n\r\n") + 4]
                writer.write(response)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, oversized or vanished scraper gets nothing; the next scrape is a new connection
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
