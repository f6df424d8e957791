"""Request bodies parsed with bounded memory and without holding the event loop.

Parsed JSON costs far more than its text: ``[],`` is 3 bytes of text and a 64-byte Python list, so
60 MiB of ``{"records":[[],[],...]}`` would become 2 GiB of objects before any validator could count
them. Two defences, both before anything is built:

- :func:`check_values`: an upper bound on the number of JSON values in the body (commas plus ``[`` and
  ``{`` plus one; characters inside strings only raise the bound) is compared with what the route can
  legitimately hold (its record cap times the values of one record, plus slack). A body over it is
  refused with 413 at the cost of three ``bytes.count`` scans, done in slices with a yield between them.
- :func:`loads`: a large body is parsed a slice of records at a time (about 1 MiB of text each, a few
  ms of orjson) with a yield to the event loop in between, so /livez and other requests keep being
  served while a 20 MB stream body is parsed. Records are split at ``}``/``]`` ``,`` ``{``/``[``
  boundaries of the top-level ``"records"`` array; a split that is not a real boundary (inside a
  string or a nested container) always leaves a slice that is not valid JSON, and then the body is
  parsed in one go instead, which gives the same result or the same error.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from starlette.exceptions import HTTPException

from ferry.api.errors import from_status
from ferry.errors import from_validation

# Bodies up to this size are parsed in one call: a few ms at most.
SLICE_BYTES = 1024 * 1024
# Values a body may hold beyond its records: chunk_size, small fields, the outer object.
SLACK_VALUES = 64

_RECORDS_START = re.compile(rb'"records"\s*:\s*\[')
_BOUNDARY = re.compile(rb"[}\]]\s*,\s*[{\[]")


async def count_values(body: bytes) -> int:
    """An upper bound on the number of JSON values in ``body``, counted a slice at a time."""
    total = 1
    for start in range(0, len(body), 8 * SLICE_BYTES):
        end = start + 8 * SLICE_BYTES
        total += body.count(b",", start, end) + body.count(b"[", start, end) + body.count(b"{", start, end)
        if end < len(body):
            await asyncio.sleep(0)
    return total


async def check_values(body: bytes, max_values: int) -> None:
    """413 when the body holds more JSON values than the route can accept; small bodies skip the scan."""
    if len(body) <= max_values:  # a value takes at least one byte of text: nothing to count
        return
    if await count_values(body) > max_values:
        raise HTTPException(
            413,
            f"the body holds more JSON values than this route accepts ({max_values}: its record limit "
            "times the fields of one record)",
        )


async def loads(body: bytes) -> Any:
    """``orjson.loads(body)``, in slices with yields in between for a large body with a records array."""
    if len(body) <= SLICE_BYTES:
        return orjson.loads(body)
    sliced = await _loads_sliced(body)
    return sliced if sliced is not None else orjson.loads(body)


async def parse(body: bytes, max_values: int, max_batch: int) -> Any:
    """``body`` checked and parsed, or the ``FerryError`` FastAPI's body reading would end in for it
    (413 for too many values, 400 malformed_json with the error's position): the hot path's JSON step,
    and the one for a binary request's JSON header on both paths."""
    try:
        await check_values(body, max_values)
        return await loads(body)
    except HTTPException as exc:
        raise from_status(exc.status_code, str(exc.detail)) from None
    except orjson.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise from_validation([error], max_batch) from None
    except Exception:
        raise from_status(400, "There was an error parsing the body") from None


async def _loads_sliced(body: bytes) -> dict[str, Any] | None:
    """The body parsed slice by slice, or None when it cannot be sliced safely (then parse it whole)."""
    match = _RECORDS_START.search(body, 0, 4096)
    if match is None:
        return None
    prefix = body[: match.start()]
    # "records" must be a key of the top-level object: no container opened before it but that object.
    if prefix.count(b"{") != 1 or prefix.count(b"[") or not prefix.lstrip().startswith(b"{"):
        return None
    records: list[Any] = []
    position = match.end()
    while True:
        boundary = _BOUNDARY.search(body, position + SLICE_BYTES)
        if boundary is None:
            break
        try:
            piece = orjson.loads(b"[" + body[position : boundary.start() + 1] + b"]")
        except orjson.JSONDecodeError:
            return None
        records.extend(piece)
        position = boundary.end() - 1  # at the next record's opening bracket
        await asyncio.sleep(0)
    try:
        rest = orjson.loads(body[: match.end()] + body[position:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rest, dict) or not isinstance(rest.get("records"), list):
        return None
    rest["records"] = records + rest["records"]
    return rest
