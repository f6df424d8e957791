"""The CPUs this process may really use, and which one a pinned worker takes.

``os.cpu_count()`` counts the machine's CPUs, not the container's: a pod limited to 2 CPUs on a
64-core node would start 64 workers, each with its own copy of the model, and be throttled. The
usable count is the smallest of three limits: the cgroup CPU quota (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up, the tightest one on the way from this
process's cgroup to the root of the hierarchy), the affinity mask (a cpuset, e.g. the CPUs the
kubelet's static CPU manager gives a Guaranteed pod), and the machine's count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup hierarchy as /proc/self/mountinfo shows it."""

    version: int  # 1 or 2
    root: str  # the cgroup path the mount shows at its mount point ("/" with a cgroup namespace)
    mount_point: Path
    controllers: frozenset[str]  # v1: the controllers of this hierarchy; v2: empty


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts of a mountinfo file (proc(5): fields, ' - ', fstype, source, options)."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        fstype, options = after[0], after[2]
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, fields[3], Path(fields[4]), frozenset()))
        elif fstype == "cgroup":
            mounts.append(CgroupMount(1, fields[3], Path(fields[4]), frozenset(options.split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup: the cgroup path by controller; the v2 (unified) one under the key ""."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _quota_v2(directory: Path) -> float | None:
    """CPUs of a v2 ``cpu.max`` ("max 100000" or "<quota> <period>"); None without a limit."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or int(period) <= 0:
        return None
    return int(quota) / int(period)


def _quota_v1(directory: Path) -> float | None:
    """CPUs of a v1 CFS quota (``cpu.cfs_quota_us`` -1 is no limit); None without a limit."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _directories(mount: CgroupMount, cgroup_path: str, fs_root: Path) -> list[Path]:
    """The process's cgroup directory under the mount, then each parent up to the mount point."""
    relative = cgroup_path
    if mount.root != "/" and (relative == mount.root or relative.startswith(mount.root.rstrip("/") + "/")):
        relative = relative[len(mount.root) :]
    base = fs_root / str(mount.mount_point).lstrip("/")
    parts = [p for p in relative.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_cpu_limit(mountinfo: str, proc_cgroup: str, fs_root: Path = Path("/")) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in CPUs; None when unlimited.

    ``fs_root`` prefixes the mount points (tests build a fake hierarchy under a temporary directory).
    """
    paths = parse_proc_cgroup(proc_cgroup)
    limits: list[float] = []
    for mount in parse_mountinfo(mountinfo):
        if mount.version == 2 and "" in paths:
            limits += [q for d in _directories(mount, paths[""], fs_root) if (q := _quota_v2(d)) is not None]
        elif mount.version == 1 and "cpu" in mount.controllers and "cpu" in paths:
            limits += [q for d in _directories(mount, paths["cpu"], fs_root) if (q := _quota_v1(d)) is not None]
    return min(limits) if limits else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def affinity() -> list[int]:
    """The CPUs this process may run on, in order (all of them where affinity is not supported)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def usable_cpus(quota: float | None, allowed: Sequence[int], machine: int | None) -> int:
    """Smallest of ceil(cgroup quota), the affinity set's size and the machine's count; at least 1."""
    counts = [len(allowed), machine or len(allowed) or 1]
    if quota is not None:
        counts.append(math.ceil(quota))
    return max(1, min(counts))


def this_process_cpus() -> int:
    """``usable_cpus`` of this process: its cgroups (/proc/self), its affinity mask, ``os.cpu_count()``."""
    quota = cgroup_cpu_limit(_read(Path("/proc/self/mountinfo")), _read(Path("/proc/self/cgroup")))
    return usable_cpus(quota, affinity(), os.cpu_count())


def assign_cpu(allowed: Sequence[int], taken: Iterable[int]) -> int:
    """The CPU a new pinned worker takes: of the allowed ones, the one fewest live workers hold
    (the lowest number on a tie), so workers spread one per CPU and a replaced worker takes the CPU
    its predecessor left."""
    if not allowed:
        raise ValueError("no CPU to pin to")
    load = dict.fromkeys(allowed, 0)
    for cpu in taken:
        if cpu in load:
            load[cpu] += 1
    return min(allowed, key=lambda cpu: (load[cpu], cpu))
