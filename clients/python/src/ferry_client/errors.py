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

    def shifted(self, base: int) -> FerryClientError:
        """This error with the record positions it names counted from ``base``: an error the server gave
        for one request of records cut from a longer list, told in that list's positions. The details'
        ``loc`` ``["body", "records", i, ...]`` become ``[..., base + i, ...]``; ``offset`` becomes the
        first record named (or ``base``)."""
        details = self.details
        named: list[int] = []
        if isinstance(details, list):
            details = [_shift_detail(detail, base, named) for detail in details]
        return FerryClientError(
            self.message,
            status=self.status,
            code=self.code,
            request_id=self.request_id,
            details=details,
            retry_after=self.retry_after,
            offset=min(named) if named else base + (self.offset or 0),
        )

    def __repr__(self) -> str:
        return (
            f"FerryClientError(status={self.status!r}, code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r})"
        )


def record_index(detail: Any) -> int | None:
    """The record a validation detail names (``loc`` ``["body", "records", i, ...]``), else None."""
    loc = detail.get("loc") if isinstance(detail, dict) else None
    if isinstance(loc, list) and len(loc) >= 3 and loc[:2] == ["body", "records"]:
        index = loc[2]
        if isinstance(index, int) and not isinstance(index, bool):
            return index
    return None


def _shift_detail(detail: Any, base: int, named: list[int]) -> Any:
    index = record_index(detail)
    if index is None:
        return detail
    named.append(base + index)
    return {**detail, "loc": ["body", "records", base + index, *detail["loc"][3:]]}
