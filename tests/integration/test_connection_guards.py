"""Hostile connections against real gunicorn with 2 workers: huge headers, stalled headers and bodies,
and more stalled connections than the process has descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.server import Server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def guarded(churn_model: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "FERRY_CONNECTIONS__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FERRY_CONNECTIONS__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    srv = Server(tmp_path_factory.mktemp("guards"), churn_model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_16_mb_header_is_refused_with_431_within_a_second(guarded: Server) -> None:
    sock = _connect(guarded)
    value = b"a" * (16 * 1024 * 1024)
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + value + b"\r\n\r\n"

    def send() -> None:
        with contextlib.suppress(OSError):  # the server may close before all of it is sent
            sock.sendall(request)

    started = time.perf_counter()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = _read_all(sock)
    elapsed = time.perf_counter() - started
    sock.close()
    print(f"16 MB header: {answer[:40]!r} after {elapsed * 1000:.0f} ms")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"code":"headers_too_large"' in answer
    assert elapsed < 1.0
    assert httpx.get(guarded.url + "/livez", timeout=2).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: "],
    ids=["nothing", "half-headers"],
)
def test_a_connection_stalled_before_its_headers_end_is_closed_and_logged(guarded: Server, sent: bytes) -> None:
    sock = _connect(guarded)
    started = time.perf_counter()
    sock.sendall(sent)
    answer = _read_all(sock)
    elapsed = time.perf_counter() - started
    sock.close()
    print(f"stalled ({len(sent)} bytes sent): closed after {elapsed:.2f} s")
    assert answer == b""
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 1.5
    timeouts = guarded.records_when(lambda rs: any(r.get("event") == "request_header_timeout" for r in rs))
    assert any(r.get("event") == "request_header_timeout" and r.get("received") == len(sent) for r in timeouts)


def test_a_second_request_stalled_mid_headers_on_a_kept_alive_connection_is_closed(guarded: Server) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first
    started = time.perf_counter()
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    rest = _read_all(sock)
    elapsed = time.perf_counter() - started
    sock.close()
    print(f"second request stalled mid-headers: closed after {elapsed:.2f} s")
    assert b"HTTP/1.1" not in rest  # (what may come is the rest of the first answer) no second answer
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 1.5


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_connection_stalled_mid_body_gets_408_and_is_closed(guarded: Server, chunked: bool) -> None:
    sock = _connect(guarded)
    if chunked:
        head = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b'{"record": {"ten')
    else:
        head = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"record": {')
    started = time.perf_counter()
    answer = _read_all(sock)
    elapsed = time.perf_counter() - started
    sock.close()
    print(f"stalled body ({'chunked' if chunked else 'length'}): {answer[:20]!r} after {elapsed:.2f} s")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + 1.5
    records = guarded.records_when(lambda rs: any(r.get("event") == "request_body_timeout" for r in rs))
    assert any(r.get("event") == "request_body_timeout" for r in records)
    assert not any(r.get("event") == "unhandled_error" for r in records)


def test_stalled_connections_beyond_the_descriptor_limit_never_make_livez_fail(
    churn_model: Path, tmp_path: Path
) -> None:
    """1,000 stalled connections against 2 workers limited to 256 descriptors each (each worker's
    connection limit becomes 256 - 64 - 8 = 184): new connections close the oldest stalled ones."""
    nofile = 256
    env = {"FERRY_CONNECTIONS__HEADER_TIMEOUT_S": "60"}  # the stalled connections outlive the test
    srv = Server(tmp_path, churn_model, env=env)
    srv.argv = ["prlimit", f"--nofile={nofile}:{nofile}", *srv.argv]
    with srv:
        livez_times = asyncio.run(_stall_and_probe(srv.port, stalled=1000, probes=40))
        records = srv.records()
    slowest = max(livez_times)
    print(f"/livez under 1000 stalled connections (nofile {nofile}): slowest {slowest * 1000:.0f} ms")
    assert len(livez_times) == 40  # every probe answered 200
    assert slowest < 1.0
    evicted = [r for r in records if r.get("event") == "connection_evicted"]
    assert evicted, "the stalled connections were never evicted"
    assert not any("Too many open files" in str(r) for r in records)


async def _stall_and_probe(port: int, stalled: int, probes: int) -> list[float]:
    writers = []
    for _ in range(stalled):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        writers.append(writer)
    await asyncio.sleep(0.5)
    times = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(probes):
            started = time.perf_counter()
            response = await client.get("/livez", headers={"connection": "close"})
            assert response.status_code == 200, response.text
            times.append(time.perf_counter() - started)
    for writer in writers:
        writer.close()
    return times
