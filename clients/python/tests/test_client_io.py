"""ferry_client pieces that need no server: the SSE parser, stream bookkeeping, retry policy, error
decoding, and the CSV / JSON Lines reading and writing of `ferry predict`."""

from __future__ import annotations

import csv
import email.utils
import io
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry_client import FerryClientError, SSEParser
from ferry_client._common import (
    BACKOFF_CAP_S,
    Attempts,
    Deadline,
    JobEvents,
    StreamState,
    backoff_delay,
    encode,
    error_from_response,
    retry_after,
    retryable_transport_error,
    v2_body,
)
from ferry_client.io import (
    InputError,
    Progress,
    convert,
    file_format,
    read_csv,
    read_jsonl,
    read_records,
    write_predictions,
)
from ferry_client.sse import ServerSentEvent, iter_events

CARD: dict[str, Any] = {
    "name": "churn",
    "features": [
        {"name": "tenure", "type": "integer", "minimum": 0, "maximum": 120},
        {"name": "charges", "type": "number"},
        {"name": "phone", "type": "boolean"},
        {"name": "contract", "type": "categorical", "categories": ["month", "year"]},
    ],
    "classes": ["churn", "stay"],
}
GENERIC: dict[str, Any] = {
    "name": "m",
    "description": "model served without a card: generic numeric schema",
    "features": [{"name": "x0", "type": "number"}, {"name": "x1", "type": "number"}],
}


# -- SSE parser ------------------------------------------------------------------------------------
def events(text: str) -> list[ServerSentEvent]:
    return list(iter_events(text.splitlines()))


def test_sse_fields_dispatch_on_blank_lines() -> None:
    got = events(
        'event: chunk\nid: 0\ndata: {"offset": 0}\n\n'
        ": ping\n\n"
        "data: first line\ndata:second line\ndata:  indented\n\n"
        "event: summary\nretry: 1500\ndata: {}\n\n"
    )
    assert got == [
        ServerSentEvent(event="chunk", data='{"offset": 0}', id="0"),
        ServerSentEvent(event="message", data="first line\nsecond line\n indented", id="0"),
        ServerSentEvent(event="summary", data="{}", id="0", retry=1500),
    ]
    assert got[0].json() == {"offset": 0} and got[2].json() == {}


def test_sse_comments_empty_blocks_unknown_fields_and_eof() -> None:
    got = events(
        ":heartbeat\n: another\n\n"  # comments only: nothing
        "event: lonely\nid: 7\n\n"  # no data: not dispatched, but the id sticks
        "foo: bar\ndata\n\n"  # unknown field ignored; a field without colon has an empty value
        "retry: soon\ndata: x\n\n"  # a non-numeric retry is ignored
        "event: cut\ndata: never ended"  # no blank line before EOF: dropped
    )
    assert got == [ServerSentEvent(data="", id="7"), ServerSentEvent(data="x", id="7")]


def test_sse_parser_handles_bom_and_line_endings() -> None:
    parser = SSEParser()
    assert parser.feed("\ufeffevent: a\r\n") is None
    assert parser.feed("data: 1\r") is None
    assert parser.feed("\r\n") == ServerSentEvent(event="a", data="1")
    assert parser.feed("id: bad\0id") is None and parser.last_event_id is None


# -- stream bookkeeping ----------------------------------------------------------------------------
def chunk(offset: int, n: int) -> ServerSentEvent:
    return ServerSentEvent(event="chunk", data=json.dumps({"offset": offset, "predictions": [{}] * n}))


def handled(state: StreamState, sse: ServerSentEvent) -> dict[str, Any]:
    event = state.handle(sse)
    assert event is not None
    return event


def test_stream_state_resumes_with_offsets_in_the_callers_records() -> None:
    state = StreamState(range(10), chunk_size=3, max_retries=2)
    assert state.body() == {"records": list(range(10)), "chunk_size": 3}
    assert state.handle(chunk(0, 3)) == {"event": "chunk", "data": {"offset": 0, "predictions": [{}] * 3}}
    assert handled(state, chunk(3, 3))["data"]["offset"] == 3
    shutdown = ServerSentEvent(event="shutdown", data='{"next_offset": 6, "message": "bye"}')
    assert state.handle(shutdown) is None and state.resume
    assert 0 <= state.interrupted(None) <= 0.25
    assert state.body() == {"records": [6, 7, 8, 9], "chunk_size": 3}
    assert handled(state, chunk(0, 3))["data"]["offset"] == 6
    with pytest.raises(FerryClientError) as caught:
        state.handle(ServerSentEvent(event="failed", data='{"code": "model_error", "message": "m", "offset": 3}'))
    assert (caught.value.code, caught.value.offset, caught.value.status) == ("model_error", 9, None)
    assert state.requests == 2


