"""Correlation against the real service: OpenTelemetry spans received by an OTLP/HTTP receiver the test
starts, the same trace id in the access line, traceparent honoured on the way in and sent on callbacks,
model_error lines naming their batch's requests, and trace-id exemplars in OpenMetrics scrapes."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import joblib
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from ferry import webhooks
from support.models import TRUSTED_CARDLESS, PickyModel
from support.otlp import OtlpReceiver, ReceivedSpan
from support.receiver import Receiver
from support.server import Server

PREDICT = "/api/v1/predict"
OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver, hook: Receiver) -> Iterator[Server]:
    """Two workers, tracing on, a model that fails on the poison value 13.0 and takes 0.1 s per call
    (so concurrent requests queue and merge)."""
    workdir = tmp_path_factory.mktemp("traced")
    path = workdir / "picky.joblib"
    joblib.dump(PickyModel(delay_s=0.1), path)
    port = hook.httpd.server_address[1]
    env = {
        **TRUSTED_CARDLESS,
        "FERRY_TRACING__ENABLED": "true",
        "FERRY_TRACING__ENDPOINT": otlp.endpoint,
        "FERRY_TRACING__SERVICE_NAME": "ferry-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch export interval (ms): spans arrive quickly
        "FERRY_CALLBACKS__SIGNING_SECRET": webhooks.generate_secret(),
        "FERRY_CALLBACKS__ALLOW_HTTP": "true",
        "FERRY_CALLBACKS__ALLOW_HOSTS": f'["127.0.0.1:{port}"]',
        "FERRY_JOBS__POLL_INTERVAL_S": "0.05",
    }
    server = Server(workdir, path, env=env).start()
    yield server
    assert server.stop() == 0, server.output()[-2000:]


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def _has(trace_id: str, *names: str) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: all(_named([s for s in spans if s.trace_id == trace_id], n) for n in names)


def test_one_prediction_is_one_trace_of_request_queue_wait_and_model_call(traced: Server, otlp: OtlpReceiver) -> None:
    r = httpx.post(traced.url + PREDICT, json={"record": [1.0, 2.0, 3.0]}, timeout=30)
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    (line,) = traced.requests(request_id=request_id)
    trace_id = line["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)

    otlp.wait_for(_has(trace_id, f"POST {PREDICT}", "queue wait", "model call"))
    spans = otlp.trace(trace_id)
    (request,) = _named(spans, f"POST {PREDICT}")
    (wait,) = _named(spans, "queue wait")
    (call,) = _named(spans, "model call")
    assert request.kind == "server" and request.parent_span_id == ""  # no traceparent sent: a new trace
    assert request.attributes["http.route"] == PREDICT
    assert request.attributes["http.response.status_code"] == 200
    assert request.service_name == "ferry-under-test"
    assert wait.parent_span_id == request.span_id and call.parent_span_id == request.span_id
    assert (trace_id, request.span_id) in call.links
    assert call.attributes["ferry.rows"] == 1 and call.attributes["ferry.requests"] == 1
    assert wait.end_ns <= call.start_ns + 1_000_000  # the wait ends where the call starts (1 ms of slack)
    assert request.start_ns <= wait.start_ns and call.end_ns <= request.end_ns
    assert otlp.content_types and set(otlp.content_types) == {"application/x-protobuf"}


def test_the_callers_traceparent_is_honoured(traced: Server, otlp: OtlpReceiver) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    r = httpx.post(traced.url + PREDICT, json={"record": [1.0, 2.0, 3.0]}, headers=headers, timeout=30)
    assert r.status_code == 200
    (line,) = traced.requests(request_id=r.headers["x-request-id"])
    assert line["trace_id"] == trace_id
    otlp.wait_for(_has(trace_id, f"POST {PREDICT}", "model call"))
    (request,) = _named(otlp.trace(trace_id), f"POST {PREDICT}")
    assert request.parent_span_id == parent


def test_a_callback_carries_the_submitters_trace(traced: Server, otlp: OtlpReceiver, hook: Receiver) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = {"records": [[1.0, 2.0, 3.0]], "callback_url": hook.url}
    before = len(hook.requests)
    created = httpx.post(traced.url + "/api/v1/jobs", json=body, headers=headers, timeout=30)
    assert created.status_code == 202, created.text
    delivered = hook.wait_for(before + 1)[before]
    sent = delivered.headers.get("traceparent", "")
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", sent)
    assert match and match.group(1) == trace_id, sent

    otlp.wait_for(_has(trace_id, "POST /api/v1/jobs", "job run", "callback attempt", "model call"))
    spans = otlp.trace(trace_id)
    (submit,) = _named(spans, "POST /api/v1/jobs")
    (run,) = _named(spans, "job run")
    (attempt,) = _named(spans, "callback attempt")
    assert run.parent_span_id == submit.span_id and attempt.parent_span_id == submit.span_id
    assert attempt.kind == "client" and attempt.span_id == match.group(2)  # the POST's parent is the attempt
    assert attempt.attributes["ferry.callback.outcome"] == "delivered"
    (call,) = _named(spans, "model call")
    assert call.parent_span_id == run.span_id  # the job's prediction is part of its run


def test_model_error_lines_name_every_request_of_the_failed_call(traced: Server) -> None:
    ids = [f"poison-test-{i}" for i in range(40)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
            bodies = [{"record": [13.0 if i == 7 else i + 0.5, 1.0, 2.0]} for i in range(len(ids))]
            return await asyncio.gather(
                *(
                    client.post(PREDICT, json=b, headers={"x-request-id": rid})
                    for b, rid in zip(bodies, ids, strict=True)
                )
            )

    responses = asyncio.run(fire())
    assert [i for i, r in enumerate(responses) if r.status_code != 200] == [7]
    access = {
        line["request_id"]: line["trace_id"] for line in traced.requests(at_least=40) if line["request_id"] in ids
    }
    assert len(access) == 40
    errors = [r for r in traced.records() if r.get("event") == "model_error"]
    merged = [r for r in errors if r["requests"] > 1]
    assert merged, "the poison record never shared a call: nothing to check"
    for line in merged:
        assert "poison-test-7" in line["request_ids"] and len(line["request_ids"]) == line["requests"]
        assert set(line["request_ids"]) <= set(ids)
        assert line["trace_ids"] == [access[rid] for rid in line["request_ids"]]
        assert line["request_id"] is None  # a merged call belongs to no single request
    # The poison request run on its own afterwards: its own line, findable by its request id.
    alone = [r for r in errors if r["requests"] == 1]
    assert [r["request_id"] for r in alone] == ["poison-test-7"]
    assert alone[0]["trace_id"] == access["poison-test-7"] and alone[0]["request_ids"] == ["poison-test-7"]


def test_openmetrics_scrapes_carry_trace_id_exemplars_from_every_worker(traced: Server) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    r = httpx.post(traced.url + PREDICT, json={"record": [2.0, 2.0, 3.0]}, headers=headers, timeout=30)
    assert r.status_code == 200
    (served,) = traced.requests(request_id=r.headers["x-request-id"])

    def scrape(n: int) -> tuple[int, set[str]]:
        """Which worker answered scrape ``n``, and the trace ids of its predict-route exemplars."""
        scrape_id = f"scrape-{trace_id[:8]}-{n}"
        r = httpx.get(traced.url + "/metrics", headers={"accept": OPENMETRICS, "x-request-id": scrape_id}, timeout=10)
        assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        found = set()
        for family in openmetrics_families(r.text):  # parses: the exposition is valid OpenMetrics
            if family.name == "ferry_http_request_duration_seconds":
                for sample in family.samples:
                    if sample.exemplar is not None and sample.labels.get("route") == PREDICT:
                        assert sample.name.endswith("_bucket")
                        assert float(sample.exemplar.value) <= float(sample.labels["le"])
                        found.add(sample.exemplar.labels["trace_id"])
        (line,) = traced.requests(request_id=scrape_id)
        return line["pid"], found

    # The worker that did not serve the request must show its exemplar too (from the other's file,
    # written within a second); scrapes land on either worker, so scrape until that one answers.
    deadline = time.monotonic() + 15
    n = 0
    while True:
        pid, found = scrape(n := n + 1)
        if pid != served["pid"] and trace_id in found:
            break
        assert time.monotonic() < deadline, f"no scrape by another worker than {served['pid']} had the exemplar"
        time.sleep(0.1)

    plain = httpx.get(traced.url + "/metrics", timeout=10)
    assert plain.headers["content-type"].startswith("text/plain")
    assert " # {" not in plain.text  # exemplars only where the format has room for them
    names = {family.name for family in text_families(plain.text)}
    assert "ferry_http_request_duration_seconds" in names


def test_probes_and_scrapes_make_no_spans(traced: Server, otlp: OtlpReceiver) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(traced.url + path).status_code == 200
    marker = secrets.token_hex(16)
    headers = {"traceparent": f"00-{marker}-{secrets.token_hex(8)}-01"}
    httpx.post(traced.url + PREDICT, json={"record": [1.0, 2.0, 3.0]}, headers=headers)
    spans = otlp.wait_for(_has(marker, f"POST {PREDICT}"))  # exported after the probes: they would be in
    assert not [s for s in spans if s.name.startswith("GET ")]
