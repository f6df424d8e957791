"""Server errors told as file lines, and a file cut into jobs: the pure parts of `ferry predict` /
`ferry jobs submit`, with fake clients (no server)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry_client import AsyncClient, FerryClientError
from ferry_client.io import csv_input, jsonl_input, output_rows
from ferry_client.job_batches import Submitted, WaitProgress, cut, job_key, predictions_of, submit_all, wait_all
from ferry_client.lines import describe, record_lines

CARD: dict[str, Any] = {
    "features": [
        {"name": "tenure", "type": "integer"},
        {"name": "contract", "type": "categorical"},
    ],
    "classes": ["churn", "stay"],
}


def refused(*indices: int, field: str = "contract") -> FerryClientError:
    """A 422 as the server words it: indices within the request's records."""
    details = [{"loc": ["body", "records", i, field], "msg": "Input should be 'a' or 'b'"} for i in indices]
    return FerryClientError(
        "request failed validation", status=422, code="validation_error", request_id="r1", details=details
    )


def test_csv_and_jsonl_records_keep_the_line_they_start_on() -> None:
    # header = line 1; a blank line and a quoted value spanning two lines are counted
    text = 'id,tenure,contract\nA,1,x\n\nB,2,"two\nlines"\nC,3,z\n'
    found = csv_input(io.StringIO(text), CARD, "f.csv", ["id"])
    assert found.lines == [2, 4, 6]
    assert found.ids == [{"id": "A"}, {"id": "B"}, {"id": "C"}]
    assert found.records[0] == {"tenure": 1, "contract": "x"}  # the id column is not sent
    jsonl = jsonl_input(io.StringIO('{"id": 7, "tenure": 1}\n\n{"tenure": 2}\n'), "f.jsonl", ["id"])
    assert (jsonl.lines, jsonl.ids, jsonl.records[0]) == ([1, 3], [{"id": 7}, {"id": None}], {"tenure": 1})
    rows = output_rows([{"prediction": "stay", "probabilities": {"churn": 0.1, "stay": 0.9}}] * 3, ["churn"], found)
    assert rows[1] == {"line": 4, "id": "B", "prediction": "stay", "proba_churn": 0.1}


def test_a_refused_record_of_a_later_batch_is_told_by_its_file_line() -> None:
    # 3,000 CSV records: record i starts on line i + 2; batch 2 (records 1000..1999) refuses its 234th
    text = "tenure,contract\n" + "".join(f"{i},x\n" for i in range(3000))
    found = csv_input(io.StringIO(text), CARD, "rows.csv")
    error = refused(234).shifted(1000)
    assert error.offset == 1234 and error.details[0]["loc"] == ["body", "records", 1234, "contract"]
    message, about_input = describe(error, found)
    assert about_input
    assert message.startswith("rows.csv: line 1236: contract: Input should be") and "422 validation_error" in message
    several = describe(refused(9, 3, 4, 5, 6, 7, 8).shifted(10), found)[0]
    assert (
        several.splitlines()[0]
        == "rows.csv: the server refused 7 records, 7 problems (422 validation_error) [request_id r1]"
    )
    assert [line.split(":")[0].strip() for line in several.splitlines()[1:]] == [
        "line 15", "line 16", "line 17", "line 18", "line 19", "... and 2 more"
    ]  # fmt: skip
    one = FerryClientError(
        "no", status=422, code="validation_error", details=[*refused(3).details, *refused(3, field="tenure").details]
    )
    assert (
        describe(one, found)[0].splitlines()[0]
        == "rows.csv: the server refused 1 record, 2 problems (422 validation_error)"
    )
    # an error about no record keeps its own wording, and is not an input error
    other = FerryClientError("at most 10 records", status=422, code="batch_too_large", details=[{"loc": ["body"]}])
    assert describe(other, found) == ("422 batch_too_large: at most 10 records\n  body: {'loc': ['body']}", False)
    assert record_lines(refused(5000), found) == []  # outside the file: not claimed


