"""Containers for tests, run with podman: the built images started with a test's options, then
inspected, exec'd into, signalled, stopped, and always removed.

    with Container(SERVICE_IMAGE, publish=8000, options=["--read-only"]) as ferry:
        ferry.wait_for("/readyz", 200)
        httpx.get(ferry.url + "/livez")  # the published port, on 127.0.0.1
        exit_code = ferry.stop(timeout=50)

- Names are unique (``<prefix>-<8 hex>``) and every container carries the label
  ``io.ferry.test.session=<id of this test process>``: ``remove_session_containers()`` (run at the
  end of a session) removes what a crashed test left behind, and only that, because other sessions
  and people share podman's storage on the same machine.
- Containers are never started with ``--rm``: a removed container has no exit code and no logs to
  assert on. ``remove()`` (also ``__exit__``) is idempotent and works whether the container runs,
  has exited or never started.
- Host ports are free ports of 127.0.0.1 (``free_port``), retried when another process takes one
  between the check and podman's bind.
- podman reads the project's settings (deploy/podman/containers.conf) through ``CONTAINERS_CONF``:
  the Makefile exports it, and this module sets it for direct pytest runs.
- The images are the ones ``make image`` built: ``SERVICE_IMAGE`` and ``GATE_IMAGE`` in the
  environment (the Makefile passes its IMAGE/LOADTEST_IMAGE/TAG), with the same defaults.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from support.server import free_port

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "deploy/podman/containers.conf"))
SERVICE_IMAGE = os.environ.get("SERVICE_IMAGE", "localhost/ferry:dev")
GATE_IMAGE = os.environ.get("GATE_IMAGE", "localhost/ferry-loadtest:dev")
SESSION_LABEL = "io.ferry.test.session"
SESSION = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
# podman schedules a HEALTHCHECK with a systemd timer; without systemd it logs an error for every
# container it starts and stops. `podman healthcheck run` works either way, so where there is no
# systemd the timer is switched off (--health-interval=disable) and tests run the check themselves.
HAS_SYSTEMD = Path("/run/systemd/system").is_dir()


class PodmanError(RuntimeError):
    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"podman {' '.join(args)} -> exit {result.returncode}:\n{result.stderr.strip()[-3000:]}")
        self.result = result


def podman(
    *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` (``input`` on its stdin), output captured; raises PodmanError on failure when ``check``."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and result.returncode != 0:
        raise PodmanError(args, result)
    return result


@functools.cache
def cgroup_controllers() -> frozenset[str]:
    """The cgroup controllers podman can use here (rootless podman only has those delegated to the user)."""
    return frozenset(json.loads(podman("info", "--format", "{{json .Host.CgroupControllers}}").stdout) or [])


def image_inspect(ref: str) -> dict:
    """``podman image inspect`` of a local image; a clear error when it was not built."""
    result = podman("image", "inspect", ref, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"image {ref} is not in podman's storage: build it with `make image`")
    return json.loads(result.stdout)[0]


def run_once(image: str, *args: str, entrypoint: Sequence[str] | None = None, timeout: float = 120) -> str:
    """``podman run --rm`` of a short command; its stdout (raises PodmanError when it fails)."""
    options = ["--rm", "--label", f"{SESSION_LABEL}={SESSION}"]
    if not HAS_SYSTEMD:
        options.append("--health-interval=disable")
    if entrypoint is not None:
        options += ["--entrypoint", json.dumps(list(entrypoint))]
    return podman("run", *options, image, *args, timeout=timeout).stdout


def remove_session_containers() -> list[str]:
    """Remove every container of this test process still present; return their names."""
    listed = podman("ps", "--all", "--filter", f"label={SESSION_LABEL}={SESSION}", "--format", "{{.Names}}")
    names = listed.stdout.split()
    if names:
        podman("rm", "--force", "--time", "0", "--ignore", *names)
    return names


class Container:
    """One container of ``image``, started detached by ``start()`` (or entering a ``with`` block).

    ``args`` follow the image name (the CMD, or the ENTRYPOINT's arguments); ``entrypoint``
    replaces the ENTRYPOINT (Kubernetes' ``command``); ``publish`` is a container port made
    reachable at ``url`` on 127.0.0.1; ``options`` go to ``podman run`` as given.
    """

    def __init__(
        self,
        image: str,
        args: Sequence[str] = (),
        *,
        prefix: str = "ferry-test",
        env: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
        publish: int | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.image, self.args, self.env = image, list(args), dict(env or {})
        self.entrypoint = list(entrypoint) if entrypoint is not None else None
        self.publish, self.options = publish, list(options)
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.host_port: int | None = None
        self.started = False

    # --- life cycle ------------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> Container:
        for attempt in range(attempts):
            self.host_port = free_port() if self.publish is not None else None
            result = podman("run", *self._run_options(), self.image, *self.args, check=False)
            self.started = True
            if result.returncode == 0:
                return self
            self.remove()
            if "address already in use" not in result.stderr or attempt == attempts - 1:
                raise PodmanError(["run", self.name, self.image], result)
        raise AssertionError("unreachable")

    def _run_options(self) -> list[str]:
        options = ["--detach", "--name", self.name, "--label", f"{SESSION_LABEL}={SESSION}"]
        if not HAS_SYSTEMD:
            options.append("--health-interval=disable")
        if self.entrypoint is not None:
            options += ["--entrypoint", json.dumps(self.entrypoint)]
        if self.publish is not None:
            options += ["--publish", f"127.0.0.1:{self.host_port}:{self.publish}"]
        for key, value in self.env.items():
            options += ["--env", f"{key}={value}"]
        return options + self.options

    def stop(self, timeout: int) -> int:
        """``podman stop``: the image's stop signal (SIGTERM), SIGKILL after ``timeout`` s; the exit code."""
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        return self.exit_code()

    def signal(self, name: str = "TERM") -> None:
        podman("kill", "--signal", name, self.name)

    def wait(self, timeout: float) -> int:
        """Block until the container exits (at most ``timeout`` s); its exit code."""
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        """Remove the container whatever its state (SIGKILL if it still runs). Safe to call twice."""
        if self.started:
            podman("rm", "--force", "--time", "0", "--ignore", self.name, check=False)

    def __enter__(self) -> Container:
        return self if self.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # --- looking at it ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The published port, from the host."""
        assert self.host_port is not None, "no port published"
        return f"http://127.0.0.1:{self.host_port}"

    def inspect(self) -> dict:
        return json.loads(podman("container", "inspect", self.name).stdout)[0]

    @property
    def ip(self) -> str:
        """The container's address on podman's network: how another container reaches it."""
        return self.inspect()["NetworkSettings"]["IPAddress"]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def exit_code(self) -> int:
        return int(self.inspect()["State"]["ExitCode"])

    def logs(self) -> str:
        """What the container wrote to stdout and stderr (in that order, not interleaved)."""
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def records(self) -> list[dict]:
        """Every line of its stdout parsed as JSON (raises on the first line that is not)."""
        return [json.loads(line) for line in podman("logs", self.name).stdout.splitlines() if line]

    def exec(self, *command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the running container (as its user)."""
        return podman("exec", self.name, *command, check=check)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's HEALTHCHECK once now (``podman healthcheck run``): exit 0 when healthy."""
        return podman("healthcheck", "run", self.name, check=False)

    def wait_for(self, path: str, status: int, timeout: float = 60) -> None:
        """Poll ``url + path`` until it answers ``status``; fail early, with the logs, if the container exits."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(self.url + path, timeout=2).status_code
                if last == status:
                    return
            except httpx.HTTPError as exc:
                last = exc
            if not self.running():
                raise RuntimeError(f"{self.name} exited with {self.exit_code()}:\n{self.logs()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {path} never answered {status} (last: {last!r}):\n{self.logs()[-3000:]}")
