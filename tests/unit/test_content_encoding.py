"""Compressed request bodies (ferry.api.content_encoding): inflated as they arrive, bounded while inflating."""

from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
import zlib

import pytest

from ferry.api import content_encoding
from ferry.errors import DecompressedTooLarge, MalformedContentEncoding, UnsupportedContentEncoding

LIMIT = 4 * 1024 * 1024


def _inflate(data: bytes, encoding: str = "gzip", limit: int = LIMIT, chunk: int = 65536) -> bytes:
    wbits = content_encoding.wbits_for(encoding)
    assert wbits is not None
    inflater = content_encoding.Inflater(wbits, limit)

    async def go() -> bytes:
        for start in range(0, len(data), chunk):
            await inflater.feed(data[start : start + chunk])
        return inflater.finish()

    return asyncio.run(go())


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


BODY = b'{"record": {"tenure_months": 12}}' * 1000


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
    ],
)
def test_bodies_inflate(encoding: str, compress) -> None:
    for chunk in (1, 7, 65536):  # however the body is cut into messages
        assert _inflate(compress(BODY), encoding, chunk=chunk) == BODY


def test_gzip_members_one_after_the_other_are_one_body() -> None:
    assert _inflate(gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"


def test_identity_and_unknown_encodings() -> None:
    assert content_encoding.wbits_for("identity") is None
    for unknown in ("br", "zstd", "gzip, br", "compress"):
        with pytest.raises(UnsupportedContentEncoding):
            content_encoding.wbits_for(unknown)


@pytest.mark.parametrize(
    "broken",
    [
        gzip.compress(BODY)[:-8],  # truncated
        gzip.compress(BODY)[:40] + b"\xff" * 40,  # corrupt
        b"not compressed at all",
        zlib.compress(BODY) + b"trailing",
    ],
)
def test_corrupt_streams_are_400(broken: bytes) -> None:
    encoding = "deflate" if broken.startswith(b"x") else "gzip"
    with pytest.raises(MalformedContentEncoding):
        _inflate(broken, encoding)


def test_exactly_the_limit_passes_one_byte_more_does_not() -> None:
    assert len(_inflate(gzip.compress(b"a" * 2048), limit=2048)) == 2048
    with pytest.raises(DecompressedTooLarge):
        _inflate(gzip.compress(b"a" * 2049), limit=2048)


def test_a_gzip_bomb_is_refused_quickly_in_bounded_memory() -> None:
    """10 MB of zeros compress to about 10 kB: refused at the 4 MiB limit, holding about the limit in
    memory (the 10 MB are never built) and taking milliseconds."""
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 12_000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(DecompressedTooLarge):
        _inflate(bomb)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The figure docs/architecture.md quotes (`pytest tests/unit/test_content_encoding.py -s -k bomb`).
    print(f"gzip bomb of {len(bomb):,} bytes refused in {seconds:.3f} s, traced peak {peak / 2**20:.1f} MiB")
    assert peak < LIMIT + 2 * 1024 * 1024, peak  # the limit plus one slice, not 10 MB
    assert seconds < 1.0, seconds
