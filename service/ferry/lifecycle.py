"""Process-wide lifecycle state that signal handlers set and request handlers read."""

from __future__ import annotations

import threading
from collections.abc import Callable

_draining = threading.Event()
_heartbeat: Callable[[], None] = lambda: None  # noqa: E731


def set_heartbeat(callback: Callable[[], None]) -> None:
    """The gunicorn worker registers its notify(): the master kills workers that stay silent."""
    global _heartbeat
    _heartbeat = callback


def heartbeat() -> None:
    """Tell the master this worker is alive (for long work before the server loop runs)."""
    _heartbeat()


_exit_request: Callable[[], None] = lambda: None  # noqa: E731


def set_exit_request(callback: Callable[[], None]) -> None:
    """The gunicorn worker registers how to stop itself (so that its master starts a fresh one)."""
    global _exit_request
    _exit_request = callback


def request_exit() -> None:
    """Ask this worker process to stop and be replaced (a hung model call cannot be stopped otherwise)."""
    _exit_request()


def start_draining() -> None:
    """Called on SIGTERM/SIGINT: readiness turns 503 from now on."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()
