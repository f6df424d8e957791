"""``ferry model fetch`` run as the init container runs it: a real subprocess against a real HTTP
server, a real S3-compatible server (moto) and a port with nothing listening. Each test asserts what
the pod sees: the exit code, the one line on stderr and the files in the output directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from ferry.model import ModelHolder, ModelState
from ferry.settings import ModelSettings
from support.file_server import FileServer, Reply
from support.moto_s3 import MotoS3
from support.server import free_port
from support.tls import local_tls

FAST = ["--backoff-base", "0.01", "--backoff-max", "0.05", "--timeout", "5"]  # tiny waits: tests take seconds
WRONG = hashlib.sha256(b"not the model").hexdigest()


@dataclass(frozen=True)
class Model:
    data: bytes
    card: bytes
    sha256: str


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def failure(self) -> dict:
        """The one line on stderr, parsed; fails the test if there is not exactly one."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{self.stderr}"
        record = json.loads(lines[0])
        assert record["event"] == "model_fetch_failed" and record["level"] == "error"
        return record

    def events(self, name: str) -> list[dict]:
        return [record for record in self.records if record["event"] == name]


def fetch(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60) -> Run:
    """``ferry model fetch ARGS`` in a process of its own; ``env`` replaces the environment when given."""
    done = subprocess.run(
        [sys.executable, "-m", "ferry", "model", "fetch", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else {k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        cwd=cwd,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def model(churn_model: Path) -> Model:
    data = churn_model.read_bytes()
    return Model(data, churn_model.with_name("model.card.json").read_bytes(), hashlib.sha256(data).hexdigest())


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


def serve(files: FileServer, folder: str, model: Model, *replies: Reply) -> str:
    """The model at /FOLDER/model.joblib (answered by ``replies`` when given) and its card beside it."""
    files.route(f"/{folder}/model.card.json", Reply(body=model.card))
    return files.route(f"/{folder}/model.joblib", *(replies or (Reply(body=model.data),)))


# --- https:// and http:// -----------------------------------------------------------------------


def test_right_hash_writes_the_model_and_its_card_and_nothing_else(
    files: FileServer, model: Model, tmp_path: Path
) -> None:
    url = serve(files, "ok", model)
    out, cwd, tmp, home = (tmp_path / name for name in ("out", "cwd", "tmp", "home"))
    for folder in (cwd, tmp, home):
        folder.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(home)}
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(out), "--allow-http", *FAST, env=env, cwd=cwd)
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["model.card.json", "model.joblib"]
    assert (out / "model.joblib").read_bytes() == model.data
    assert (out / "model.card.json").read_bytes() == model.card
    assert (out / "model.joblib").stat().st_mode & 0o777 == 0o444
    assert list(cwd.iterdir()) == list(tmp.iterdir()) == list(home.iterdir()) == []  # wrote only into --out
    [done] = run.events("model_fetched")
    assert done["sha256"] == model.sha256 and done["bytes"] == len(model.data)
    # What the service does with the directory: card found beside the model, hash verified, served.
    holder = ModelHolder(ModelSettings(path=out / "model.joblib", require_card=True, sha256=model.sha256))
    holder.load()
    assert holder.state is ModelState.READY, holder.reason


def test_wrong_hash_writes_nothing_and_names_both_hashes(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "tampered", model, Reply(body=model.data + b"\0"))  # the card is right, the file is not
    out = tmp_path / "out"
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(out), "--allow-http", *FAST)
    assert run.code == 1
    assert list(out.iterdir()) == []
    failure = run.failure
    actual = hashlib.sha256(model.data + b"\0").hexdigest()
    assert f"expected {model.sha256}, got {actual}" in failure["error"]
    assert url in failure["error"]
    assert len(files.hits_of("/tampered/model.joblib")) == 1  # a wrong hash is not retried


def test_card_for_another_file_is_refused_before_the_model_is_downloaded(
    files: FileServer, model: Model, tmp_path: Path
) -> None:
    url = serve(files, "ok", model)
    out = tmp_path / "out"
    run = fetch("--url", url, "--sha256", WRONG, "--out", str(out), "--allow-http", *FAST)
    assert run.code == 1
    assert list(out.iterdir()) == []
    assert files.hits_of("/ok/model.joblib") == []
    error = run.failure["error"]
    assert model.sha256 in error and WRONG in error and "model.card.json" in error


