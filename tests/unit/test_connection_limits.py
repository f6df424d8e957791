"""The guarded HTTP protocol's connection limit and eviction order, in process (fake transports)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from ferry.api import connections
from ferry.api.connections import ConnectionLimits, GuardedHttpToolsProtocol, effective_max_connections


class FakeTransport(asyncio.Transport):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", self.port), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += bytes(data)

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(3600)  # a request being answered, for as long as the test needs


def _connect(config: Config, state: ServerState, port: int, sent: bytes = b"") -> tuple[Any, FakeTransport]:
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={})
    transport = FakeTransport(port)
    protocol.connection_made(transport)
    if sent:
        protocol.data_received(sent)
    return protocol, transport


def test_at_the_limit_idle_and_stalled_connections_make_room_and_busy_ones_do_not() -> None:
    async def main() -> None:
        GuardedHttpToolsProtocol.limits = ConnectionLimits(32 * 1024, 60, 60, max_connections=4)
        config = Config(app=_app, http=GuardedHttpToolsProtocol)
        config.load()
        state = ServerState()
        closed: list[str] = []
        connections.set_close_observer(closed.append)
        busy = [_connect(config, state, 1000 + i, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n") for i in range(2)]
        mid_body = _connect(config, state, 2000, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab")
        mid_headers = _connect(config, state, 3000, b"GET /x HTTP/1.1\r\nHo")
        assert len(state.connections) == 4
        newcomer = _connect(config, state, 4000)[1]
        assert mid_headers[1].closed and not mid_body[1].closed, "stalled headers go before a stalled body"
        assert not newcomer.closed
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        _connect(config, state, 5000, request)  # evicts the newcomer (no byte yet), then is busy itself
        assert newcomer.closed and not mid_body[1].closed
        _connect(config, state, 6000, request)
        assert mid_body[1].closed, "with no idle or stalled-header connection left, a stalled body goes"
        refused = _connect(config, state, 7000)[1]
        assert refused.written.startswith(b"HTTP/1.1 503 ")  # then closed after a lingering read
        assert all(not transport.closed for _, transport in busy), "requests being answered are never closed"
        assert closed == ["evicted_headers", "evicted_headers", "evicted_body", "too_many_connections"]
        for task in list(state.tasks):
            task.cancel()

    asyncio.run(main())


def test_a_worker_with_only_busy_connections_answers_503_and_closes() -> None:
    async def main() -> None:
        GuardedHttpToolsProtocol.limits = ConnectionLimits(32 * 1024, 60, 60, max_connections=2)
        config = Config(app=_app, http=GuardedHttpToolsProtocol)
        config.load()
        state = ServerState()
        for i in range(2):
            _connect(config, state, 1000 + i, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0)
        _, refused = _connect(config, state, 3000)
        assert refused.written.startswith(b"HTTP/1.1 503 ")
        assert b'"code":"too_many_connections"' in refused.written and b"retry-after: 1" in refused.written
        for task in list(state.tasks):
            task.cancel()

    asyncio.run(main())


def test_the_connection_limit_fits_the_descriptor_limit() -> None:
    assert effective_max_connections(4096, 1024) == 1024 - 64 - 32
    assert effective_max_connections(4096, 1_048_576) == 4096
    assert effective_max_connections(4096, 64) == 16
