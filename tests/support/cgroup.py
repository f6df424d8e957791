"""A real cgroup with a CPU and a memory limit for a server under test, so the service's container
figures (ferry_container_*) include limits and throttling as in a pod with resources.limits.

cgroup v1 (one directory per controller hierarchy: cpu, cpuacct, memory) or v2 (one directory under
the root, whose subtree has the cpu and memory controllers). Needs root, as the machines running
`make test` do; the process joins it in ``join`` (a Popen ``preexec_fn``), so its children do too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

CPU_PERIOD_US = 100_000


def _mounts() -> tuple[dict[str, Path], Path | None]:
    v1: dict[str, Path] = {}
    v2 = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            v2 = Path(fields[4])
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in ("cpu", "cpuacct", "memory"):
                    v1[option] = Path(fields[4])
    return v1, v2


class Cgroup:
    def __init__(self, cpu_cores: float, memory_bytes: int) -> None:
        name = f"ferry-test-{uuid.uuid4().hex[:8]}"
        v1, v2 = _mounts()
        quota = str(int(cpu_cores * CPU_PERIOD_US))
        self.dirs: list[Path] = []
        try:
            if {"cpu", "memory"} <= v1.keys():
                for mount in dict.fromkeys(v1.values()):
                    self._make(mount / name)
                self._write(v1["cpu"] / name / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                self._write(v1["cpu"] / name / "cpu.cfs_quota_us", quota)
                self._write(v1["memory"] / name / "memory.limit_in_bytes", str(memory_bytes))
            elif v2 is not None and {"cpu", "memory"} <= set((v2 / "cgroup.controllers").read_text().split()):
                self._make(v2 / name)
                self._write(v2 / name / "cpu.max", f"{quota} {CPU_PERIOD_US}")
                self._write(v2 / name / "memory.max", str(memory_bytes))
            else:
                raise RuntimeError("no cgroup hierarchy with the cpu and memory controllers is mounted")
        except OSError as exc:
            self.remove()
            raise RuntimeError(f"cannot make a limited cgroup (root and a writable cgroup fs needed): {exc}") from exc

    def _make(self, path: Path) -> None:
        path.mkdir()
        self.dirs.append(path)

    @staticmethod
    def _write(path: Path, value: str) -> None:
        path.write_text(value)

    def join(self) -> None:
        """Move the calling process into the cgroup (its future children follow)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Remove the directories (once every process in them has exited)."""
        for directory in reversed(self.dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
