"""A real OCI registry on 127.0.0.1 (Debian's docker-registry, installed by `make image-tools`).

Plain HTTP on a free port, with its own config and storage directory (nothing of the machine's
registry service is used): podman talks to it with ``--tls-verify=false``, helm with ``--plain-http``.
Used by ``make release-local`` (scripts/release.py) and by the tests (tests/support/registry.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRegistry:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"  # the image-name prefix: 127.0.0.1:PORT/library/python:...
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> LocalRegistry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed: run `make image-tools`")
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.workdir / 'registry.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
