"""The one exception the client raises for a failed call."""

from __future__ import annotations

from typing import Any


class FerryClientError(Exception):
    """A call that failed: an error answer from the server (``status`` set), an ``event: failed`` in a
    stream, or a transport failure after the retries (``status`` None, ``code`` ``transport_error`` or
    ``timeout``).

    ``code``, ``message``, ``request_id`` and ``details`` come from the server's JSON error body
    (``{"code", "message", "request_id", "details"?}``; under ``/v2`` the message is in ``"error"``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: Any = None,
        retry_after: float | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details
        self.retry_after = retry_after
        self.offset = offset

    def __str__(self) -> str:
        head = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        text = f"{head}: {self.message}" if head else self.message
        if self.offset is not None:
            text += f" (at record {self.offset})"
        if self.request_id:
            text += f" [request_id {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return (
            f"FerryClientError(status={self.status!r}, code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r})"
        )
