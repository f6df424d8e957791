"""The gunicorn worker class: uvicorn_worker.UvicornWorker tuned for ferry."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from ferry.lifecycle import set_heartbeat, start_draining

# How long a stopping worker lets connections it has already accepted deliver their request
# before it closes the ones that are still idle.
ACCEPTED_CONNECTION_GRACE_S = 0.25


class DrainingServer(Server):
    """uvicorn server that flags the process as draining the moment a stop signal arrives, and
    does not drop connections it accepted just before stopping."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        start_draining()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes every connection without a request in progress at once, including one
        # accepted a moment ago whose request bytes are in flight: its client sees a reset (found
        # by the max_requests recycling test). Stop accepting first, wait briefly, then proceed.
        start_draining()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(ACCEPTED_CONNECTION_GRACE_S)
        await super().shutdown(sockets=None)


class FerryWorker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - overrides the parent's class attribute
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,  # ferry's middleware writes exactly one access line per request
        "server_header": False,
        "proxy_headers": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # UvicornWorker ignores gunicorn's graceful_timeout; finish draining one second before
        # the master would SIGKILL us, so in-flight requests complete or are cancelled cleanly.
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 1)
        # The app waits for its model before serving; it keeps the master's heartbeat alive meanwhile.
        set_heartbeat(self.notify)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