def test_stream_state_gives_up_without_progress_and_ends_when_all_answered() -> None:
    state = StreamState(range(4), chunk_size=None, max_retries=2)
    assert state.body() == {"records": [0, 1, 2, 3]}
    state.handle(chunk(0, 2))
    state.interrupted(OSError("cut"))  # progress was made: resume from 2
    assert state.body()["records"] == [2, 3]
    state.interrupted(None)
    state.interrupted(None)
    with pytest.raises(FerryClientError, match="stopped 3 times at record 2") as caught:
        state.interrupted(None)
    assert caught.value.code == "stream_interrupted"

    state = StreamState(range(2), chunk_size=None, max_retries=0)
    state.body()
    state.handle(chunk(0, 2))
    assert state.interrupted(None) == 0.0 and state.finished  # only the summary was lost
    summary = StreamState([1], None, 0)
    assert summary.handle(ServerSentEvent(event="summary", data='{"records": 1}')) == {
        "event": "summary",
        "data": {"records": 1},
    }
    assert summary.finished


# -- retry policy and errors -----------------------------------------------------------------------
def test_retry_after_is_read_then_capped() -> None:
    def read(value: str) -> float | None:
        return retry_after(httpx.Headers({"retry-after": value}))

    assert read("3") == 3.0
    assert read(" 1.5 ") == 1.5
    assert read("999999") == 120.0  # the client's ceiling; the protocol reading itself is not capped
    assert retry_after(httpx.Headers()) is None and read("soon") is None and read("nan") is None
    assert read("-4") is None  # not delay-seconds: as if absent (RFC 9110), so the backoff applies
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (read(date) or 0) <= 31


