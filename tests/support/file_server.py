"""A real HTTP file server on 127.0.0.1 that answers each path from a script: serve, fail, stall.

``route(path, *replies)``: the n-th request of ``path`` gets ``replies[n]`` (the last one repeats);
every request is recorded with its time, so a test can count retries and measure the waits.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall_after: int | None = None  # send this many body bytes, then nothing until the server stops


@dataclass(frozen=True)
class Hit:
    path: str
    at: float  # time.monotonic()
    headers: dict[str, str]  # lower-case names


class FileServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server.lock:
                    count = sum(1 for hit in server.hits if hit.path == path)
                    server.hits.append(Hit(path, time.monotonic(), {k.lower(): v for k, v in self.headers.items()}))
                    replies = server.routes.get(path) or [Reply(404, b"no such route")]
                reply = replies[min(count, len(replies) - 1)]
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                if reply.stall_after is None:
                    self.wfile.write(reply.body)
                    return
                self.wfile.write(reply.body[: reply.stall_after])
                self.wfile.flush()
                server.stopping.wait(60)  # the client's read timeout (or the test's end) ends this
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port, no race
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval: shutdown() waits up to one interval, and every test stops a server.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def route(self, path: str, *replies: Reply) -> str:
        """Script ``path``; returns its full URL."""
        with self.lock:
            self.routes[path] = list(replies)
        return self.url + path

    def hits_of(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        with contextlib.suppress(OSError):
            self.httpd.server_close()
