"""The container figures (ferry.cgroups, ferry_container_* metrics) from cgroup v1, v2 and hybrid trees
laid out in a temporary directory as the kernel lays them out (the live tier reads a real one)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from ferry import cgroups
from ferry.metrics import CONTAINER_METRICS, ContainerCollector


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def proc(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc/self with this cgroup file and cgroup mounts (root, mount point, fstype, super options)."""
    lines = [
        f"{30 + i} 23 0:{28 + i} {root} {mount} rw,relatime - {fstype} cgroup {options}"
        for i, (root, mount, fstype, options) in enumerate(mounts)
    ]
    write(tmp_path / "proc", {"cgroup": cgroup, "mountinfo": "\n".join(lines) + "\n"})
    return tmp_path / "proc"


def test_cgroup_v2_with_limits(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    write(
        fs / "kubepods/pod1/ctr",
        {
            "cpu.max": "150000 100000\n",
            "cpu.stat": "usage_usec 2500000\nnr_periods 40\nnr_throttled 10\nthrottled_usec 750000\n",
            "memory.max": "536870912\n",
            "memory.current": "300000000\n",
            "memory.stat": "anon 200000000\ninactive_file 100000000\nactive_file 1\n",
        },
    )
    paths = cgroups.locate(proc(tmp_path, "0::/kubepods/pod1/ctr\n", [("/", str(fs), "cgroup2", "rw")]))
    assert paths.v2 == fs / "kubepods/pod1/ctr" and paths.v1 is None
    assert cgroups.read(paths) == cgroups.CgroupFigures(
        cpu_usage_seconds=2.5,
        cpu_limit_cores=1.5,
        cpu_periods=40,
        cpu_throttled_periods=10,
        cpu_throttled_seconds=0.75,
        memory_usage_bytes=300000000,
        memory_working_set_bytes=200000000,
        memory_limit_bytes=536870912,
    )


def test_cgroup_v2_namespaced_without_limits(tmp_path: Path) -> None:
    """A cgroup namespace shows "/" and mounts the container's own cgroup: its files are at the mount."""
    fs = tmp_path / "fs"
    write(fs, {"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 1000000\n", "memory.max": "max\n"})
    paths = cgroups.locate(proc(tmp_path, "0::/\n", [("/", str(fs), "cgroup2", "rw")]))
    figures = cgroups.read(paths)
    assert figures.cpu_limit_cores is None and figures.memory_limit_bytes is None, "no limit: nothing to draw"
    assert figures.cpu_usage_seconds == 1.0
    assert figures.memory_usage_bytes is None and figures.cpu_periods is None, "missing files: no figure"


def test_cgroup_v1_hybrid_with_a_container_mount_root(tmp_path: Path) -> None:
    """v1 controllers (cpu and cpuacct apart, as here) win over an empty unified hierarchy; a mount
    whose root is the container's own cgroup strips that prefix from /proc/self/cgroup's path."""
    fs = tmp_path / "fs"
    write(
        fs / "cpu/ferry",
        {
            "cpu.cfs_quota_us": "200000\n",
            "cpu.cfs_period_us": "100000\n",
            "cpu.stat": "nr_periods 7\nnr_throttled 2\nthrottled_time 3000000000\n",
        },
    )
    write(fs / "cpuacct/ferry", {"cpuacct.usage": "4000000000\n"})
    write(
        fs / "memory/ferry",  # the mount's root is /docker/abc, the process's cgroup /docker/abc/ferry
        {
            "memory.limit_in_bytes": "1073741824\n",
            "memory.usage_in_bytes": "600\n",
            "memory.stat": "cache 1\ntotal_inactive_file 100\n",
        },
    )
    paths = cgroups.locate(
        proc(
            tmp_path,
            "4:memory:/docker/abc/ferry\n2:cpuacct:/ferry\n1:cpu:/ferry\n0::/\n",
            [
                ("/", str(fs / "cpu"), "cgroup", "rw,cpu"),
                ("/", str(fs / "cpuacct"), "cgroup", "rw,cpuacct"),
                ("/docker/abc", str(fs / "memory"), "cgroup", "rw,memory"),
                ("/", str(fs / "unified"), "cgroup2", "rw"),
            ],
        )
    )
    assert paths.v1 == {"cpu": fs / "cpu/ferry", "cpuacct": fs / "cpuacct/ferry", "memory": fs / "memory/ferry"}
    assert cgroups.read(paths) == cgroups.CgroupFigures(
        cpu_usage_seconds=4.0,
        cpu_limit_cores=2.0,
        cpu_periods=7,
        cpu_throttled_periods=2,
        cpu_throttled_seconds=3.0,
        memory_usage_bytes=600,
        memory_working_set_bytes=500,
        memory_limit_bytes=1073741824,
    )


def test_cgroup_v1_unlimited_has_no_limit(tmp_path: Path) -> None:
    """v1 says "no limit" with a quota of -1 and a memory limit of the page counter's maximum."""
    fs = tmp_path / "fs"
    write(fs / "cpu", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"})
    write(fs / "memory", {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "5\n"})
    figures = cgroups.read(cgroups.CgroupPaths(v1={"cpu": fs / "cpu", "memory": fs / "memory"}))
    assert figures.cpu_limit_cores is None and figures.memory_limit_bytes is None
    assert figures.memory_usage_bytes == 5


def test_the_collector_exports_what_the_cgroup_has_and_omits_the_rest(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    write(fs, {"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 1500000\nnr_periods 0\n", "memory.max": "1024\n"})
    registry = CollectorRegistry()
    registry.register(ContainerCollector(cgroups.CgroupPaths(v2=fs)))
    text = generate_latest(registry).decode()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line[0] != "#"}
    assert samples == {
        "ferry_container_cpu_usage_seconds_total": 1.5,
        "ferry_container_cpu_periods_total": 0.0,
        "ferry_container_memory_limit_bytes": 1024.0,
    }
    assert {name for name, *_ in CONTAINER_METRICS} >= {
        "ferry_container_cpu_limit_cores",
        "ferry_container_cpu_throttled_seconds",
        "ferry_container_memory_working_set_bytes",
    }


def test_the_cpu_limit_is_the_tightest_on_the_way_to_the_mount(tmp_path: Path) -> None:
    """A pod's cgroup capping its containers below their own quota caps the limit drawn; a cgroup above
    the mount point (outside what the container sees) does not count."""
    fs = tmp_path / "fs"
    write(tmp_path, {"cpu.max": "10000 100000\n"})  # above the mount: not this container's
    write(fs / "kubepods/pod1", {"cpu.max": "100000 100000\n"})
    write(fs / "kubepods/pod1/ctr", {"cpu.max": "400000 100000\n"})
    paths = cgroups.locate(proc(tmp_path, "0::/kubepods/pod1/ctr\n", [("/", str(fs), "cgroup2", "rw")]))
    assert paths.v2 == fs / "kubepods/pod1/ctr"
    assert cgroups.read(paths).cpu_limit_cores == 1.0
    assert cgroups.read(cgroups.CgroupPaths(v2=paths.v2)).cpu_limit_cores == 4.0, "no mount point: itself only"


def test_a_mount_root_is_stripped_only_as_whole_path_components(tmp_path: Path) -> None:
    """/docker/abc is not a prefix of /docker/abcd: the process is outside the mount's subtree, so its
    cgroup is not under it (and "d/x" below the mount would be some other cgroup's)."""
    fs = tmp_path / "fs"
    write(fs / "memory/d/x", {"memory.limit_in_bytes": "1\n"})
    mounts = [("/docker/abc", str(fs / "memory"), "cgroup", "rw,memory")]
    paths = cgroups.locate(proc(tmp_path, "4:memory:/docker/abcd/x\n", mounts))
    assert paths.v1 == {"memory": fs / "memory"}
