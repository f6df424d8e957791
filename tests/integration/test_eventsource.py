"""Server-Sent Events as browsers and Node read them, against real gunicorn with 2 workers: npm's
`eventsource` package following a job (what browsers do, run by Node: tests/support/eventsource/follow.mjs),
the README's fetch-based reader of the stream route (predict_stream.mjs), and the job protocol with httpx.

The Node processes start with the module; the follower then stays 10 s after it was told to stop, so that
wait overlaps the module's other tests. Their tests are the module's last and only collect what they printed.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from ferry_client.protocol import TERMINAL_JOB_STATUSES
from support.models import TRUSTED_CARDLESS, PickyModel
from support.server import Server

NODE_DIR = Path(__file__).resolve().parents[1] / "support" / "eventsource"
README = Path(__file__).resolve().parents[2] / "README.md"
QUIET_S = 10.0  # how long the follower must stay silent after the server told it to stop
RETRY_S = 3.0  # the `retry:` every stream opens with (ferry.api.sse.RETRY_MS)
RECORDS = [[1.0, 2.0, 3.0]] * 4  # 4 model calls of 0.4 s (max batch size 1): the job runs for ~1.6 s
POISON = 13.0  # PickyModel fails a call holding it in the first column


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("eventsource")
    model = workdir / "slow.joblib"
    joblib.dump(PickyModel(delay_s=0.4), model)
    env = {**TRUSTED_CARDLESS, "FERRY_JOBS__POLL_INTERVAL_S": "0.05", "FERRY_API__MAX_BATCH_SIZE": "1"}
    srv = Server(workdir, model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


def submit(url: str) -> str:
    r = httpx.post(f"{url}/api/v1/jobs", json={"records": RECORDS}, timeout=30)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_terminal(url: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in TERMINAL_JOB_STATUSES or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def node(script: str, *args: str) -> subprocess.Popen[str]:
    if not (NODE_DIR / "node_modules" / "eventsource").is_dir():
        pytest.fail(f"npm's eventsource package is not installed in {NODE_DIR}: `make node-deps` (npm ci)")
    argv = ["node", script, *args]
    return subprocess.Popen(argv, cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def printed(process: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out, err)
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module", autouse=True)
def node_runs(job_server: Server) -> Iterator[dict[str, Any]]:
    """The Node processes, started with the module (autouse) so their waits overlap the other tests: the
    follower of a fresh job; the fetch reader cut after its first chunk; the fetch reader meeting a failed chunk."""
    stream = {"records": [[float(i), 2.0, 3.0] for i in range(4)], "chunk_size": 1}
    poisoned = {"records": [[1.0, 2.0, 3.0], [POISON, 2.0, 3.0]], "chunk_size": 1}
    runs = {
        "follow": node("follow.mjs", job_server.url, json.dumps({"records": RECORDS}), str(int(QUIET_S * 1000))),
        "stream": node("predict_stream.mjs", job_server.url, json.dumps(stream), "1"),
        "failed": node("predict_stream.mjs", job_server.url, json.dumps(poisoned)),
    }
    yield runs
    for process in runs.values():
        if isinstance(process, subprocess.Popen):
            if process.poll() is None:  # its test did not run
                process.kill()
            process.communicate()


def events_of(body: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of each event in a complete text/event-stream body."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
    return events


def test_events_open_with_retry_then_resume_after_last_event_id(job_server: Server) -> None:
    job_id = submit(job_server.url)
    url = f"{job_server.url}/api/v1/jobs/{job_id}/events"
    # Following from the start: every status change once, in order, each id one more change.
    with httpx.stream("GET", url, timeout=30) as live:
        body = live.read().decode()
    assert live.status_code == 200 and body.startswith("retry: 3000\n\n"), body[:80]
    seen = events_of(body)
    assert [name for name, _, _ in seen] == ["status"] * len(seen)
    ids = [int(event_id or 0) for _, event_id, _ in seen]
    assert ids == sorted(set(ids)) and ids[-1] == len(seen[-1][2]["history"]), ids
    assert seen[-1][2]["status"] == "succeeded"
    terminal = ids[-1]

    # Reconnecting with an id before the terminal state: only what came after it.
    again = httpx.get(url, headers={"Last-Event-ID": str(terminal - 1)}, timeout=30)
    assert again.status_code == 200 and again.text.startswith("retry: 3000\n\n")
    assert [(name, event_id, data["status"]) for name, event_id, data in events_of(again.text)] == [
        ("status", str(terminal), "succeeded")
    ]
    # Reconnecting after the terminal event was delivered: 204, which tells EventSource to stop.
    for last in (terminal, terminal + 5):
        done = httpx.get(url, headers={"Last-Event-ID": str(last)}, timeout=30)
        assert (done.status_code, done.content) == (204, b""), done.text
    # Anything that is not an id this server sent is refused with the usual error body.
    bad = httpx.get(url, headers={"Last-Event-ID": "status-3"}, timeout=30)
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")


def test_a_follower_joining_a_running_job_with_last_event_id_skips_what_it_saw(job_server: Server) -> None:
    job_id = submit(job_server.url)
    url = f"{job_server.url}/api/v1/jobs/{job_id}/events"
    # Ids count status changes: 1 queued, 2 running, 3 succeeded. A client that saw "running" (whether the job
    # is still queued or already running when it connects) gets the terminal event only.
    with httpx.stream("GET", url, headers={"Last-Event-ID": "2"}, timeout=30) as r:
        seen = events_of(r.read().decode())
    assert r.status_code == 200
    assert [(event_id, data["status"]) for _, event_id, data in seen] == [("3", "succeeded")]


def test_the_readme_fetch_reader_resumes_a_cut_stream_and_raises_on_failed(
    job_server: Server, node_runs: dict[str, Any]
) -> None:
    lines = printed(node_runs["stream"], timeout=60)
    requests = [line for line in lines if line["type"] == "request"]
    events = [line for line in lines if line["type"] == "event"]
    assert lines[-1] == {"type": "end"}, lines
    # Cut after the first chunk, then the same body again from the last id received: every record once.
    assert [(e["event"], e["offset"]) for e in events] == [
        ("chunk", 0),
        ("chunk", 1),
        ("chunk", 2),
        ("chunk", 3),
        ("summary", None),
    ]
    assert len(requests) == 2 and requests[0]["lastEventId"] is None and requests[1]["lastEventId"], requests
    resumed_at = int(requests[1]["lastEventId"])
    assert 1 <= resumed_at <= 3 and events[-1]["data"]["chunks"] == 4 - resumed_at
    assert len(job_server.requests(at_least=2, path="/api/v1/predict/stream")) >= 2

    failed = printed(node_runs["failed"], timeout=60)
    assert [(e["event"], e["offset"]) for e in failed if e["type"] == "event"] == [("chunk", 0)]
    assert failed[-1] == {"type": "raised", "message": failed[-1]["message"], "code": "model_error", "offset": 1}
    assert [line["type"] for line in failed].count("request") == 1  # a failed chunk is not retried


def test_the_readme_shows_the_tested_fetch_reader() -> None:
    source = (NODE_DIR / "predict_stream.mjs").read_text()
    code = source.split("// --- README: predictStream ---\n", 1)[1].split("// --- README: end ---", 1)[0]
    assert code.strip() in README.read_text(), "README.md must show predictStream exactly as predict_stream.mjs has it"


def test_npm_eventsource_gets_one_terminal_event_then_never_reconnects(
    job_server: Server, node_runs: dict[str, Any]
) -> None:
    lines = printed(node_runs["follow"], timeout=60 + QUIET_S)
    (submitted,) = [line for line in lines if line["type"] == "submitted"]
    assert submitted["status"] == 202
    job_id = submitted["id"]
    a = [line for line in lines if line.get("follower") == "a"]
    b = [line for line in lines if line.get("follower") == "b"]

    # Follower a: each status once and in order, exactly one terminal event (the last), then one
    # reconnection, answered 204, after which EventSource is closed for good.
    statuses = [(line["id"], line["status"]) for line in a if line["type"] == "status"]
    assert [status for _, status in statuses].count("succeeded") == 1 and statuses[-1][1] == "succeeded", a
    assert not set(status for _, status in statuses[:-1]) & TERMINAL_JOB_STATUSES
    assert [int(i) for i, _ in statuses] == sorted({int(i) for i, _ in statuses})
    errors = [line for line in a if line["type"] == "error"]
    assert (errors[-1]["code"], errors[-1]["readyState"], errors[-1]["connection"]) == (204, 2, 2), a
    terminal_at = next(line["t_ms"] for line in a if line.get("status") == "succeeded")
    assert errors[-1]["t_ms"] - terminal_at >= 0.8 * RETRY_S * 1000, "the reconnection did not wait for retry:"
    (done,) = [line for line in lines if line["type"] == "done"]
    assert done["readyState"] == {"a": 2, "b": 2}
    assert done["t_ms"] - errors[-1]["t_ms"] >= QUIET_S * 1000

    # Follower b started from a's first event id: it never got that event or an earlier one again.
    first_id = int(statuses[0][0])
    b_statuses = [(int(line["id"]), line["status"]) for line in b if line["type"] == "status"]
    assert b_statuses and all(i > first_id for i, _ in b_statuses), (first_id, b)
    assert [status for _, status in b_statuses].count("succeeded") == 1 and b_statuses[-1][1] == "succeeded"

    # The server saw exactly two connections per follower: the stream, then the 204; none during the
    # QUIET_S both stayed alive afterwards.
    path = f"/api/v1/jobs/{job_id}/events"
    access = job_server.requests(at_least=4, path=path)
    assert sorted((line["request_id"], line["status"]) for line in access) == [
        ("a-1", 200),
        ("a-2", 204),
        ("b-1", 200),
        ("b-2", 204),
    ]
