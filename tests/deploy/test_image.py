"""The container image, proven without a Docker engine: hadolint, and its exact entrypoint run here.

The test reads service/Dockerfile, rebuilds the image's /app layout in a temporary directory with the
Dockerfile's own build command for the model, then runs the runtime stage's ENTRYPOINT with its ENV
(only /app is mapped to that directory, and the port moved to a free one) and its HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "service" / "Dockerfile"


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined; only ``stage`` if given."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else None
        if stage is None or current == stage or word.upper() == "FROM":
            result.append((word.upper(), rest.strip()))
    return result


def runtime_env(app_dir: Path) -> dict[str, str]:
    env = {}
    for word, rest in instructions("runtime"):
        if word == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[key] = value.strip('"').replace("/app", str(app_dir))
    return env


def test_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_shape() -> None:
    steps = instructions()
    assert [w for w, _ in steps].count("FROM") >= 2, "multi-stage build"
    runtime = dict(instructions("runtime"))
    assert runtime["USER"].split(":")[0] not in ("0", "root")
    assert json.loads(runtime["ENTRYPOINT"]) == ["python", "-m", "ferry", "serve"], "exec form, the launcher"
    assert "HEALTHCHECK" in runtime
    build_runs = [rest for word, rest in instructions("build") if word == "RUN"]
    assert any("ferry train" in run for run in build_runs), "the default model is built into the image"


def test_image_entrypoint_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "service").symlink_to(ROOT / "service")
    train = next(rest for word, rest in instructions("build") if word == "RUN" and "ferry train" in rest)
    argv = shlex.split(train.replace("/app", str(app)))
    assignments = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    command = [a for a in argv if a not in {f"{k}={v}" for k, v in assignments.items()}]
    command[0] = sys.executable  # /opt/venv/bin/python -> this test's interpreter
    subprocess.run(command, env={**os.environ, **assignments}, check=True, capture_output=True, timeout=120)

    runtime = dict(instructions("runtime"))
    env = runtime_env(app)
    # /opt/venv/bin is this test's virtualenv; $PATH is the caller's.
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(Path(sys.executable).parent))
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    port = free_port()
    env.update(FERRY_PORT=str(port), FERRY_SERVER__GRACEFUL_TIMEOUT_S="10")
    # The container's own /tmp, not this machine's, which other runs use.
    env["FERRY_METRICS__DIR"] = env["FERRY_METRICS__DIR"].replace("/tmp", str(tmp_path), 1)
    entrypoint = json.loads(runtime["ENTRYPOINT"])
    healthcheck = json.loads(runtime["HEALTHCHECK"].split("CMD", 1)[1])
    workdir = runtime.get("WORKDIR", "/").replace("/app", str(app))
    with (tmp_path / "image.log").open("wb") as log:
        proc = subprocess.Popen(entrypoint, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(healthcheck, env=env, capture_output=True, check=False).returncode != 0:
            assert proc.poll() is None, (tmp_path / "image.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.3)
        card = json.loads((app / "models/churn/model.card.json").read_text())
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/predict", json={"record": card["example"]})
        assert r.status_code == 200, r.text
        # The launcher exec'd gunicorn: the process we started *is* the gunicorn master.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"gunicorn" in b" ".join(cmdline)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in (tmp_path / "image.log").read_text().splitlines():
        json.loads(line)


@pytest.mark.parametrize("variable", ["FERRY_MODEL__PAHT", "FERRY_PORT"])
def test_launcher_refuses_bad_settings(variable: str) -> None:
    env = {**os.environ, variable: "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "serve"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["event"] == "invalid_settings" and line["level"] == "critical"