def test_predict_many_names_records_of_later_batches_by_their_position() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        bad = [i for i, r in enumerate(records) if r["tenure"] == 1234]
        if bad:
            details = [{"loc": ["body", "records", i, "tenure"], "msg": "too long", "type": "x"} for i in bad]
            return httpx.Response(422, json={"code": "validation_error", "message": "no", "details": details})
        return httpx.Response(200, json={"predictions": [{"prediction": "stay"}] * len(records)})

    async def run() -> None:
        records = [{"tenure": i} for i in range(3000)]
        async with AsyncClient("http://ferry", transport=httpx.MockTransport(answer)) as client:
            with pytest.raises(FerryClientError) as caught:
                await client.predict_many(records, batch_size=500, concurrency=3)
            assert caught.value.offset == 1234
            assert caught.value.details[0]["loc"] == ["body", "records", 1234, "tenure"]
            with pytest.raises(FerryClientError) as caught:
                await client.predict_batch(records, batch_size=1000)
            assert caught.value.details[0]["loc"] == ["body", "records", 1234, "tenure"]

    asyncio.run(run())


def test_cut_respects_records_and_bytes() -> None:
    records = [{"v": i % 10} for i in range(25)]  # {"v":0} + comma = 8 bytes each
    assert cut(records, 10, 10_000) == [(0, 10), (10, 20), (20, 25)]
    assert cut(records, 100, 8 * 6) == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 25)]
    assert cut([{"v": "x" * 50}], 10, 8) == [(0, 1)]  # one oversized record alone: the server decides
    assert job_key("k", 0, 25, 25) == "k" and job_key("k", 10, 20, 25) == "k.10-20"


