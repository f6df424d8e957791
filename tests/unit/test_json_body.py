"""Bounded JSON parsing of request bodies (ferry.api.json_body), in process."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import orjson
import pytest
from starlette.exceptions import HTTPException

from ferry.api import json_body
from ferry.card import Feature
from ferry.features import FeatureSchema

RECORD = {"a": 1.5, "b": "x,{y", "c": True}


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize(
    "doc",
    [
        {"records": [RECORD] * 120_000, "chunk_size": 7},
        {"chunk_size": 7, "records": [[1, 2, 3]] * 400_000},
        {"records": [[1, [2]], {"k": "}, {"}] * 200_000},
        {"metadata": {"records": [[9]]}, "records": [[1]] * 600_000},
        {"records": ['a\\"], [\\"b'] * 400_000},
    ],
    ids=["dicts", "lists-not-first", "nested-and-strings", "nested-records-key", "tricky-strings"],
)
def test_sliced_parsing_gives_what_one_parse_gives(doc: dict) -> None:
    body = orjson.dumps(doc)
    assert len(body) > json_body.SLICE_BYTES
    assert run(json_body.loads(body)) == orjson.loads(body)
    if "metadata" not in doc:  # "records" is not the top-level key the prefix check lets through
        sliced = run(json_body._loads_sliced(body))
        assert sliced is None or sliced == doc
    spaced = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    assert run(json_body.loads(spaced)) == doc


def test_a_large_body_is_parsed_in_slices_with_yields_between_them() -> None:
    body = orjson.dumps({"records": [RECORD] * 200_000})  # about 8 MB

    async def longest_hold() -> float:
        holds: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0)
                now = time.perf_counter()
                holds.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        parsed = await json_body.loads(body)
        stop = True
        await task
        assert len(parsed["records"]) == 200_000
        return max(holds)

    hold = run(longest_hold())
    start = time.perf_counter()
    orjson.loads(body)
    whole = time.perf_counter() - start
    print(f"8 MB body: longest event-loop hold {hold * 1000:.1f} ms sliced, {whole * 1000:.1f} ms in one parse")
    assert hold < whole / 3


def test_a_body_with_more_values_than_the_route_accepts_is_refused_before_parsing() -> None:
    body = b'{"records":[' + b",".join([b"[]"] * 2_000_000) + b"]}"  # 6 MB: 128 MB as Python lists
    tracemalloc.start()
    with pytest.raises(HTTPException) as caught:
        run(json_body.check_values(body, max_values=100_000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert caught.value.status_code == 413
    assert peak < 1_000_000  # nothing was built
    run(json_body.check_values(orjson.dumps({"records": [[1, 2]] * 1000}), max_values=3 * 1000 + 64))


def test_the_value_bound_of_a_legitimate_body_fits_the_schema_allowance() -> None:
    features = [
        Feature(name="n", type="number"),
        Feature(name="c", type="categorical", categories=["a,b", "c"]),
        Feature(name="f", type="boolean"),
    ]
    schema = FeatureSchema(features)
    records = [{"n": 1.0, "c": "a,b", "f": True}] * 1000
    body = orjson.dumps({"records": records, "chunk_size": 10})
    assert run(json_body.count_values(body)) <= schema.max_values(1000) + json_body.SLACK_VALUES
    generic = FeatureSchema(None)
    generic.set_width(4)
    body = orjson.dumps({"records": [[1, 2, 3, 4]] * 1000})
    assert run(json_body.count_values(body)) <= generic.max_values(1000) + json_body.SLACK_VALUES
