"""Process-wide lifecycle state that signal handlers set and request handlers read."""

from __future__ import annotations

import threading

_draining = threading.Event()


def start_draining() -> None:
    """Called on SIGTERM/SIGINT: readiness turns 503 from now on."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()