def test_404_is_retried_until_the_object_appears(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "uploading", model, Reply(404), Reply(404), Reply(404), Reply(body=model.data))
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST)
    assert run.code == 0, run.stderr
    assert len(files.hits_of("/uploading/model.joblib")) == 4
    assert [r["error"] for r in run.events("model_fetch_retry")] == ["404 Not Found"] * 3
    assert (tmp_path / "model.joblib").read_bytes() == model.data


def test_404_until_the_retries_run_out_fails_with_one_clear_line(
    files: FileServer, model: Model, tmp_path: Path
) -> None:
    url = serve(files, "never", model, Reply(404))
    out = tmp_path / "out"
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(out), "--allow-http", "--retries", "2", *FAST)
    assert run.code == 3
    assert len(files.hits_of("/never/model.joblib")) == 3
    assert run.failure["error"] == f"cannot fetch {url} after 3 attempts: 404 Not Found"
    assert list(out.iterdir()) == []


def test_connection_refused_is_retried_then_fails_clearly(model: Model, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/model.joblib"  # nothing listens there
    run = fetch(
        "--url", url, "--no-card", "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http",
        "--retries", "2", *FAST,
    )  # fmt: skip
    assert run.code == 3
    retries = run.events("model_fetch_retry")
    assert [r["attempt"] for r in retries] == [1, 2]
    assert all("cannot connect" in r["error"] for r in retries)
    error = run.failure["error"]
    assert error.startswith(f"cannot fetch {url} after 3 attempts: cannot connect")
    assert "refused" in error.lower()
    assert list(tmp_path.iterdir()) == []


def test_503_retry_after_is_honoured(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "busy", model, Reply(503, headers={"retry-after": "1"}), Reply(body=model.data))
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST)
    assert run.code == 0, run.stderr
    first, second = files.hits_of("/busy/model.joblib")
    assert second.at - first.at >= 0.95  # the backoff alone (--backoff-max 0.05) would be far shorter
    [retry] = run.events("model_fetch_retry")
    assert retry["error"] == "503 Service Unavailable" and retry["retry_in_s"] >= 1.0


def test_a_stalled_transfer_is_cut_by_the_timeout_and_retried(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "stall", model, Reply(body=model.data, stall_after=1000), Reply(body=model.data))
    args = ["--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST]
    run = fetch(*args, "--timeout", "0.5")
    assert run.code == 0, run.stderr
    [retry] = run.events("model_fetch_retry")
    assert "stalled" in retry["error"]
    assert (tmp_path / "model.joblib").read_bytes() == model.data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.card.json", "model.joblib"]  # no leftover


def test_403_fails_at_once(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "private", model, Reply(403))
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST)
    assert run.code == 4
    assert len(files.hits_of("/private/model.joblib")) == 1
    assert run.events("model_fetch_retry") == []
    assert "403 Forbidden" in run.failure["error"]
    assert list(tmp_path.iterdir()) == []


def test_plain_http_needs_allow_http(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "ok", model)
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), *FAST)
    assert run.code == 2
    assert "--allow-http" in run.failure["error"]
    assert files.hits == []


