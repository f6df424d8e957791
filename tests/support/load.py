"""Steady keep-alive load from client threads, every outcome classified: for drain tests.

A request *fails* when it reached the server and did not get a complete 200 with a prediction: a
reset or closed keep-alive connection (``reset:*``), a body cut short (``truncated``), another
status (``http_<status>``), no answer within 10 s (``timeout``). A request that could not connect
at all (``refused``) never reached the server: after SIGTERM the listener is closed, and in a
cluster the preStop sleep has taken the pod out of the Service's endpoints before that, so such a
request goes to another pod. Drain tests therefore allow ``refused`` and nothing else but ``ok``.
"""

from __future__ import annotations

import threading
import time

import httpx


class Load:
    """``connections`` threads, each with its own keep-alive connection, at ``rate`` requests/s in total."""

    def __init__(self, url: str, body: dict, rate: float, connections: int = 8) -> None:
        self.url, self.body, self.interval = url, body, connections / rate
        self.connections = connections
        self.outcomes: dict[str, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(connections)]

    def _count(self, key: str) -> None:
        with self.lock:
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(10, connect=2)) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post(self.url, json=self.body)
                    body = r.json()
                    self._count("ok" if r.status_code == 200 and "prediction" in body else f"http_{r.status_code}")
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    # No connection: the listener is closed (refused), or a container's network is gone
                    # (a published port whose container exited may drop the SYN instead of refusing it).
                    self._count("refused")
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                    self._count(f"reset:{type(exc).__name__}")
                except httpx.TimeoutException:
                    self._count("timeout")
                except ValueError:
                    self._count("truncated")
                time.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def failures(self) -> dict[str, int]:
        """Outcomes other than ``ok`` and ``refused``: requests the server took and did not answer."""
        with self.lock:
            return {k: v for k, v in self.outcomes.items() if k not in ("ok", "refused")}

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
