"""Start the real service (``python -m ferry serve`` -> gunicorn) on 127.0.0.1 for a test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until ``url`` answers 200 (a Prometheus-style ``/-/ready``); fails with the log's tail if the
    process exits or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


class Server:
    """One gunicorn master with its workers; output captured to a file for assertions."""

    def __init__(
        self,
        workdir: Path,
        model_path: Path,
        env: dict[str, str] | None = None,
        workers: int = 2,
        app: str | None = None,
        pythonpath: list[Path] | None = None,
        command: str = "serve",
        preexec_fn: Callable[[], None] | None = None,
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        self.env = {
            **base,
            "FERRY_HOST": "127.0.0.1",
            "FERRY_PORT": str(self.port),
            "FERRY_WORKERS": str(workers),
            "FERRY_MODEL__PATH": str(model_path),
            "FERRY_METRICS__DIR": str(workdir / "metrics"),
            "FERRY_SERVER__GRACEFUL_TIMEOUT_S": "10",
            "FERRY_JOBS__SQLITE_PATH": str(workdir / "jobs.sqlite3"),  # never the shared default
            # test-only model classes (tests/support/models.py) must be importable to unpickle
            "PYTHONPATH": os.pathsep.join(str(p) for p in [SUPPORT.parent, REPO / "service", *(pythonpath or [])]),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.argv = [sys.executable, "-m", "ferry", command, *(["--app", app] if app else [])]
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. joining a cgroup)

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Server:
        log = self.log_path.open("ab")
        # A session of its own: on failure the whole process group goes, workers included.
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=self.preexec_fn,
        )
        log.close()
        try:
            self.wait_for("/livez", 200, timeout)
            if wait_ready:
                self.wait_for("/readyz", 200, timeout)
        except BaseException:
            self.kill_all()
            raise
        return self

    def wait_for(self, path: str, status: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.failure_report()}")
            try:
                last = httpx.get(self.url + path, timeout=2).status_code
                if last == status:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"{path} never answered {status} (last: {last}):\n{self.failure_report()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the master; return its exit status (raises if it does not exit in time)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise
        return self.process.returncode

    def wait_exit(self, timeout: float) -> int:
        """Wait for a master already signalled to exit; kill the group if it does not in time."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise

    def kill_all(self) -> None:
        """SIGKILL the master and its workers (a killed master cannot stop its workers)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def failure_report(self) -> str:
        """The lines that carry a stack trace, in full, then the end of the output: a failed start's
        cause is often far above the shutdown lines that follow it."""
        lines = self.output().splitlines()
        traces = [line for line in lines if '"exception"' in line or "Traceback" in line]
        return "\n".join([*traces[:5], "...", *lines[-25:]])

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict]:
        """Every output line parsed as JSON (raises on the first line that is not)."""
        return [json.loads(line) for line in self.output().splitlines() if line]

    def records_when(self, ready: Callable[[list[dict]], bool], timeout: float = 5.0) -> list[dict]:
        """The records once ``ready(records)`` holds, or as they are after ``timeout``: a worker writes a
        request's access line just after the answer is sent, so a client can see the answer first."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if ready(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def requests(self, at_least: int = 1, **fields: object) -> list[dict]:
        """Access lines (``event: request``) whose fields include ``fields``, waiting for ``at_least``."""

        def matching(records: list[dict]) -> list[dict]:
            return [r for r in records if r.get("event") == "request" and all(r.get(k) == v for k, v in fields.items())]

        return matching(self.records_when(lambda records: len(matching(records)) >= at_least))

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def __enter__(self) -> Server:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
