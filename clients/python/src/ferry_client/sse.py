"""A small Server-Sent Events parser (the WHATWG event-stream format, fields event/data/id/retry).

Lines are fed one at a time, without their line ending; a blank line dispatches the event being
built. Lines starting with ``:`` are comments (servers send them as heartbeats) and are ignored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


class SSEParser:
    """Incremental parser: ``feed(line)`` returns a complete event when ``line`` is the blank line ending one."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self._first = True

    def feed(self, line: str) -> ServerSentEvent | None:
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        # any other field is ignored, as the format says
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, retry = self._event, self._data, self._retry
        self._event, self._data, self._retry = "", [], None
        if not data:  # an event without data is not dispatched (a lone "event:" or "id:" block)
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self.last_event_id, retry=retry)


def iter_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from an iterable of lines; an event not ended by a blank line at EOF is dropped."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def aiter_events(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    parser = SSEParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
