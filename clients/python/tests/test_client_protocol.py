"""ferry_client.protocol: the Retry-After reading, terminal job statuses and the Open Inference Protocol
encoding that the service imports from the client."""

from __future__ import annotations

import email.utils
import typing
from typing import Any

import pytest

from ferry_client.protocol import (
    TERMINAL_JOB_STATUSES,
    V2_INPUT_NAME,
    JobStatus,
    parse_retry_after,
    record_row,
    v2_tensor,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), (" 120 ", 120.0), ("1.5", 1.5), ("0", 0.0), ("999999", 999999.0), ("0007", 7.0)],
)
def test_delay_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value", [None, "", "  ", "soon", "-5", "+5", "1e3", "inf", "nan", "1_000", "5s", "1.", ".5", "9" * 400]
)
def test_what_is_not_delay_seconds_or_a_date_reads_as_absent(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_http_dates_count_from_now_and_past_dates_mean_now() -> None:
    assert parse_retry_after(email.utils.formatdate(NOW + 30, usegmt=True), now=NOW) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), now=NOW) == 0.0
    # "-0000" (no zone information) gives a naive datetime: still GMT, never this machine's local time
    naive = email.utils.formatdate(NOW + 60, usegmt=True).replace("GMT", "-0000")
    assert parse_retry_after(naive, now=NOW) == pytest.approx(60)
    assert parse_retry_after("Sun, 32 Foo 2026 25:61:00 GMT", now=NOW) is None


def test_terminal_statuses_are_job_statuses() -> None:
    assert frozenset({"succeeded", "failed", "canceled"}) == TERMINAL_JOB_STATUSES
    assert set(typing.get_args(JobStatus)) == TERMINAL_JOB_STATUSES | {"queued", "running"}


FEATURES: list[dict[str, Any]] = [
    {"name": "tenure", "type": "integer"},
    {"name": "charges", "type": "number"},
    {"name": "phone", "type": "boolean"},
    {"name": "contract", "type": "categorical", "categories": ["month", "one_year", "two_year"]},
]


def test_record_row_follows_the_card() -> None:
    record = {"contract": "two_year", "phone": True, "charges": 80.5, "tenure": 3}  # any key order
    assert record_row(record, FEATURES) == [3.0, 80.5, 1.0, 2.0]
    assert record_row({**record, "phone": False, "contract": "month"}, FEATURES) == [3.0, 80.5, 0.0, 0.0]
    with pytest.raises(ValueError):
        record_row({**record, "contract": "forever"}, FEATURES)
    with pytest.raises(KeyError, match="tenure"):
        record_row({"charges": 1.0, "phone": True, "contract": "month"}, FEATURES)


def test_v2_tensor_is_one_fp64_input_flattened_by_rows() -> None:
    assert v2_tensor([[1, 2, 3], [4, 5, 6]]) == {
        "name": V2_INPUT_NAME,
        "shape": [2, 3],
        "datatype": "FP64",
        "data": [1, 2, 3, 4, 5, 6],
    }
    assert v2_tensor([[0.5]], name="x") == {"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [0.5]}
