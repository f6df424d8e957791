"""Worker count from the usable CPUs, and FERRY_CPU_PINNING on real gunicorn workers (read from /proc)."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ferry.cpus import affinity, this_process_cpus
from support.server import Server


def cpus_allowed(pid: int, tid: int | None = None) -> set[int]:
    """The CPUs of a process (or one of its threads) from Cpus_allowed_list, e.g. "0-1,4"."""
    status = Path(f"/proc/{pid}" + (f"/task/{tid}" if tid else "") + "/status").read_text()
    listed = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)  # type: ignore[union-attr]
    cpus: set[int] = set()
    for part in listed.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def busy(server: Server, record: dict) -> None:
    """Predictions on fresh connections, so every worker has started its inference thread."""

    def one(_: int) -> int:
        return httpx.post(server.url + "/api/v1/predict", json={"record": record}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(40))) == {200}


def wait_for_workers(server: Server, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := server.worker_pids()) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


@pytest.mark.skipif(len(affinity()) < 2, reason="pinning two workers apart needs two CPUs")
def test_pinned_workers_each_hold_one_distinct_cpu(churn_model: Path, record: dict, tmp_path: Path) -> None:
    with Server(tmp_path, churn_model, env={"FERRY_CPU_PINNING": "true"}, workers=2) as server:
        busy(server, record)
        pids = wait_for_workers(server, 2)
        held = {pid: cpus_allowed(pid) for pid in pids}
        assert all(len(cpus) == 1 for cpus in held.values()), held
        assert len(set.union(*held.values())) == 2, held
        assert cpus_allowed(server.process.pid) == set(affinity())  # type: ignore[union-attr]  # the master is not pinned
        for pid in pids:  # the threads the worker started after the fork follow it (inference thread included)
            assert len(threads(pid)) > 1
            assert {tid: cpus_allowed(pid, tid) for tid in threads(pid)} == dict.fromkeys(threads(pid), held[pid])
        # A replacement worker takes the CPU its predecessor left, not the other worker's.
        gone = pids[0]
        os.kill(gone, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (gone in (now := server.worker_pids()) or len(now) != 2):
            time.sleep(0.1)
        replacement = next(pid for pid in now if pid != pids[1])
        assert cpus_allowed(replacement) == held[gone]
        assert cpus_allowed(pids[1]) == held[pids[1]]


def test_auto_workers_are_one_per_usable_cpu_and_unpinned(churn_model: Path, record: dict, tmp_path: Path) -> None:
    with Server(tmp_path, churn_model, env={"FERRY_WORKERS": "auto"}) as server:
        busy(server, record)
        pids = wait_for_workers(server, this_process_cpus())
        assert len(pids) == this_process_cpus()
        assert all(cpus_allowed(pid) == set(affinity()) for pid in pids)
        assert f"{this_process_cpus()} workers from usable CPUs" in server.output()
