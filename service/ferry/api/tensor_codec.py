"""The Open Inference Protocol's binary tensor data extension (as Triton and KServe define it), as bytes.

A request whose ``Inference-Header-Content-Length`` header is set carries a JSON inference header of
that many bytes, followed by the raw data of every input whose ``parameters.binary_data_size`` is
set, in input order and back to back. Fixed-size datatypes are little-endian arrays of exactly
``prod(shape)`` elements; BOOL is one byte per element (0 or 1); BYTES is ``prod(shape)`` elements,
each a 4-byte little-endian length followed by that many bytes. A response that asks for binary
outputs is laid out the same way, each binary output naming its size in ``parameters.binary_data_size``.

Every size is checked exactly: a header length past the body, a tensor running past the body, a size
that does not match its shape and datatype, bytes left after the last tensor, all refuse the request
with :class:`MalformedBinaryData` (400). Nothing here knows HTTP beyond the header's name.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ferry.errors import MalformedBinaryData

HEADER = "inference-header-content-length"
_LENGTH = struct.Struct("<I")
# Datatypes of fixed element size, as little-endian numpy dtypes (BOOL travels as one byte 0/1).
FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("u1"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_MAX_HEADER_DIGITS = 19  # anything longer cannot describe a body this server accepts


def split(body: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """(JSON inference header, binary section) of a body whose header says ``header_length`` bytes."""
    value = header_length.strip()
    if not value.isdigit() or not value.isascii() or len(value) > _MAX_HEADER_DIGITS:
        raise MalformedBinaryData(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    length = int(value)
    if length > len(body):
        raise MalformedBinaryData(
            f"Inference-Header-Content-Length is {length} bytes but the body holds only {len(body)}"
        )
    return body[:length], memoryview(body)[length:]


def fill_inputs(request: Any, binary: memoryview) -> int:
    """Give every input of the parsed inference header that has ``binary_data_size`` its ``data``
    from ``binary`` (in input order); return the number of elements decoded. The header's other
    faults are left to the request's validation; binary sizes are checked here, exactly."""
    inputs = request.get("inputs") if isinstance(request, dict) else None
    offset = 0
    elements = 0
    for index, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        name = tensor.get("name", index)
        size = parameters["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MalformedBinaryData(f"input {name!r}: parameters.binary_data_size must be a byte count")
        if "data" in tensor:
            raise MalformedBinaryData(f"input {name!r} has both data and parameters.binary_data_size")
        if size > len(binary) - offset:
            raise MalformedBinaryData(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        data = decode(name, tensor.get("datatype"), tensor.get("shape"), binary[offset : offset + size])
        tensor["data"] = data
        offset += size
        elements += len(data)
    if offset != len(binary):
        raise MalformedBinaryData(
            f"{len(binary) - offset} bytes follow the last binary tensor (sizes must add up to the body)"
        )
    return elements


def decode(name: Any, datatype: Any, shape: Any, raw: memoryview) -> list[Any]:
    """One tensor's binary data as the flat list its JSON ``data`` would hold (BYTES as str)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MalformedBinaryData(f"input {name!r}: shape must be a list of non-negative integers")
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, count, raw)
    dtype = FIXED_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise MalformedBinaryData(f"input {name!r}: datatype {datatype!r} has no binary form")
    if len(raw) != count * dtype.itemsize:
        raise MalformedBinaryData(
            f"input {name!r}: binary_data_size {len(raw)} does not match shape {shape} of {datatype} "
            f"({count * dtype.itemsize} bytes)"
        )
    values = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL":
        if (values > 1).any():
            raise MalformedBinaryData(f"input {name!r}: BOOL bytes must be 0 or 1")
        return values.astype(bool).tolist()  # type: ignore[no-any-return]
    return values.tolist()  # type: ignore[no-any-return]


def _decode_bytes(name: Any, count: int, raw: memoryview) -> list[Any]:
    values: list[Any] = []
    offset = 0
    while offset < len(raw):
        if len(values) == count:
            raise MalformedBinaryData(f"input {name!r}: bytes follow its {count} BYTES elements")
        if len(raw) - offset < _LENGTH.size:
            raise MalformedBinaryData(f"input {name!r}: a BYTES element's 4-byte length is cut off")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if length > len(raw) - offset:
            raise MalformedBinaryData(f"input {name!r}: a BYTES element of {length} bytes runs past its tensor")
        try:
            values.append(str(raw[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise MalformedBinaryData(f"input {name!r}: BYTES element {len(values)} is not UTF-8 text") from None
        offset += length
    if len(values) != count:
        raise MalformedBinaryData(f"input {name!r}: {len(values)} BYTES elements do not fill its shape ({count})")
    return values


def encode(datatype: str, data: list[Any]) -> bytes:
    """A flat list of values as the binary data of a ``datatype`` tensor."""
    if datatype == "BYTES":
        parts = []
        for value in data:
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.asarray(data, dtype=FIXED_DTYPES[datatype]).tobytes()