def test_backoff_honours_retry_after_else_full_jitter() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert 2.0 <= backoff_delay(0, 2.0, rng) <= 2.4
    for attempt in range(12):
        delays = [backoff_delay(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= min(BACKOFF_CAP_S, 0.25 * 2**attempt)
    assert max(backoff_delay(50, None, rng) for _ in range(200)) > BACKOFF_CAP_S / 2  # full jitter up to the cap


def test_retryable_transport_errors() -> None:
    request = httpx.Request("POST", "http://x")
    never_sent = httpx.ConnectError("refused", request=request)
    cut = httpx.RemoteProtocolError("closed", request=request)
    slow = httpx.ReadTimeout("slow", request=request)
    assert retryable_transport_error(never_sent, "POST", idempotent=False)
    assert not retryable_transport_error(cut, "POST", idempotent=False)
    assert retryable_transport_error(cut, "POST", idempotent=True)
    assert not retryable_transport_error(slow, "POST", idempotent=True)
    assert retryable_transport_error(slow, "GET", idempotent=False)
    assert not retryable_transport_error(cut, "DELETE", idempotent=False)


def test_attempts_retry_what_may_be_retried_up_to_max_retries() -> None:
    request = httpx.Request("POST", "http://x/api/v1/predict")
    refused = httpx.ConnectError("refused", request=request)
    cut = httpx.RemoteProtocolError("closed", request=request)
    attempts = Attempts(2, "POST", "/api/v1/predict", idempotent=False, retry=True)
    assert 0 <= attempts.after_transport_error(refused) <= BACKOFF_CAP_S  # nothing was sent: resend
    with pytest.raises(FerryClientError) as caught:
        attempts.after_transport_error(cut)  # sent, not idempotent: never twice
    assert caught.value.code == "transport_error" and caught.value.__cause__ is cut

    shed = httpx.Response(503, headers={"retry-after": "3"}, request=request)
    attempts = Attempts(2, "POST", "/api/v1/predict", idempotent=True, retry=True)
    assert 3.0 <= (attempts.after_error_answer(shed) or 0) <= 3.6  # Retry-After, plus a little jitter
    assert 3.0 <= (attempts.after_error_answer(shed) or 0) <= 3.6
    assert attempts.after_error_answer(shed) is None  # max_retries used up: the 503 is final
    with pytest.raises(FerryClientError):
        attempts.after_transport_error(refused)  # the same budget covers both kinds of failure
    assert (
        Attempts(5, "POST", "/p", idempotent=True, retry=True).after_error_answer(httpx.Response(500, request=request))
        is None
    )  # only 429 and 503 are retried
    assert Attempts(5, "GET", "/readyz", idempotent=True, retry=False).after_error_answer(shed) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_bounds_each_attempt_and_each_wait() -> None:
    clock = FakeClock()
    deadline = Deadline(2.0, clock)
    assert (deadline.remaining(), deadline.expired(), deadline.cap(5.0), deadline.cap(0.5)) == (2.0, False, 2.0, 0.5)
    request = httpx.Request("GET", "http://x/api/v1/jobs/j")
    attempts = Attempts(5, "GET", "/api/v1/jobs/j", idempotent=True, retry=True, deadline=deadline)
    assert attempts.timeout(30.0) == httpx.Timeout(2.0)  # a request never outlives the deadline
    clock.now += 1.5
    assert attempts.timeout(30.0) == httpx.Timeout(0.5)
    shed = httpx.Response(503, headers={"retry-after": "3"}, request=request)
    assert attempts.after_error_answer(shed) == 0.5  # Retry-After 3 s, cut at the deadline
    assert attempts.after_transport_error(httpx.ReadTimeout("slow", request=request)) <= 0.5
    clock.now += 0.5
    assert deadline.expired() and deadline.cap(1.0) == 0.0
    with pytest.raises(FerryClientError) as caught:
        attempts.timeout(30.0)  # no attempt starts after the deadline
    assert caught.value.code == "timeout"

    unlimited = Deadline(None, clock)
    assert (unlimited.remaining(), unlimited.expired(), unlimited.cap(7.0)) == (None, False, 7.0)
    assert Attempts(5, "GET", "/x", idempotent=True, retry=True).timeout(30.0) == httpx.Timeout(30.0)


def test_job_events_return_the_terminal_status_and_give_up_after_max_retries() -> None:
    events = JobEvents("j1", max_retries=1)
    assert events.handle(ServerSentEvent(event="status", data='{"status": "running"}')) is None
    assert events.handle(ServerSentEvent(event="message", data="{}")) is None
    assert 0 <= events.ended(None) <= BACKOFF_CAP_S  # first early end: follow again
    assert events.handle(ServerSentEvent(event="status", data='{"status": "running"}')) is None  # progress resets
    events.ended(None)
    with pytest.raises(FerryClientError) as caught:
        events.ended(ConnectionError("cut"))
    assert caught.value.code == "stream_interrupted"
    assert str(events.timeout(2.5)) == "job j1 still running after 2.5 s"
    done = events.handle(ServerSentEvent(event="status", data='{"status": "succeeded", "result": 1}'))
    assert done == {"status": "succeeded", "result": 1}


def test_encode_refuses_nan_before_sending() -> None:
    assert encode(None, {"A": "1"}) == (None, {"A": "1"})
    assert encode({"record": [1.5]}, None) == (b'{"record":[1.5]}', {"Content-Type": "application/json"})
    with pytest.raises(FerryClientError) as caught:
        encode({"record": [float("nan")]}, None)
    assert caught.value.code == "invalid_json"


def test_error_from_response_reads_both_error_shapes() -> None:
    body = {"code": "validation_error", "message": "bad", "request_id": "r1", "details": [{"loc": ["x"]}]}
    error = error_from_response(httpx.Response(422, json=body))
    assert (error.status, error.code, error.message, error.request_id, error.details) == (
        422,
        "validation_error",
        "bad",
        "r1",
        [{"loc": ["x"]}],
    )
    v2_shape = {"error": "wrong shape", "code": "bad_request", "request_id": "r"}
    v2 = error_from_response(httpx.Response(400, json=v2_shape))
    assert (v2.message, v2.code) == ("wrong shape", "bad_request")
    shed = error_from_response(httpx.Response(503, headers={"retry-after": "2", "x-request-id": "r9"}, text="busy"))
    assert (shed.message, shed.request_id, shed.retry_after, shed.code) == ("busy", "r9", 2.0, None)
    assert error_from_response(httpx.Response(502)).message == "Bad Gateway"
    assert str(error) == "422 validation_error: bad [request_id r1]"


def test_v2_body_wraps_a_matrix_as_one_tensor() -> None:
    assert v2_body([[1, 2], [3, 4]], ["predict"], {"timeout": 5}, "i") == {
        "inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "predict"}],
        "parameters": {"timeout": 5},
        "id": "i",
    }
    tensors = [{"name": "input-0", "shape": [1, 1], "datatype": "INT32", "data": [1]}]
    assert v2_body(tensors, None, None, None) == {"inputs": tensors}


# -- CSV / JSON Lines ------------------------------------------------------------------------------
def test_convert_follows_the_feature_type() -> None:
    integer, number, boolean, categorical = CARD["features"]
    assert convert("12", integer) == 12 and convert("12.0", integer) == 12 and type(convert("12.0", integer)) is int
    assert convert(" 3.25 ", number) == 3.25 and convert("7", number) == 7.0
    assert [convert(v, boolean) for v in ("true", "FALSE", "1", "0", "yes", "No")] == [True, False] * 3
    assert convert(" month", categorical) == " month"  # a category is sent exactly as written
    for value, feature, reason in (
        ("12.5", integer, "not an integer"),
        ("", number, "empty value"),
        ("abc", number, "not a number"),
        ("inf", number, "not a finite number"),
        ("nan", integer, "not a finite number"),
        ("maybe", boolean, "not a boolean"),
    ):
        with pytest.raises(ValueError, match=reason):
            convert(value, feature)


def test_read_csv_types_values_from_the_card() -> None:
    text = "\ufefftenure,charges,phone,contract\n3,80.5,true,month\n\n60,25,0,year\n"
    assert read_csv(io.StringIO(text), CARD) == [
        {"tenure": 3, "charges": 80.5, "phone": True, "contract": "month"},
        {"tenure": 60, "charges": 25.0, "phone": False, "contract": "year"},
    ]
    # column order in the file does not matter; generic models take lists in feature order
    assert read_csv(io.StringIO("x1,x0\n2,1\n"), GENERIC) == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("\n3,1,true,month\n", "the first line must be a header"),
        ("tenure,charges,phone\n1,2,true\n", "missing column(s) contract"),
        ("tenure,charges,phone,contract,id\n", "unknown column(s) id"),
        ("tenure,charges,phone,contract,tenure\n", "repeated column(s) tenure"),
        ("tenure,charges,phone,contract\n1,2,true\n", "f.csv: line 2: 3 values for 4 columns"),
        ("tenure,charges,phone,contract\n1,2,true,month\n1,x,true,month\n", "f.csv: line 3: charges: 'x' is not"),
    ],
)
def test_read_csv_errors_name_the_line_and_column(text: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        read_csv(io.StringIO(text), CARD, "f.csv")


def test_read_jsonl_and_files(tmp_path: Path) -> None:
    assert read_jsonl(io.StringIO('{"a": 1}\n\n[1, 2]\n')) == [{"a": 1}, [1, 2]]
    with pytest.raises(InputError, match=r"r\.jsonl: line 2: not JSON"):
        read_jsonl(io.StringIO('{"a": 1}\n{oops\n'), "r.jsonl")
    with pytest.raises(InputError, match="line 1: a record is a JSON object"):
        read_jsonl(io.StringIO("3\n"))

    path = tmp_path / "rows.csv"
    path.write_text("tenure,charges,phone,contract\n1,2,no,year\n")
    assert read_records(str(path), CARD) == [{"tenure": 1, "charges": 2.0, "phone": False, "contract": "year"}]
    (tmp_path / "rows.ndjson").write_text('{"tenure": 1}\n')
    assert read_records(str(tmp_path / "rows.ndjson"), CARD) == [{"tenure": 1}]
    with pytest.raises(InputError, match="unknown column"):
        read_records(str(tmp_path / "rows.ndjson"), CARD, "csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no records"):
        read_records(str(tmp_path / "empty.jsonl"), CARD)
    with pytest.raises(InputError, match="No such file"):
        read_records(str(tmp_path / "absent.csv"), CARD)
    with pytest.raises(InputError, match="cannot tell the format"):
        file_format("rows.txt")
    assert file_format("ROWS.CSV") == "csv" and file_format("x", "jsonl") == "jsonl"


def test_write_predictions_csv_and_jsonl(tmp_path: Path) -> None:
    predictions = [
        {"prediction": "churn", "probabilities": {"churn": 0.8412345678901234, "stay": 0.15876543210987656}},
        {"prediction": "stay", "probabilities": {"churn": 1e-17, "stay": 1.0}},
    ]
    out = tmp_path / "p.csv"
    write_predictions(str(out), predictions, ["churn", "stay"])
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prediction"] for r in rows] == ["churn", "stay"]
    assert [float(r["proba_churn"]) for r in rows] == [0.8412345678901234, 1e-17]  # exact round trip
    assert out.read_text().splitlines()[0] == "prediction,proba_churn,proba_stay"

    out = tmp_path / "p.jsonl"
    write_predictions(str(out), predictions, ["churn", "stay"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prediction": "churn", "proba_churn": 0.8412345678901234, "proba_stay": 0.15876543210987656},
        {"prediction": "stay", "proba_churn": 1e-17, "proba_stay": 1.0},
    ]
    out = tmp_path / "regression.csv"
    write_predictions(str(out), [{"prediction": 3.5, "probabilities": None}], [])
    assert out.read_text() == "prediction\n3.5\n"


def test_progress_line() -> None:
    stream = io.StringIO()
    progress = Progress(True, stream, min_interval_s=3600)
    progress(500, 2000)  # the first update is drawn, the next ones wait for the interval
    progress(1000, 2000)
    progress(2000, 2000)  # the last one always is
    progress.close()
    lines = stream.getvalue().split("\r")[1:]
    assert [line.split()[0] for line in lines] == ["500/2,000", "2,000/2,000", "2,000/2,000"]
    assert "rows/s" in lines[0] and stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    off = Progress(False, quiet)
    off(1, 1)
    off.close()
    assert quiet.getvalue() == ""
