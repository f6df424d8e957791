"""The gunicorn worker class: uvicorn_worker.UvicornWorker tuned for ferry."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from ferry.api import connections
from ferry.lifecycle import set_exit_request, set_heartbeat, start_draining
from ferry.settings import Settings

# How long a stopping worker lets connections it has already accepted deliver their request
# before it closes the ones that are still idle.
ACCEPTED_CONNECTION_GRACE_S = 0.25
# Exit status of a worker that stopped itself because a model call hung (not gunicorn's 3 or 4, which
# would stop the whole server): its master logs it and starts a fresh worker.
EXIT_HUNG_MODEL = 70


class DrainingServer(Server):
    """uvicorn server that flags the process as draining the moment a stop signal arrives, and
    does not drop requests that were already on their way when it stopped."""

    drain_grace_s = 2.0

    def handle_exit(self, sig: int, frame: Any) -> None:
        start_draining()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes every connection without a request in progress at once: a request already
        # on its way over an idle keep-alive connection, or on a connection still in the listen
        # backlog, meets a reset. Instead: stop accepting but serve what is already in the
        # backlog; keep connections open while their clients send one more request, answered with
        # Connection: close (RequestMiddleware adds it while draining); only then let uvicorn
        # close what is left and wait for in-flight work.
        start_draining()
        loop = asyncio.get_running_loop()
        backlog = [socket.socket(fileno=os.dup(s.fileno())) for server in self.servers for s in server.sockets]
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for listener in backlog:
            await self._serve_backlog(loop, listener)
        grace_ends = loop.time() + max(self.drain_grace_s, ACCEPTED_CONNECTION_GRACE_S)
        minimum_ends = loop.time() + ACCEPTED_CONNECTION_GRACE_S
        while loop.time() < grace_ends and (self.server_state.connections or loop.time() < minimum_ends):
            await asyncio.sleep(0.02)
        await super().shutdown(sockets=None)

    async def _serve_backlog(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        """Accept the connections the kernel already queued for this socket, then close our copy."""
        listener.setblocking(False)
        config = self.config
        try:
            while True:
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                protocol = functools.partial(
                    config.http_protocol_class,  # type: ignore[call-arg]
                    config=config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                )
                await loop.connect_accepted_socket(protocol, connection)
        finally:
            listener.close()


class FerryWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn-worker ships no type information
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - overrides the parent's class attribute
        "loop": "uvloop",
        # uvicorn's httptools protocol plus header size, read timeouts and a connection limit.
        "http": connections.GuardedHttpToolsProtocol,
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
        set_exit_request(self._exit_for_hung_model)
        self._hung_exit = False

    def _exit_for_hung_model(self) -> None:
        """Stop serving (gracefully: other requests finish), then leave without waiting for the hung thread."""
        self._hung_exit = True
        if self._server is not None:
            self._server.should_exit = True

    async def callback_notify(self) -> None:
        # uvicorn calls this every timeout/2. A master killed with SIGKILL cannot stop its workers;
        # without this check they would live on as orphans, still serving and running jobs.
        if os.getppid() != self.ppid and self._server is not None:
            self.log.warning("master %s is gone; worker %s exits", self.ppid, self.pid)
            self._server.should_exit = True
        self.notify()

    _server: DrainingServer | None = None

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        settings = Settings()
        connections.configure(settings.connections)
        server = self._server = DrainingServer(config=self.config)
        server.drain_grace_s = settings.server.drain_grace_s
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if self._hung_exit:
            # Interpreter shutdown would join the inference thread, which never returns.
            self.log.error("worker %s exits: a model call hung", self.pid)
            os._exit(EXIT_HUNG_MODEL)
