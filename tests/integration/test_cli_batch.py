"""Batch scoring from the command line against the real service (gunicorn, 2 workers, one server for
the module): `ferry jobs submit --wait --out` on 10,000 CSV rows, JSON Lines split into several jobs,
server-side validation errors told as file lines by `ferry predict` and `ferry jobs submit`, help texts."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import joblib
import pytest

from ferry import cli
from ferry.card import Feature
from ferry.features import FeatureSchema
from support.records import make_records
from support.server import Server

SEED = 20261202
BAD_LINE = 1236  # a CSV's header is line 1: record 1234 (0-based) starts on line 1236
SUMMARY = re.compile(r"^ferry jobs submit: (?P<rows>[\d,]+) rows, (?P<jobs>\d+) jobs?, [\d.]+ s -> (?P<out>.+)$")


class Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Ferry = Callable[..., Done]


@pytest.fixture
def ferry(capsys: pytest.CaptureFixture[str]) -> Ferry:
    """The `ferry` command, run in this process (the service is the real one; a subprocess per command
    would only add interpreter start-ups: tests/integration/test_client.py runs `python -m ferry`)."""

    def run(*args: str) -> Done:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # --help
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def write_csv(path: Path, card: dict, records: list[dict]) -> None:
    """``customer_id`` first (an id column), then the features."""
    names = [f["name"] for f in card["features"]]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", *names])
        for i, record in enumerate(records):
            writer.writerow([f"c{i}", *(str(v).lower() if isinstance(v, bool) else v for v in map(record.get, names))])


@pytest.fixture(scope="module")
def srv(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("cli-batch"), churn_model).start()
    yield server
    assert server.stop() == 0, server.output()[-2000:]


@pytest.fixture(scope="module")
def records(card: dict) -> list[dict]:
    return make_records(card, 10_000, SEED)


@pytest.fixture(scope="module")
def expected(churn_model: Path, card: dict, records: list[dict]) -> list[dict]:
    """What the model answers in this process for the same records."""
    estimator = joblib.load(churn_model)
    schema = FeatureSchema([Feature(**f) for f in card["features"]])
    rows = schema.rows_from_records([schema.record_type.model_validate(r) for r in records])
    classes = [str(c) for c in estimator.classes_]
    return [
        {"prediction": str(label), **{f"proba_{c}": p for c, p in zip(classes, proba, strict=True)}}
        for label, proba in zip(estimator.predict(rows).tolist(), estimator.predict_proba(rows).tolist(), strict=True)
    ]


def test_jobs_submit_wait_out_writes_10000_rows_in_input_order(
    srv: Server, card: dict, records: list[dict], expected: list[dict], tmp_path: Path, ferry: Ferry
) -> None:
    rows, out = tmp_path / "rows.csv", tmp_path / "preds.csv"
    write_csv(rows, card, records)
    done = ferry(
        "jobs", "submit", "--url", srv.url, "--file", str(rows), "--id-column", "customer_id",
        "--wait", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the predictions are in --out; stdout carries nothing else
    lines = done.stderr.splitlines()
    summary = SUMMARY.match(lines[-1])
    assert summary and summary["rows"] == "10,000" and summary["jobs"] == "1" and summary["out"] == str(out)
    progress = lines[:-1]  # stderr is not a terminal: plain lines, one per change of state
    assert progress and all(re.match(r"^job 1/1 \w+; [\d,]+/10,000 rows \(\d+%\); [\d.]+ s$", p) for p in progress)
    assert progress[-1].startswith("job 1/1 succeeded; 10,000/10,000 rows (100%)") and "\r" not in done.stderr
    classes = card["classes"]
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["line", "customer_id", "prediction", *(f"proba_{c}" for c in classes)]
        got = list(reader)
    assert len(got) == 10_000
    assert [(r["line"], r["customer_id"]) for r in got] == [(str(i + 2), f"c{i}") for i in range(10_000)]
    parsed = [{k: (float(v) if k.startswith("proba_") else v) for k, v in r.items() if k in expected[0]} for r in got]
    assert parsed == expected  # the CSV round trip of a float is exact


def test_jobs_submit_jsonl_in_several_jobs_to_stdout(
    srv: Server, records: list[dict], expected: list[dict], tmp_path: Path, ferry: Ferry
) -> None:
    rows = tmp_path / "rows.jsonl"
    # a blank line after the first record: line numbers follow the file, not the record count
    lines = [json.dumps({"key": i, **r}) for i, r in enumerate(records[:2500])]
    rows.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    done = ferry(
        "jobs", "submit", "--url", srv.url, "--file", str(rows), "--id-column", "key", "--job-size", "1000",
        "--wait", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet: no progress, no summary
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(g["line"], g["key"]) for g in got] == [(1, 0), *((i + 2, i) for i in range(1, 2500))]
    assert [{k: v for k, v in g.items() if k not in ("line", "key")} for g in got] == expected[:2500]

    # without --wait: one JSON line per job, in order, each job holding its slice; the same
    # --idempotency-key again (how an interrupted wait is resumed) finds the same jobs
    submit = ("jobs", "submit", "--url", srv.url, "--file", str(rows), "--id-column", "key", "--job-size", "1000")
    first, again = (ferry(*submit, "--idempotency-key", "resume-me") for _ in range(2))
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    jobs = [json.loads(line) for line in first.stdout.splitlines()]
    assert [job["records"] for job in jobs] == [1000, 1000, 500]
    assert [json.loads(line)["id"] for line in again.stdout.splitlines()] == [job["id"] for job in jobs]


def test_a_bad_value_on_line_1236_is_reported_as_line_1236(
    srv: Server, card: dict, records: list[dict], tmp_path: Path, ferry: Ferry
) -> None:
    # valid for the client (any text is a categorical value), refused by the server's schema
    bad = [*records[:3000]]
    bad[BAD_LINE - 2] = {**bad[BAD_LINE - 2], "contract_type": "forever"}
    rows, out = tmp_path / "bad.csv", tmp_path / "out.csv"
    write_csv(rows, card, bad)
    assert rows.read_text().splitlines()[BAD_LINE - 1].startswith(f"c{BAD_LINE - 2},")
    want = f"{rows}: line {BAD_LINE}: contract_type: Input should be"
    # predict: batches of 500, so the record is the 234th of the third batch
    done = ferry("predict", "--url", srv.url, "--file", str(rows), "--id-column", "customer_id", "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert want in done.stderr and "422 validation_error" in done.stderr and not out.exists()
    # jobs submit: the second of three jobs (records 1000..1999) is refused; the first went in before
    done = ferry(
        "jobs", "submit", "--url", srv.url, "--file", str(rows), "--id-column", "customer_id", "--job-size", "1000",
        "--wait", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert want in done.stderr and not out.exists()
    assert re.search(r"1 job\(s\) submitted before the error: [0-9a-f]{32}\n", done.stderr)
    # JSON Lines: the line of the file, a blank first line counted (record 1234 on line 1236 again)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("\n" + "".join(json.dumps(r) + "\n" for r in bad[:1500]))
    done = ferry("predict", "--url", srv.url, "--file", str(jsonl))
    assert done.returncode == 2 and f"{jsonl}: line {BAD_LINE}: contract_type:" in done.stderr, done.stderr


def test_help_texts_say_what_the_server_does(srv: Server, records: list[dict], tmp_path: Path, ferry: Ferry) -> None:
    cancel = ferry("jobs", "cancel", "--help").stdout
    assert "cancel queued jobs" in cancel.lower() and "running or finished job cannot be canceled" in cancel
    submit = ferry("jobs", "submit", "--help").stdout
    for text in ("--out", "--id-column", "--job-size", "--quiet", "exit codes:", "130", "line "):
        assert text in submit
    assert "exit codes:" in ferry("predict", "--help").stdout
    # what cancel's help says: a job that has run is refused with 409 (exit 1), a missing one 404
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(records[0]) + "\n")
    job_id = json.loads(ferry("jobs", "submit", "--url", srv.url, "--file", str(rows)).stdout)["id"]
    waited = ferry("jobs", "wait", "--url", srv.url, job_id, "--timeout", "60")
    assert json.loads(waited.stdout)["status"] == "succeeded"
    done = ferry("jobs", "cancel", "--url", srv.url, job_id, "0" * 32)
    assert done.returncode == 1 and "409 job_conflict" in done.stderr and "404 job_not_found" in done.stderr
