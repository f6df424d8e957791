"""The CPUs this process may really use, and which one a pinned worker takes.

``os.cpu_count()`` counts the machine's CPUs, not the container's: a pod limited to 2 CPUs on a
64-core node would start 64 workers, each with its own copy of the model, and be throttled. The
usable count is the smallest of three limits: the cgroup CPU quota (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up, the tightest one on the way from this
process's cgroup to the root of the hierarchy), the affinity mask (a cpuset, e.g. the CPUs the
kubelet's static CPU manager gives a Guaranteed pod), and the machine's count. The quota is read by
``ferry.cgroups``, which also reads the container's figures for the metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from ferry import cgroups


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
    return usable_cpus(cgroups.cpu_limit(cgroups.locate()), affinity(), os.cpu_count())


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