def test_missing_card_is_retried_then_named_with_the_way_out(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = files.route("/nocard/model.joblib", Reply(body=model.data))
    args = ["--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST]
    run = fetch(*args, "--retries", "1")
    assert run.code == 3
    assert "/nocard/model.card.json" in run.failure["error"] and "--no-card" in run.failure["error"]
    run = fetch(*args, "--no-card")
    assert run.code == 0, run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.joblib"]


def test_max_bytes_refuses_a_larger_file(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "ok", model)
    args = ["--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST]
    run = fetch(*args, "--max-bytes", str(len(model.data) - 1))
    assert run.code == 1
    assert f"is {len(model.data)} bytes, more than the {len(model.data) - 1} allowed" in run.failure["error"]
    assert list(tmp_path.iterdir()) == []


def test_credentials_and_signatures_never_reach_the_output(files: FileServer, model: Model, tmp_path: Path) -> None:
    serve(files, "signed", model, Reply(503), Reply(404))
    url = files.url.replace("http://", "http://reader:hunter2@") + "/signed/model.joblib?X-Amz-Signature=s3cr3t"
    args = ["--url", url, "--card-url", files.url + "/signed/model.card.json", "--sha256", model.sha256]
    run = fetch(*args, "--out", str(tmp_path), "--allow-http", "--retries", "1", *FAST)
    assert run.code == 3
    assert run.events("model_fetch_retry"), run.stdout
    for secret in ("hunter2", "s3cr3t"):
        assert secret not in run.stdout + run.stderr
    assert "X-Amz-Signature=REDACTED" in run.failure["error"]


def test_sigterm_removes_the_partial_file(files: FileServer, model: Model, tmp_path: Path) -> None:
    url = serve(files, "slow", model, Reply(body=model.data, stall_after=1000))
    process = subprocess.Popen(
        [sys.executable, "-m", "ferry", "model", "fetch", "--url", url, "--sha256", model.sha256,
         "--out", str(tmp_path), "--allow-http", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not list(tmp_path.glob(".model.joblib.*.part")):  # the download has begun
            assert time.monotonic() < deadline and process.poll() is None, "the download never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143
    assert "SIGTERM" in Run(143, "", stderr).failure["error"]
    assert list(tmp_path.iterdir()) == []


def test_https_with_the_ca_trusted_through_ssl_cert_file(model: Model, tmp_path: Path) -> None:
    tls = local_tls(tmp_path)
    out = tmp_path / "out"
    with FileServer(tls=tls.server) as files:
        url = serve(files, "tls", model)
        args = ["--url", url, "--sha256", model.sha256, "--out", str(out), *FAST]
        trusted = fetch(*args, env={**os.environ, "SSL_CERT_FILE": str(tls.ca_file)})
        untrusted = fetch(*args, env={k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT")})
    assert trusted.code == 0, trusted.stderr
    assert (out / "model.joblib").read_bytes() == model.data
    assert untrusted.code == 4  # a certificate is not going to become trusted by retrying
    assert untrusted.events("model_fetch_retry") == []
    assert "not trusted" in untrusted.failure["error"] and "SSL_CERT_FILE" in untrusted.failure["error"]


def test_https_redirect_to_plain_http_is_refused(model: Model, tmp_path: Path) -> None:
    tls = local_tls(tmp_path)
    with FileServer() as plain, FileServer(tls=tls.server) as secure:
        target = serve(plain, "ok", model)
        secure.route("/tls/model.card.json", Reply(302, headers={"location": target.replace(".joblib", ".card.json")}))
        url = secure.route("/tls/model.joblib", Reply(302, headers={"location": target}))
        run = fetch(
            "--url", url, "--sha256", model.sha256, "--out", str(tmp_path / "out"), *FAST,
            env={**os.environ, "SSL_CERT_FILE": str(tls.ca_file)},
        )  # fmt: skip
    assert run.code == 4
    assert "redirected to plain http" in run.failure["error"]
    assert plain.hits == []


# --- s3:// through moto ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: MotoS3, model: Model) -> str:
    """A bucket holding the model and its card, created with credentials from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3.aws_env().items():
            patch.setenv(key, value)
        client = boto3.client("s3")  # no arguments: region, endpoint and keys from the AWS_* variables
        client.create_bucket(Bucket="ferry-models")
        client.put_object(Bucket="ferry-models", Key="churn/v1/model.joblib", Body=model.data)
        client.put_object(Bucket="ferry-models", Key="churn/v1/model.card.json", Body=model.card)
    return "ferry-models"


def test_s3_with_credentials_from_the_environment(s3: MotoS3, bucket: str, model: Model, tmp_path: Path) -> None:
    url = f"s3://{bucket}/churn/v1/model.joblib"
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", *FAST, env=s3.aws_env())
    assert run.code == 0, run.stderr
    assert (tmp_path / "model.joblib").read_bytes() == model.data
    assert (tmp_path / "model.card.json").read_bytes() == model.card
    assert run.events("model_fetched")[0]["url"] == url


def test_s3_with_workload_identity_credentials(
    s3: MotoS3, bucket: str, files: FileServer, model: Model, tmp_path: Path
) -> None:
    """No keys in the environment: the credentials come from the pod's identity agent (EKS Pod
    Identity; ECS task roles alike), served here by a local endpoint as the agent serves them."""
    token = tmp_path / "eks-pod-identity-token"
    token.write_text("projected-service-account-token")
    credentials = files.route(
        "/v1/credentials",
        Reply(body=json.dumps({"AccessKeyId": "ASIAPODIDENTITY", "SecretAccessKey": "s", "Token": "t",
                               "Expiration": "2099-01-01T00:00:00Z"}).encode()),
    )  # fmt: skip
    env = {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token),
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }
    out = tmp_path / "out"
    url = f"s3://{bucket}/churn/v1/model.joblib"
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(out), "--allow-http", *FAST, env=env)
    assert run.code == 0, run.stderr
    assert (out / "model.joblib").read_bytes() == model.data
    hits = files.hits_of("/v1/credentials")
    assert hits and all(hit.headers["authorization"] == "projected-service-account-token" for hit in hits)


def test_s3_wrong_hash_writes_nothing(s3: MotoS3, bucket: str, model: Model, tmp_path: Path) -> None:
    url = f"s3://{bucket}/churn/v1/model.joblib"
    run = fetch("--url", url, "--sha256", WRONG, "--no-card", "--out", str(tmp_path), "--allow-http", *FAST,
                env=s3.aws_env())  # fmt: skip
    assert run.code == 1
    assert f"expected {WRONG}, got {model.sha256}" in run.failure["error"]
    assert list(tmp_path.iterdir()) == []


def test_s3_missing_object_is_retried_then_fails_clearly(s3: MotoS3, bucket: str, model: Model, tmp_path: Path) -> None:
    url = f"s3://{bucket}/churn/v2/model.joblib"
    args = ["--url", url, "--sha256", model.sha256, "--no-card", "--out", str(tmp_path), "--allow-http"]
    run = fetch(*args, "--retries", "2", *FAST, env=s3.aws_env())
    assert run.code == 3
    assert len(run.events("model_fetch_retry")) == 2
    error = run.failure["error"]
    assert error.startswith(f"cannot fetch {url} after 3 attempts: 404 Not Found (NoSuchKey")
    assert "\n" not in error


def test_s3_endpoint_refusing_connections_is_retried_then_fails(model: Model, tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIAX", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    url = "s3://ferry-models/churn/v1/model.joblib"
    run = fetch("--url", url, "--sha256", model.sha256, "--out", str(tmp_path), "--allow-http", "--retries", "1",
                *FAST, env=env)  # fmt: skip
    assert run.code == 3
    assert len(run.events("model_fetch_retry")) == 1
    error = run.failure["error"]
    card = url.replace("model.joblib", "model.card.json")  # the card comes first
    assert error.startswith(f"cannot fetch {card} after 2 attempts:") and "Connection refused" in error
    assert "--no-card" not in error  # nothing answered: not a missing card
    assert list(tmp_path.iterdir()) == []


def test_s3_wrong_credentials_fail_at_once(model: Model, tmp_path: Path) -> None:
    with MotoS3(tmp_path, auth_after=2) as strict:  # bucket and object made unchecked, then keys are checked
        client = boto3.client("s3", **_boto_arguments(strict))
        client.create_bucket(Bucket="ferry-models")
        client.put_object(Bucket="ferry-models", Key="model.joblib", Body=model.data)
        run = fetch("--url", "s3://ferry-models/model.joblib", "--sha256", model.sha256, "--no-card",
                    "--out", str(tmp_path / "out"), "--allow-http", *FAST, env=strict.aws_env())  # fmt: skip
    assert run.code == 4
    assert run.events("model_fetch_retry") == []
    error = run.failure["error"]
    assert "403 Forbidden (InvalidAccessKeyId" in error and "access denied" in error
    assert list((tmp_path / "out").iterdir()) == []


def test_s3_plain_http_endpoint_needs_allow_http(s3: MotoS3, model: Model, tmp_path: Path) -> None:
    run = fetch("--url", "s3://ferry-models/churn/v1/model.joblib", "--sha256", model.sha256, "--out",
                str(tmp_path), *FAST, env=s3.aws_env())  # fmt: skip
    assert run.code == 2
    assert s3.endpoint in run.failure["error"] and "--allow-http" in run.failure["error"]


def _boto_arguments(s3: MotoS3) -> dict[str, str]:
    env = s3.aws_env()
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "region_name": env["AWS_REGION"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }
