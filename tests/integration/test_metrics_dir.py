"""Two `ferry serve` instances on one machine, both with the default metrics directory (as two
`make run` on different ports), each count only their own requests, and clean up after themselves."""

from __future__ import annotations

from pathlib import Path

import httpx

from support.metrics import counter, scrape
from support.server import Server

PREDICT = {"route": "/api/v1/predict", "method": "POST", "status_class": "2xx"}


def default_metrics_dir(workdir: Path, model: Path, tmpdir: Path) -> Server:
    # Both launches create their directory in the same temporary directory, like /tmp on a laptop.
    server = Server(workdir, model, env={"TMPDIR": str(tmpdir)})
    del server.env["FERRY_METRICS__DIR"]  # the default, not the explicit directory tests usually give
    return server


def predict(server: Server, record: dict, n: int) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(n):
            assert client.post("/api/v1/predict", json={"record": record}).status_code == 200


def predictions_counted(server: Server) -> set[float]:
    """The predict counter as several scrapes see it (each may be answered by another worker)."""
    return {counter(scrape(server), "ferry_http_requests_total", **PREDICT) for _ in range(4)}


def multiproc_dir(server: Server) -> Path:
    assert server.process is not None  # the launcher's pid, which became the gunicorn master
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    return Path(dict(v.decode().split("=", 1) for v in environ if b"=" in v)["PROMETHEUS_MULTIPROC_DIR"])


def test_two_instances_keep_their_own_metrics(churn_model: Path, record: dict, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    first = default_metrics_dir(tmp_path / "first", churn_model, tmpdir).start()
    second = default_metrics_dir(tmp_path / "second", churn_model, tmpdir)
    try:
        predict(first, record, 5)
        assert predictions_counted(first) == {5}
        second.start()  # a second launch must not wipe the first one's files
        assert predictions_counted(first) == {5}
        assert predictions_counted(second) == {0}
        predict(second, record, 3)
        predict(first, record, 2)
        assert predictions_counted(first) == {7}
        assert predictions_counted(second) == {3}

        dirs = multiproc_dir(first), multiproc_dir(second)
        assert dirs[0] != dirs[1]
        assert all(d.parent == tmpdir and d.name.startswith("ferry-metrics-") and list(d.glob("*.db")) for d in dirs)

        assert first.stop() == 0
        assert not dirs[0].exists() and dirs[1].is_dir()
        assert predictions_counted(second) == {3}
    finally:
        for server in (first, second):
            if server.process is not None and server.process.poll() is None:
                assert server.stop() == 0
    assert list(tmpdir.glob("ferry-metrics-*")) == [], "gunicorn's on_exit removes each private directory"
