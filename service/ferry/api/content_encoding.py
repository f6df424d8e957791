"""Compressed request bodies (``Content-Encoding: gzip`` or ``deflate``), inflated as they arrive.

The compressed body is bounded by the route's body limit like any other; what it inflates to is
bounded separately (``api.max_decompressed_bytes``), and checked while inflating: zlib is asked for at
most the bytes still allowed (plus one, to see an overrun), so a gzip bomb costs at most the limit in
memory and the time to inflate that much, never its full size. ``deflate`` is the zlib format (RFC
9110); a raw deflate stream, which some clients send under that name, is accepted too. Several gzip
members one after the other are one body, as gzip(1) reads them.
"""

from __future__ import annotations

import asyncio
import zlib

from ferry.errors import DecompressedTooLarge, MalformedContentEncoding, UnsupportedContentEncoding

_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS
# Inflated a slice at a time, with a yield to the event loop between slices.
SLICE_BYTES = 1024 * 1024
_ENCODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}


def wbits_for(content_encoding: str) -> int | None:
    """zlib's window bits for a Content-Encoding header; None for identity; 415 for anything else."""
    token = content_encoding.strip().lower()
    if token in ("", "identity"):
        return None
    wbits = _ENCODINGS.get(token)
    if wbits is None:
        raise UnsupportedContentEncoding(
            f"Content-Encoding {content_encoding[:64]!r} is not supported; send gzip, deflate or identity"
        )
    return wbits


def _zlib_header(start: bytes) -> bool:
    """RFC 1950: method 8 (deflate) and a header whose two bytes are a multiple of 31."""
    return start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0


class Inflater:
    """Inflates one body, fed chunk by chunk; refuses more than ``limit`` inflated bytes."""

    def __init__(self, wbits: int, limit: int) -> None:
        self.wbits = wbits
        self.limit = limit
        self.size = 0
        self._parts: list[bytes] = []
        self._zlib = zlib.decompressobj(wbits)
        self._prefix = b"" if wbits == _ZLIB else None  # deflate: zlib or raw, told by the first 2 bytes

    async def feed(self, chunk: bytes) -> None:
        data = chunk
        if self._prefix is not None:
            data = self._prefix + data
            if len(data) < 2:
                self._prefix = data
                return
            self._prefix = None
            if not _zlib_header(data):  # "deflate" sent as a raw deflate stream, as some clients do
                self.wbits, self._zlib = _RAW_DEFLATE, zlib.decompressobj(_RAW_DEFLATE)
        while data:
            if self._zlib.eof:  # a further gzip member (or trailing bytes, which are an error)
                if self.wbits != _GZIP:
                    raise MalformedContentEncoding("bytes follow the end of the compressed stream")
                self._zlib = zlib.decompressobj(self.wbits)
            data = await self._inflate(data)

    async def _inflate(self, data: bytes) -> bytes:
        """Inflate ``data`` (in slices); return what follows the end of the stream, if it ends."""
        while True:
            most = min(self.limit - self.size, SLICE_BYTES) + 1
            try:
                out = self._zlib.decompress(data, most)
            except zlib.error as exc:
                raise MalformedContentEncoding(f"the compressed request body is corrupt ({exc})") from None
            self.size += len(out)
            if self.size > self.limit:
                raise DecompressedTooLarge(f"the request body inflates to more than {self.limit} bytes")
            self._parts.append(out)
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                return self._zlib.unused_data
            if not data and len(out) < most:  # a full slice may leave output inside zlib: ask again
                return b""
            await asyncio.sleep(0)  # a large body: let the loop serve others between slices

    def finish(self) -> bytes:
        """The whole inflated body; 400 when the compressed stream stopped before its end."""
        if not self._zlib.eof:
            raise MalformedContentEncoding("the compressed request body ends before its stream does")
        return b"".join(self._parts)
