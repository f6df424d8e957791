"""The container's own CPU and memory figures, read from this process's cgroup (v2 or v1).

A pod's limits and usage are kernel facts of its cgroup; reading them here lets the service export
them itself, so per-pod CPU, throttling and memory-vs-limit charts work where Prometheus has no
cAdvisor or kube-state-metrics. Every figure is optional: a missing file (no such controller, an
unreadable hierarchy) gives ``None``, and so does "no limit" (``max`` in v2, a quota of -1 or a page
counter's maximum in v1), because an unlimited container has no limit to draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class CgroupMount:
    """One cgroup hierarchy as /proc/self/mountinfo shows it."""

    version: int  # 1 or 2
    root: str  # the cgroup path the mount shows at its mount point ("/" with a cgroup namespace)
    mount_point: Path
    controllers: frozenset[str]  # v1: the controllers of this hierarchy; v2: empty


@dataclass(frozen=True)
class CgroupPaths:
    """Where this process's cgroup directories are: the v2 one, or the v1 one per controller; and the
    mount point of each hierarchy (key "" for v2), up to which a directory's parents are its ancestors."""

    v2: Path | None = None
    v1: dict[str, Path] | None = None
    mount_points: dict[str, Path] = field(default_factory=dict)


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


def resolve(mountinfo: str, proc_cgroup: str, fs_root: Path = Path("/")) -> CgroupPaths:
    """The cgroup directories of the process whose mountinfo and /proc/<pid>/cgroup these are.

    The path in /proc/self/cgroup is relative to the hierarchy's root; a container's mount shows only
    its own subtree (mountinfo's root field), so that prefix is stripped. Where the result does not
    exist (a cgroup namespace hides the prefix differently) the mount point itself is the container's.
    ``fs_root`` prefixes the mount points (tests build a fake hierarchy under a temporary directory).
    """
    memberships = parse_proc_cgroup(proc_cgroup)
    v2: Path | None = None
    v1: dict[str, Path] = {}
    mount_points: dict[str, Path] = {}
    for mount in parse_mountinfo(mountinfo):
        # v2 is one hierarchy (membership ""); a v1 mount's super options name its controllers.
        wanted = [""] if mount.version == 2 else sorted(mount.controllers & {"cpu", "cpuacct", "memory"})
        for controller in (c for c in wanted if c in memberships):
            relative = memberships[controller]
            root = mount.root.rstrip("/")
            if root and (relative == root or relative.startswith(root + "/")):
                relative = relative[len(root) :]
            base = fs_root / str(mount.mount_point).lstrip("/")
            directory = base.joinpath(*(p for p in relative.split("/") if p not in ("", ".", "..")))
            found = directory if directory.is_dir() else base
            mount_points[controller] = base
            if controller:
                v1[controller] = found
            else:
                v2 = found
    return CgroupPaths(v2=v2, v1=v1 or None, mount_points=mount_points)


def locate(proc: Path = Path("/proc/self"), fs_root: Path = Path("/")) -> CgroupPaths:
    """This process's cgroup directories, from /proc/self/cgroup and the mounts in mountinfo."""
    return resolve(_read(proc / "mountinfo") or "", _read(proc / "cgroup") or "", fs_root)


def _ancestors(directory: Path, mount_point: Path | None) -> list[Path]:
    """The directory, then each parent up to the hierarchy's mount point (just itself without one)."""
    chain = [directory]
    if mount_point is not None and directory.is_relative_to(mount_point):
        while chain[-1] != mount_point:
            chain.append(chain[-1].parent)
    return chain


def _quota(directory: Path, version: int) -> float | None:
    """CPUs of one cgroup's CFS quota; None without a limit ("max" in v2 ``cpu.max``, -1 in v1
    ``cpu.cfs_quota_us``) or a readable one."""
    if version == 2:
        quota_text, _, period_text = (_read(directory / "cpu.max") or "").partition(" ")
        quota, period = _number(quota_text), _number(period_text)
    else:
        quota = _number(_read(directory / "cpu.cfs_quota_us"))
        period = _number(_read(directory / "cpu.cfs_period_us"))
    return quota / period if quota and quota > 0 and period and period > 0 else None


def cpu_limit(paths: CgroupPaths) -> float | None:
    """The tightest CPU quota on the process's cgroup and its ancestors, in CPUs; None when unlimited.

    A parent's quota caps all its children: a pod's cgroup may allow less than its container's own."""
    v1 = (paths.v1 or {}).get("cpu")
    candidates = [(v1, paths.mount_points.get("cpu"), 1), (paths.v2, paths.mount_points.get(""), 2)]
    limits = [
        quota
        for directory, mount_point, version in candidates
        if directory is not None
        for ancestor in _ancestors(directory, mount_point)
        if (quota := _quota(ancestor, version)) is not None
    ]
    return min(limits) if limits else None


def read(paths: CgroupPaths) -> CgroupFigures:
    """The figures of the cgroup at ``paths``: v1 controllers where mounted (a hybrid layout keeps
    them there), the v2 files otherwise."""
    v1 = paths.v1 or {}
    cpu = v1.get("cpu")
    acct = v1.get("cpuacct", cpu)
    memory = v1.get("memory")
    v2 = paths.v2
    figures: dict[str, float | None] = {"cpu_limit_cores": cpu_limit(paths)}
    if cpu is not None:
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
