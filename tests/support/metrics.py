"""Reading a live server's /metrics, and loading it until a gauge says what a test needs."""

from __future__ import annotations

import re
import threading
import time

import httpx

from support.server import Server


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics_text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def scrape(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


class Background:
    """Requests sent from threads, each on a fresh connection, whose status codes are kept for later."""

    def __init__(self, url: str, body: dict, timeout_s: float = 60, headers: dict[str, str] | None = None) -> None:
        self.url, self.body, self.timeout_s, self.headers = url, body, timeout_s, headers or {}
        self.threads: list[threading.Thread] = []
        self.statuses: list[int | str] = []

    def _post(self) -> None:
        try:
            response = httpx.post(self.url, json=self.body, headers=self.headers, timeout=self.timeout_s)
            self.statuses.append(response.status_code)
        except httpx.HTTPError as exc:  # kept, not raised: an exception in a thread is lost
            self.statuses.append(type(exc).__name__)

    def send(self) -> None:
        thread = threading.Thread(target=self._post)
        thread.start()
        self.threads.append(thread)

    def until(self, server: Server, gauge: str, want: float, limit: int = 60) -> Background:
        """Send one request at a time until ``gauge`` reaches ``want``.

        Which worker accepts a new connection is the kernel's choice, so a fixed number of requests
        does not guarantee that every worker is busy; a gauge summed over workers does.
        """
        while counter(scrape(server), gauge) < want:
            assert len(self.threads) < limit, f"{gauge} never reached {want} after {limit} requests"
            self.send()
            time.sleep(0.05)
        return self

    def join(self) -> list[int | str]:
        for thread in self.threads:
            thread.join()
        return self.statuses