class FakeJobs:
    """Submissions and polls: at most ``limit`` records per job (else 422 batch_too_large); a record
    ``{"v": -1}`` is refused with 422 validation_error; each job is seen running once, then succeeded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.jobs: dict[str, dict[str, Any]] = {}
        self.keys: list[str | None] = []
        self.polls = 0

    def submit_job(self, records: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        self.keys.append(kwargs.get("idempotency_key"))
        if len(records) > self.limit:
            raise FerryClientError("too many", status=422, code="batch_too_large", details=[])
        bad = [i for i, r in enumerate(records) if r["v"] == -1]
        if bad:
            raise refused(*bad, field="v")
        job_id = f"j{len(self.jobs)}"
        predictions = [{"prediction": str(r["v"])} for r in records]
        self.jobs[job_id] = {"id": job_id, "status": "queued", "records": len(records), "_p": predictions}
        return {k: v for k, v in self.jobs[job_id].items() if k != "_p"}

    def get_job(self, job_id: str) -> dict[str, Any]:
        self.polls += 1
        job = self.jobs[job_id]
        if job["status"] == "queued":
            job["status"] = "running"
            return {"id": job_id, "status": "running"}
        return {"id": job_id, "status": "succeeded", "result": {"predictions": job["_p"]}}


def test_jobs_too_large_are_halved_in_order_and_results_join_in_input_order() -> None:
    fake = FakeJobs(limit=3)
    records = [{"v": i} for i in range(10)]
    jobs = submit_all(fake, records, [(0, 10)], key="K")  # type: ignore[arg-type]
    assert [(j.start, j.end) for j in jobs] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert fake.keys[:3] == ["K", "K.0-5", "K.0-2"]  # the whole file, then its halves
    seen: list[str] = []
    sleeps: list[float] = []
    wait_all(
        fake,  # type: ignore[arg-type]
        jobs,
        timeout=None,
        poll_interval=0.25,
        on_update=lambda js: seen.append(",".join(j.status for j in js)),
        sleep=sleeps.append,
    )
    assert seen[0] == "running,queued,queued,queued" and seen[-1] == "succeeded,succeeded,succeeded,succeeded"
    assert sleeps == [0.25] * 4  # one pause per running look, none after a job ended
    assert [p["prediction"] for p in predictions_of(jobs)] == [str(i) for i in range(10)]


def test_a_refused_record_in_a_later_job_is_named_by_its_position() -> None:
    fake = FakeJobs(limit=4)
    records = [{"v": i} for i in range(10)]
    records[6] = {"v": -1}
    submitted: list[Submitted] = []
    with pytest.raises(FerryClientError) as caught:
        submit_all(fake, records, cut(records, 4, 10_000), key="K", submitted=submitted)  # type: ignore[arg-type]
    assert caught.value.offset == 6 and caught.value.details[0]["loc"][2] == 6
    assert [(j.start, j.end) for j in submitted] == [(0, 4)]  # the first job went in before


def test_wait_progress_tty_and_plain_lines() -> None:
    now = [0.0]
    jobs = [Submitted(0, 3, {"id": "a", "status": "running"}), Submitted(3, 4, {"id": "b", "status": "queued"})]
    plain = io.StringIO()
    progress = WaitProgress(4, tty=False, stream=plain, clock=lambda: now[0])
    progress(jobs)
    now[0] = 1.5
    progress(jobs)  # nothing changed: no new line
    jobs[0].job = {"id": "a", "status": "succeeded"}
    progress(jobs)
    progress.close()
    assert plain.getvalue().splitlines() == [
        "job 1/2 running; 0/4 rows (0%); 0.0 s",
        "job 2/2 queued; 3/4 rows (75%); 1.5 s",
    ]
    tty = io.StringIO()
    progress = WaitProgress(4, tty=True, stream=tty, clock=lambda: now[0])
    progress(jobs)
    progress(jobs)
    progress.close()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n") and tty.getvalue().count("\n") == 1
    quiet = io.StringIO()
    off = WaitProgress(4, tty=True, enabled=False, stream=quiet)
    off(jobs)
    off.close()
    assert quiet.getvalue() == ""


class FakeService:
    """Just enough of the service for `jobs submit` (httpx.MockTransport): the card, job submissions,
    and polls answered by ``poll`` (``"interrupt"`` raises KeyboardInterrupt, as Ctrl-C would)."""

    def __init__(self, poll: str) -> None:
        self.poll = poll
        self.submitted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/models":
            return httpx.Response(200, json={"models": [{"name": "m"}]})
        if path == "/api/v1/models/m":
            return httpx.Response(200, json=CARD)
        if request.method == "POST" and path == "/api/v1/jobs":
            job_id = f"{len(self.submitted):032x}"
            self.submitted.append(request.headers["idempotency-key"])
            return httpx.Response(202, json={"id": job_id, "status": "queued"})
        if self.poll == "interrupt":
            raise KeyboardInterrupt
        error = {"code": "model_error", "message": "boom"} if self.poll == "failed" else None
        return httpx.Response(200, json={"id": path.rsplit("/", 1)[1], "status": self.poll, "error": error})


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], service: FakeService, *args: str
) -> tuple[int, str, str]:
    from ferry_client import Client, cli

    monkeypatch.setattr(cli, "_client", lambda a: Client("http://ferry", transport=httpx.MockTransport(service)))
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def rows(tmp_path: Any) -> str:
    path = tmp_path / "rows.csv"
    path.write_text("tenure,contract\n" + "".join(f"{i},x\n" for i in range(5)))
    return str(path)


def test_ctrl_c_while_waiting_names_the_jobs_and_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rows: str
) -> None:
    service = FakeService("interrupt")
    code, out, err = run_cli(
        monkeypatch, capsys, service, "jobs", "submit", "--file", rows, "--job-size", "2", "--wait",
        "--out", rows + ".out.csv", "--idempotency-key", "K",
    )  # fmt: skip
    assert code == 130 and out == ""
    assert service.submitted == ["K.0-2", "K.2-4", "K.4-5"]
    ids = " ".join(f"{i:032x}" for i in range(3))
    assert f"interrupted; the jobs were not canceled; 3 job(s) keep running on the server: {ids}" in err
    assert "resume: the same command with --idempotency-key K" in err
    assert f"cancel: ferry-client jobs cancel {ids}" in err


@pytest.mark.parametrize(
    ("poll", "code", "message"),
    [
        ("queued", 3, "still queued after 0.2 s"),
        ("failed", 1, "(lines 2-3) failed: model_error: boom; nothing was written"),
    ],
)
def test_a_wait_that_times_out_or_a_job_that_fails(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rows: str,
    poll: str,
    code: int,
    message: str,
) -> None:
    out_path = rows + ".out.csv"
    args = ("jobs", "submit", "--file", rows, "--job-size", "2", "--wait", "--out", out_path)
    got, _, err = run_cli(monkeypatch, capsys, FakeService(poll), *args, "--timeout", "0.2", "--poll-interval", "0.05")
    assert got == code and message in err
    assert not Path(out_path).exists()


def test_out_needs_wait(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rows: str) -> None:
    service = FakeService("queued")
    code, _, err = run_cli(monkeypatch, capsys, service, "jobs", "submit", "--file", rows, "--out", "x.csv")
    assert code == 2 and "--out needs --wait" in err and service.submitted == []
