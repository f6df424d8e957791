"""The container's own CPU and memory figures, read from this process's cgroup (v2 or v1).

A pod's limits and usage are kernel facts of its cgroup; reading them here lets the service export
them itself, so per-pod CPU, throttling and memory-vs-limit charts work where Prometheus has no
cAdvisor or kube-state-metrics. Every figure is optional: a missing file (no such controller, an
unreadable hierarchy) gives ``None``, and so does "no limit" (``max`` in v2, a quota of -1 or a page
counter's maximum in v1), because an unlimited container has no limit to draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# cgroup v1 reports "no memory limit" as the largest page-aligned signed 64-bit value; anything at or
# above 2^62 is that (no real limit is 4 EiB).
V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class CgroupFigures:
    """One reading of the container's cgroup. Times in seconds, sizes in bytes; None: not available."""

    cpu_usage_seconds: float | None = None
    cpu_limit_cores: float | None = None
    cpu_periods: float | None = None
    cpu_throttled_periods: float | None = None
    cpu_throttled_seconds: float | None = None
    memory_usage_bytes: float | None = None
    memory_working_set_bytes: float | None = None
    memory_limit_bytes: float | None = None


@dataclass(frozen=True)
class CgroupPaths:
    """Where this process's cgroup directories are: the v2 one, or the v1 one per controller."""

    v2: Path | None = None
    v1: dict[str, Path] | None = None


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _keyed(text: str | None) -> dict[str, float]:
    """A flat-keyed file (cpu.stat, memory.stat): "name value" per line."""
    out: dict[str, float] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        number = _number(value)
        if number is not None:
            out[key] = number
    return out


def locate(proc: Path = Path("/proc/self")) -> CgroupPaths:
    """This process's cgroup directories, from /proc/self/cgroup and the mounts in mountinfo.

    The path in /proc/self/cgroup is relative to the hierarchy's root; a container's mount shows only
    its own subtree (mountinfo's root field), so that prefix is stripped. Where the result does not
    exist (a cgroup namespace hides the prefix differently) the mount point itself is the container's.
    """
    memberships: dict[str, str] = {}
    for line in (_read(proc / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            memberships[controller] = path
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in (_read(proc / "mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, mount = fields[3], Path(fields[4])
        # v2 is one hierarchy (membership ""); a v1 mount's super options name its controllers.
        v1_controllers = [o for o in tail[2].split(",") if o in ("cpu", "cpuacct", "memory")]
        wanted = [""] if tail[0] == "cgroup2" else v1_controllers
        for controller in wanted:
            if controller not in memberships:
                continue
            path = memberships[controller]
            relative = path[len(root) :] if root != "/" and path.startswith(root) else path
            directory = mount / relative.lstrip("/")
            found = directory if directory.is_dir() else mount
            if controller:
                v1[controller] = found
            else:
                v2 = found
    return CgroupPaths(v2=v2, v1=v1 or None)


def read(paths: CgroupPaths) -> CgroupFigures:
    """The figures of the cgroup at ``paths``: v1 controllers where mounted (a hybrid layout keeps
    them there), the v2 files otherwise."""
    v1 = paths.v1 or {}
    cpu = v1.get("cpu")
    acct = v1.get("cpuacct", cpu)
    memory = v1.get("memory")
    v2 = paths.v2
    figures: dict[str, float | None] = {}
    if cpu is not None:
        quota = _number(_read(cpu / "cpu.cfs_quota_us"))
        period = _number(_read(cpu / "cpu.cfs_period_us"))
        figures["cpu_limit_cores"] = quota / period if quota and quota > 0 and period else None
        stat = _keyed(_read(cpu / "cpu.stat"))
        figures["cpu_periods"] = stat.get("nr_periods")
        figures["cpu_throttled_periods"] = stat.get("nr_throttled")
        throttled = stat.get("throttled_time")
        figures["cpu_throttled_seconds"] = throttled / 1e9 if throttled is not None else None
    if acct is not None:
        usage = _number(_read(acct / "cpuacct.usage"))
        figures["cpu_usage_seconds"] = usage / 1e9 if usage is not None else None
    if memory is not None:
        limit = _number(_read(memory / "memory.limit_in_bytes"))
        figures["memory_limit_bytes"] = limit if limit is not None and limit < V1_UNLIMITED else None
        usage = _number(_read(memory / "memory.usage_in_bytes"))
        figures["memory_usage_bytes"] = usage
        inactive = _keyed(_read(memory / "memory.stat")).get("total_inactive_file")
        figures["memory_working_set_bytes"] = _working_set(usage, inactive)
    if v2 is not None and cpu is None:
        quota_text, _, period_text = (_read(v2 / "cpu.max") or "").partition(" ")
        quota, period = _number(quota_text), _number(period_text)
        figures["cpu_limit_cores"] = quota / period if quota and period else None  # "max": no limit
        stat = _keyed(_read(v2 / "cpu.stat"))
        figures["cpu_periods"] = stat.get("nr_periods")
        figures["cpu_throttled_periods"] = stat.get("nr_throttled")
        throttled = stat.get("throttled_usec")
        figures["cpu_throttled_seconds"] = throttled / 1e6 if throttled is not None else None
    if v2 is not None and acct is None:
        usage = _keyed(_read(v2 / "cpu.stat")).get("usage_usec")
        figures["cpu_usage_seconds"] = usage / 1e6 if usage is not None else None
    if v2 is not None and memory is None:
        figures["memory_limit_bytes"] = _number(_read(v2 / "memory.max"))  # "max": None
        usage = _number(_read(v2 / "memory.current"))
        figures["memory_usage_bytes"] = usage
        inactive = _keyed(_read(v2 / "memory.stat")).get("inactive_file")
        figures["memory_working_set_bytes"] = _working_set(usage, inactive)
    return CgroupFigures(**figures)


def _working_set(usage: float | None, inactive_file: float | None) -> float | None:
    """Usage less the inactive page cache the kernel reclaims first: what the kubelet evicts on and
    what cAdvisor calls the working set."""
    if usage is None:
        return None
    return max(0.0, usage - (inactive_file or 0.0))
