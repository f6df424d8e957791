"""A client generated from /openapi.json by openapi-python-client calls every route of the real service.

The generator (its own virtualenv, ``make openapi-client``: its pins would move the dev lock's) writes
the client into a temporary directory, offline, from the document of a real gunicorn server with API-key
authentication on, the way a team that consumes ferry would. The client is created with
``raise_on_unexpected_status=True``, so an answer whose status the document does not name raises
``UnexpectedStatus``. Every operation is called once to succeed and, where an error can be reached through
the generated function, once to fail; every answer must parse into the documented model, error bodies into
``ErrorBody`` (``V2ErrorBody`` under /v2) with the stable code. A failure here is a contract a generated
client cannot use.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from support.server import Server

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / ".tools" / "openapi-client" / "bin" / "openapi-python-client"
PACKAGE = "ferry_generated_client"
KEY = "generated-client-key-1"
JOBS_ONLY_KEY = "generated-client-key-2"
CALLED: set[str] = set()  # "METHOD /path" of every operation this module called


@pytest.fixture(scope="module")
def auth_server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    keys = [
        {"sha256": digest(KEY), "principal": "team", "scopes": ["predict", "jobs"]},
        {"sha256": digest(JOBS_ONLY_KEY), "principal": "batch", "scopes": ["jobs"]},
    ]
    env = {"FERRY_AUTH__MODE": "api_key", "FERRY_AUTH__API_KEYS": json.dumps(keys)}
    srv = Server(tmp_path_factory.mktemp("generated-client"), churn_model, env=env).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]


@pytest.fixture(scope="module")
def spec(auth_server: Server) -> dict[str, Any]:
    return httpx.get(auth_server.url + "/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def client_package(spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    assert GENERATOR.exists(), f"{GENERATOR} is missing: run `make openapi-client`"
    out = tmp_path_factory.mktemp("openapi-client")
    (out / "openapi.json").write_text(json.dumps(spec))
    (out / "config.yaml").write_text("post_hooks: []\n")  # no formatter run on the generated code
    command = ["generate", "--path", "openapi.json", "--output-path", PACKAGE, "--meta", "none"]
    run = subprocess.run(
        [str(GENERATOR), *command, "--config", "config.yaml"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The generator warns (and still writes) when it skips what it cannot model: nothing may be skipped.
    assert run.returncode == 0 and "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def api(package: ModuleType, tag: str, name: str) -> Any:
    module = importlib.import_module(f"{package.__name__}.api.{tag}.{name}")
    CALLED.add(name)
    return module.sync_detailed


@pytest.fixture(scope="module")
def clients(client_package: ModuleType, auth_server: Server) -> Iterator[dict[str, Any]]:
    made = {
        "team": client_package.AuthenticatedClient(base_url=auth_server.url, token=KEY),
        "batch": client_package.AuthenticatedClient(base_url=auth_server.url, token=JOBS_ONLY_KEY),
        "anonymous": client_package.Client(base_url=auth_server.url),
    }
    for client in made.values():
        client.raise_on_unexpected_status = True
    yield made
    for client in made.values():
        client.get_httpx_client().close()


def model(package: ModuleType, name: str) -> Any:
    return getattr(importlib.import_module(f"{package.__name__}.models"), name)


def events_of(stream: bytes) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each event of a text/event-stream body (comments skipped)."""
    found = []
    for block in stream.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "data" in fields:
            found.append((fields.get("event", "message"), json.loads(fields["data"])))
    return found


def error(response: Any, status: int, code: str, body: str = "ErrorBody") -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert type(response.parsed).__name__ == body and response.parsed.code == code, response.parsed


