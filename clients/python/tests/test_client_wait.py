"""wait_job keeps its time limit in both clients, against a real HTTP server on 127.0.0.1 (the standard
library's, so these tests need nothing but the client): a job events stream kept alive by heartbeats,
and a server that is slow to answer a poll. Either used to hold the synchronous client long past its
``timeout``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ferry_client import AsyncClient, Client

QUEUED = {"id": "j1", "status": "queued"}
SLACK_S = 1.0  # what a TimeoutError may come after ``timeout``: scheduling on a busy 2-core machine


class Server:
    """``/api/v1/jobs/j1`` answers at once, ``/api/v1/jobs/slow`` after 10 s; ``.../events`` sends the
    job's status, then a ``: ping`` heartbeat every 0.1 s, as ferry does while a job waits."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/events"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    try:
                        self.wfile.write(f"event: status\ndata: {json.dumps(QUEUED)}\n\n".encode())
                        while not server.stop.wait(0.1):
                            self.wfile.write(b": ping\n\n")
                            self.wfile.flush()
                    except OSError:  # the client went away
                        pass
                    self.close_connection = True
                    return
                if self.path.endswith("/slow"):
                    server.stop.wait(10)
                body = json.dumps(QUEUED).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()  # joins the handler threads
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def wait_sync(url: str, job_id: str, timeout: float, use_events: bool) -> None:
    with Client(url) as client:
        client.wait_job(job_id, timeout=timeout, poll_interval=0.2, use_events=use_events)


def wait_async(url: str, job_id: str, timeout: float, use_events: bool) -> None:
    async def run() -> None:
        async with AsyncClient(url) as client:
            await client.wait_job(job_id, timeout=timeout, poll_interval=0.2, use_events=use_events)

    asyncio.run(run())


@pytest.mark.parametrize("wait", [wait_sync, wait_async], ids=["sync", "async"])
@pytest.mark.parametrize(("job_id", "use_events"), [("j1", True), ("slow", False), ("j1", False)])
def test_wait_job_raises_at_its_timeout(server: Server, wait: object, job_id: str, use_events: bool) -> None:
    assert callable(wait)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^job \w+ still (queued|unknown) after 0\.5 s$"):
        wait(server.url, job_id, 0.5, use_events)
    took = time.monotonic() - started
    assert 0.5 <= took < 0.5 + SLACK_S, f"TimeoutError after {took:.2f} s"
