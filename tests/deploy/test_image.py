"""The launcher the images' entrypoint runs refuses bad settings (hadolint of the Dockerfiles runs in
`make lint`).

The built images themselves run in the image tier (tests/image/), which proves what this file used
to approximate with processes: the entrypoint serves, the HEALTHCHECK passes, gunicorn is PID 1 and
exits 0 on SIGTERM, the user is not root, the default model is in the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("variable", ["FERRY_MODEL__PAHT", "FERRY_PORT"])
def test_launcher_refuses_bad_settings(variable: str) -> None:
    env = {**os.environ, variable: "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "serve"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["event"] == "invalid_settings" and line["level"] == "critical"
