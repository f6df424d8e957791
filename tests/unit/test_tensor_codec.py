"""The binary tensor data codec (ferry.api.tensor_codec): exact sizes, every datatype, round trips."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ferry.api import tensor_codec
from ferry.errors import MalformedBinaryData


def _request(*tensors: tuple[str, list[int], bytes]) -> tuple[dict, memoryview]:
    header = {
        "inputs": [
            {"name": f"t{i}", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            for i, (datatype, shape, raw) in enumerate(tensors)
        ]
    }
    return header, memoryview(b"".join(raw for _, _, raw in tensors))


@pytest.mark.parametrize("datatype", sorted(tensor_codec.FIXED_DTYPES))
def test_every_fixed_datatype_round_trips(datatype: str) -> None:
    values = [0, 1, 1, 0, 1, 0] if datatype == "BOOL" else [0, 1, 2, 3, 4, 5]
    raw = tensor_codec.encode(datatype, values)
    assert len(raw) == 6 * tensor_codec.FIXED_DTYPES[datatype].itemsize
    header, binary = _request((datatype, [2, 3], raw))
    assert tensor_codec.fill_inputs(header, binary) == 6
    expected = [bool(v) for v in values] if datatype == "BOOL" else values
    assert header["inputs"][0]["data"] == expected


def test_little_endian_as_triton_writes_it() -> None:
    header, binary = _request(("FP64", [2], struct.pack("<2d", 1.5, -2.25)), ("INT32", [1], struct.pack("<i", 7)))
    tensor_codec.fill_inputs(header, binary)
    assert [t["data"] for t in header["inputs"]] == [[1.5, -2.25], [7]]


def test_bytes_elements_are_length_prefixed() -> None:
    raw = tensor_codec.encode("BYTES", ["one_year", "", "é"])
    assert raw == b"\x08\x00\x00\x00one_year" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    header, binary = _request(("BYTES", [3, 1], raw))
    assert tensor_codec.fill_inputs(header, binary) == 3
    assert header["inputs"][0]["data"] == ["one_year", "", "é"]


def test_inputs_without_binary_size_keep_their_json_data() -> None:
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [1], "data": [3.0]},
            {"name": "b", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
        ]
    }
    assert tensor_codec.fill_inputs(header, memoryview(struct.pack("<d", 4.0))) == 1
    assert [t["data"] for t in header["inputs"]] == [[3.0], [4.0]]


def test_split_takes_the_header_length() -> None:
    body = json.dumps({"inputs": []}).encode() + b"\x01\x02"
    header, binary = tensor_codec.split(body, str(len(body) - 2))
    assert json.loads(header) == {"inputs": []} and bytes(binary) == b"\x01\x02"


@pytest.mark.parametrize(
    ("tensors", "extra", "message"),
    [
        ([("FP64", [1, 2], struct.pack("<d", 1.0))], b"", "does not match shape"),
        ([("FP64", [1], struct.pack("<d", 1.0))], b"\x00", "follow the last binary tensor"),
        ([("INT8", [3], b"\x01\x02\x03")], b"\x04", "follow the last binary tensor"),
        ([("BOOL", [1], b"\x02")], b"", "0 or 1"),
        ([("BYTES", [1], b"\x05\x00\x00\x00abc")], b"", "runs past its tensor"),
        ([("BYTES", [1], b"\x01\x00")], b"", "cut off"),
        ([("BYTES", [2], tensor_codec.encode("BYTES", ["a"]))], b"", "do not fill its shape"),
        ([("BYTES", [1], tensor_codec.encode("BYTES", ["a", "b"]))], b"", "follow its 1 BYTES elements"),
        ([("BYTES", [1], b"\x01\x00\x00\x00\xff")], b"", "not UTF-8"),
        ([("COMPLEX", [1], b"\x00")], b"", "no binary form"),
        ([("FP32", [-1], b"")], b"", "non-negative"),
    ],
)
def test_any_size_mismatch_is_refused(tensors: list, extra: bytes, message: str) -> None:
    header, binary = _request(*tensors)
    with pytest.raises(MalformedBinaryData, match=message):
        tensor_codec.fill_inputs(header, memoryview(bytes(binary) + extra))


@pytest.mark.parametrize(
    ("parameters", "data", "message"),
    [
        ({"binary_data_size": 16}, None, "runs past the end"),
        ({"binary_data_size": -8}, None, "byte count"),
        ({"binary_data_size": True}, None, "byte count"),
        ({"binary_data_size": 8.0}, None, "byte count"),
        ({"binary_data_size": 8}, [1.0], "both data"),
    ],
)
def test_bad_binary_sizes_are_refused(parameters: dict, data: list | None, message: str) -> None:
    tensor = {"name": "x", "datatype": "FP64", "shape": [1], "parameters": parameters}
    if data is not None:
        tensor["data"] = data
    with pytest.raises(MalformedBinaryData, match=message):
        tensor_codec.fill_inputs({"inputs": [tensor]}, memoryview(struct.pack("<d", 1.0)))


@pytest.mark.parametrize("value", ["", "12a", "-1", "1e3", "٣", "9" * 20, "100"])
def test_bad_header_lengths_are_refused(value: str) -> None:
    with pytest.raises(MalformedBinaryData):
        tensor_codec.split(b"{}", value)


def test_bytes_without_inputs_are_refused() -> None:
    with pytest.raises(MalformedBinaryData, match="2 bytes follow"):
        tensor_codec.fill_inputs({"inputs": "nope"}, memoryview(b"\x00\x00"))


def test_encode_matches_numpy_and_bytes() -> None:
    proba = np.array([[0.25, 0.75]])
    assert tensor_codec.encode("FP64", proba.ravel().tolist()) == proba.astype("<f8").tobytes()
    assert tensor_codec.encode("BYTES", [b"\x00raw"]) == b"\x04\x00\x00\x00\x00raw"