def test_every_operation_succeeds_and_fails_as_documented(
    client_package: ModuleType, clients: dict[str, Any], spec: dict[str, Any], record: dict[str, Any]
) -> None:
    pkg, team, batch, anonymous = client_package, clients["team"], clients["batch"], clients["anonymous"]
    m = lambda name: model(pkg, name)  # noqa: E731

    # Probes and metrics: open paths, no error a generated call can reach while the model is ready.
    assert api(pkg, "health", "livez_livez_get")(client=anonymous).parsed.status.value == "ok"
    assert api(pkg, "health", "readyz_readyz_get")(client=anonymous).parsed.status.value == "ready"
    metrics = api(pkg, "health", "metrics_metrics_get")(client=anonymous)
    assert metrics.status_code == 200 and b"ferry_http_requests_total" in metrics.content

    # Prediction: 200 parsed, 401 without a credential, 504 for a deadline too short to meet.
    predict = api(pkg, "predict", "predict_api_v1_predict_post")
    body = m("PredictRequest").from_dict({"record": record})
    assert predict(client=team, body=body).parsed.prediction in ("churn", "stay")
    error(predict(client=anonymous, body=body), 401, "unauthorized")
    error(predict(client=team, body=body, x_request_timeout=1e-300), 504, "deadline_exceeded")
    batch_predict = api(pkg, "predict", "predict_batch_api_v1_predict_batch_post")
    two = m("BatchPredictRequest").from_dict({"records": [record, record]})
    assert len(batch_predict(client=team, body=two).parsed.predictions) == 2
    error(batch_predict(client=batch, body=two), 403, "forbidden")
    stream = api(pkg, "predict", "predict_stream_api_v1_predict_stream_post")
    ok = stream(client=team, body=m("StreamPredictRequest").from_dict({"records": [record] * 3, "chunk_size": 2}))
    # The event stream as it came; each event's data parses into the generated payload model.
    payloads = {"chunk": m("StreamChunk"), "summary": m("StreamSummary")}
    parsed = [payloads[name].from_dict(data) for name, data in events_of(ok.content)]
    assert [type(p).__name__ for p in parsed] == ["StreamChunk", "StreamChunk", "StreamSummary"]
    assert parsed[1].offset == 2 and parsed[2].records == 3
    too_big = m("StreamPredictRequest").from_dict({"records": [record], "chunk_size": 10**6})
    error(stream(client=team, body=too_big), 422, "validation_error")

    # Jobs: submit, poll, follow, cancel, redeliver; 404 unknown job, 409 wrong state, 422 callback.
    submit = api(pkg, "jobs", "submit_api_v1_jobs_post")
    job = submit(client=batch, body=m("JobRequest").from_dict({"records": [record]}))
    assert job.status_code == 202 and job.headers["location"].endswith(job.parsed.id)
    hook = m("JobRequest").from_dict({"records": [record], "callback_url": "https://hooks.example.com/ferry"})
    error(submit(client=batch, body=hook), 422, "callbacks_not_configured")
    events = api(pkg, "jobs", "events_api_v1_jobs_job_id_events_get")
    followed = events(job.parsed.id, client=batch)  # ends with the job's terminal state
    statuses = [m("Job").from_dict(data).status.value for name, data in events_of(followed.content)]
    assert followed.status_code == 200 and statuses[-1] == "succeeded", statuses
    get_job = api(pkg, "jobs", "get_job_api_v1_jobs_job_id_get")
    assert get_job(job.parsed.id, client=batch).parsed.status.value == "succeeded"
    unknown = "0" * 32
    error(get_job(unknown, client=batch), 404, "job_not_found")
    error(events(unknown, client=batch), 404, "job_not_found")
    cancel = api(pkg, "jobs", "cancel_job_api_v1_jobs_job_id_delete")
    error(cancel(job.parsed.id, client=batch), 409, "job_conflict")  # finished: too late
    error(cancel(unknown, client=batch), 404, "job_not_found")
    redeliver = api(pkg, "jobs", "redeliver_api_v1_jobs_job_id_callback_redeliver_post")
    error(redeliver(job.parsed.id, client=batch), 409, "job_conflict")  # it has no callback
    error(redeliver(unknown, client=batch), 404, "job_not_found")

    # Model cards.
    models = api(pkg, "models", "list_models_api_v1_models_get")(client=team)
    assert models.parsed.additional_properties["models"][0]["name"] == "churn"
    card = api(pkg, "models", "get_model_api_v1_models_name_get")
    assert card("churn", client=team).parsed.additional_properties["name"] == "churn"
    error(card("nosuch", client=team), 404, "model_not_found")

    # Open Inference Protocol: 200s parsed, errors in the protocol's own body, 400 (never 422).
    v2 = "open_inference_protocol_v2"
    assert api(pkg, v2, "server_metadata_v2_get")(client=team).parsed.name == "ferry"
    error(api(pkg, v2, "server_metadata_v2_get")(client=anonymous), 401, "unauthorized", "V2ErrorBody")
    assert api(pkg, v2, "server_live_v2_health_live_get")(client=team).parsed.live is True
    assert api(pkg, v2, "server_ready_v2_health_ready_get")(client=team).parsed.ready is True
    error(api(pkg, v2, "server_ready_v2_health_ready_get")(client=batch), 403, "forbidden", "V2ErrorBody")
    for operation, args in [
        ("model_metadata_v2_models_name_get", ("churn",)),
        ("model_version_metadata_v2_models_name_versions_version_get", ("churn", "1.0.0")),
        ("model_ready_v2_models_name_ready_get", ("churn",)),
        ("model_version_ready_v2_models_name_versions_version_ready_get", ("churn", "1.0.0")),
    ]:
        call = api(pkg, v2, operation)
        assert call(*args, client=team).status_code == 200
        error(call(*args[:-1], "nosuch", client=team), 404, "model_not_found", "V2ErrorBody")
    metadata = api(pkg, v2, "model_metadata_v2_models_name_get")("churn", client=team).parsed
    example = spec["components"]["schemas"]["InferRequest"]["examples"][0]
    for operation, args in [
        ("infer_v2_models_name_infer_post", ("churn",)),
        ("infer_version_v2_models_name_versions_version_infer_post", ("churn", "1.0.0")),
    ]:
        infer = api(pkg, v2, operation)
        answer = infer(*args, client=team, body=m("InferRequest").from_dict(example))
        assert [o.name for o in answer.parsed.outputs] == [o.name for o in metadata.outputs]
        wrong = m("InferRequest").from_dict({**example, "outputs": [{"name": "nosuch"}]})
        error(infer(*args, client=team, body=wrong), 400, "bad_request", "V2ErrorBody")

    generated = {m.name for tag in (Path(pkg.__file__).parent / "api").iterdir() for m in tag.glob("[!_]*.py")}
    generated = {name.removesuffix(".py") for name in generated}
    operations = sum(len(item) for item in spec["paths"].values())
    assert generated == CALLED and len(generated) == operations, (generated ^ CALLED, operations)
