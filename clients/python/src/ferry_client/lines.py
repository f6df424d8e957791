"""Errors the server reports for records, told as lines of the input file.

The server names a record by its index in the request (``loc`` ``["body", "records", i, field]``).
The client counts it in the caller's whole list (``FerryClientError.shifted``: batch or job offset +
index); here that position becomes the line the record starts on in its file (``Input.lines``: 1-based,
a CSV's header is line 1, blank lines counted), so a bad value on line 1,236 is reported as line 1236.
"""

from __future__ import annotations

from typing import Any

from ferry_client.errors import FerryClientError, record_index
from ferry_client.io import Input

MAX_SHOWN = 5  # lines listed in one message; the count says how many there were


def _field(detail: dict[str, Any]) -> str:
    return ".".join(str(part) for part in detail["loc"][3:])


def record_lines(exc: FerryClientError, source: Input) -> list[tuple[int, str]]:
    """``(line, "field: reason")`` for each detail of ``exc`` that names a record of ``source``, in
    line order; empty when the error is about no record in particular."""
    found: list[tuple[int, str]] = []
    for detail in exc.details if isinstance(exc.details, list) else ():
        index = record_index(detail)
        if index is None or not 0 <= index < len(source.lines):
            continue
        field = _field(detail)
        message = str(detail.get("msg", detail))
        found.append((source.lines[index], f"{field}: {message}" if field else message))
    return sorted(found, key=lambda item: item[0])


def describe(exc: FerryClientError, source: Input | None) -> tuple[str, bool]:
    """The message for ``exc`` and whether it is about the input (records the server refused, by line)."""
    lines = record_lines(exc, source) if source is not None else []
    if not lines or source is None:
        return _generic(exc), False
    head = " ".join(str(part) for part in (exc.status, exc.code) if part is not None)
    where = f" [request_id {exc.request_id}]" if exc.request_id else ""
    if len(lines) == 1:
        line, reason = lines[0]
        return f"{source.name}: line {line}: {reason} ({head}){where}", True
    records = len({line for line, _ in lines})
    refused = f"{records} record{'s' if records > 1 else ''}, {len(lines)} problems"
    text = f"{source.name}: the server refused {refused} ({head}){where}"
    for line, reason in lines[:MAX_SHOWN]:
        text += f"\n  line {line}: {reason}"
    if len(lines) > MAX_SHOWN:
        text += f"\n  ... and {len(lines) - MAX_SHOWN} more"
    return text, True


def _generic(exc: Exception) -> str:
    text = str(exc)
    details = getattr(exc, "details", None)
    if isinstance(details, list):
        for detail in details[:MAX_SHOWN]:
            if isinstance(detail, dict):
                where = ".".join(str(part) for part in detail.get("loc", []))
                text += f"\n  {where}: {detail.get('msg', detail)}"
            else:
                text += f"\n  {detail}"
    return text
