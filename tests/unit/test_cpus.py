"""How many workers the machine's CPUs allow, read from fake cgroup hierarchies, and which CPU a pinned worker takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.cgroups import cpu_limit, parse_mountinfo, resolve
from ferry.cpus import assign_cpu, usable_cpus
from ferry.settings import Settings

# mountinfo lines as a container sees them (optional fields such as "shared:1" before the " - ").
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
)


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def cgroup_cpu_limit(mountinfo: str, proc_cgroup: str, fs_root: Path) -> float | None:
    """The CPU limit ferry.cgroups finds for a process with this mountinfo and /proc/self/cgroup."""
    return cpu_limit(resolve(mountinfo, proc_cgroup, fs_root))


def test_v2_quota_is_read_from_the_process_cgroup(tmp_path: Path) -> None:
    write(tmp_path, "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(V2_MOUNT, "0::/kubepods/pod1/ctr\n", tmp_path) == 1.5
    assert usable_cpus(1.5, allowed=range(64), machine=64) == 2  # rounded up


def test_v2_without_a_limit_is_the_affinity_or_machine_count(tmp_path: Path) -> None:
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(V2_MOUNT, "0::/\n", tmp_path) is None
    assert usable_cpus(None, allowed=[0, 1, 2], machine=8) == 3
    assert usable_cpus(None, allowed=range(8), machine=8) == 8


def test_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    # The pod's cgroup caps all its containers at 1 CPU although the container's own limit is 4.
    write(tmp_path, "/sys/fs/cgroup/kubepods/pod1/cpu.max", "100000 100000\n")
    write(tmp_path, "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "400000 100000\n")
    assert cgroup_cpu_limit(V2_MOUNT, "0::/kubepods/pod1/ctr\n", tmp_path) == 1.0


def test_v1_cfs_quota_and_period(tmp_path: Path) -> None:
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    proc = "12:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cgroup_cpu_limit(V1_MOUNTS, proc, tmp_path) == 2.5
    assert usable_cpus(2.5, allowed=range(16), machine=16) == 3


def test_v1_unlimited_quota_is_minus_one(tmp_path: Path) -> None:
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(V1_MOUNTS, "4:cpu,cpuacct:/\n", tmp_path) is None


def test_v1_mount_whose_root_is_the_container_cgroup(tmp_path: Path) -> None:
    # Without a cgroup namespace the mount shows the container's cgroup at its mount point, while
    # /proc/self/cgroup names the full path: the quota file is at the mount point itself.
    mounts = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(mounts, "4:cpu,cpuacct:/docker/abc\n", tmp_path) == 1.0


def test_hybrid_layout_takes_limits_from_both_hierarchies(tmp_path: Path) -> None:
    hybrid = V1_MOUNTS + V2_MOUNT.replace("/sys/fs/cgroup ", "/sys/fs/cgroup/unified ")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us", "300000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "/sys/fs/cgroup/unified/a/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(hybrid, "4:cpu,cpuacct:/a\n0::/a\n", tmp_path) == 3.0
    assert [m.version for m in parse_mountinfo(hybrid)] == [1, 1, 2]


def test_missing_or_garbled_files_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(V2_MOUNT, "0::/x\n", tmp_path) is None
    write(tmp_path, "/sys/fs/cgroup/x/cpu.max", "nonsense\n")
    assert cgroup_cpu_limit(V2_MOUNT, "0::/x\n", tmp_path) is None
    assert cgroup_cpu_limit("", "", tmp_path) is None


def test_at_least_one_and_never_more_than_the_machine() -> None:
    assert usable_cpus(0.1, allowed=[3], machine=4) == 1
    assert usable_cpus(None, allowed=[], machine=None) == 1
    assert usable_cpus(32.0, allowed=range(8), machine=8) == 8


@pytest.mark.parametrize(
    ("allowed", "taken", "expected"),
    [
        ([0, 1], [], 0),
        ([0, 1], [0], 1),
        ([2, 5, 7], [2, 5], 7),  # a cpuset need not start at 0 nor be contiguous
        ([0, 1], [0, 1], 0),  # more workers than CPUs: they share, evenly
        ([0, 1], [1, 0, 0], 1),
        ([0, 1, 2], [0, 2], 1),  # a replaced worker takes the CPU its predecessor left
        ([4, 5], [0, 1], 4),  # CPUs outside the set (another launch's) do not count
    ],
)
def test_a_new_worker_takes_the_least_held_cpu(allowed: list[int], taken: list[int], expected: int) -> None:
    assert assign_cpu(allowed, taken) == expected


def test_assign_needs_a_cpu() -> None:
    with pytest.raises(ValueError, match="no CPU"):
        assign_cpu([], [])


@pytest.mark.parametrize(("value", "expected"), [("auto", 0), ("AUTO", 0), ("0", 0), ("3", 3)])
def test_workers_setting_accepts_auto(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("FERRY_WORKERS", value)
    assert Settings().workers == expected


def test_workers_and_pinning_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_WORKERS", raising=False)
    monkeypatch.delenv("FERRY_CPU_PINNING", raising=False)
    assert (Settings().workers, Settings().cpu_pinning) == (0, False)
