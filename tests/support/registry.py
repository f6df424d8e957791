"""A real OCI registry on 127.0.0.1 for a test (Debian's docker-registry, installed by `make image-tools`).

Plain HTTP: podman talks to it with ``--tls-verify=false``. Images are stored under the test's
directory and disappear with it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from support.server import free_port


class Registry:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"  # the image-name prefix: 127.0.0.1:PORT/library/python:...
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
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
        deadline = time.monotonic() + 15
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

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
