"""moto's server mode as a real S3-compatible endpoint (on 127.0.0.1 unless told otherwise), in a
process of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.server import free_port

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAFERRYTESTS000001"
SECRET_ACCESS_KEY = "ferry-tests-secret-access-key"


class MotoS3:
    """``auth_after``: moto accepts that many requests without checking credentials (to set up the
    bucket), then checks every request against its IAM, where no key exists: a real 403."""

    def __init__(self, workdir: Path, auth_after: int | None = None, host: str = "127.0.0.1") -> None:
        """``host``: the address to listen on, e.g. a podman network's gateway for pods to reach."""
        self.host, self.port = host, free_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.log_path = workdir / f"moto-{self.port}.log"
        self.env = {**os.environ, "MOTO_PORT": str(self.port)}
        if auth_after is not None:
            self.env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoS3:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"moto did not listen on {self.endpoint}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def aws_env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS_* variables pointing at this server (what a pod gets from a Secret)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            **overrides,
        }

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
