"""The launcher's metrics directory: private per launch by default, a configured one emptied (not removed).

The two-instance behaviour with real gunicorn is tests/integration/test_metrics_dir.py.
"""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest

from ferry.launcher import PRIVATE_METRICS_DIR, prepare_environment, remove_private_metrics_dir
from ferry.settings import Settings


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp's parent, for this test only
    monkeypatch.delenv("FERRY_METRICS__DIR", raising=False)
    monkeypatch.delenv(PRIVATE_METRICS_DIR, raising=False)


def test_each_launch_gets_its_own_private_directory(tmp_path: Path) -> None:
    assert Settings().metrics.dir is None
    first, second = prepare_environment(Settings()), prepare_environment(Settings())
    dirs = [Path(env["PROMETHEUS_MULTIPROC_DIR"]) for env in (first, second)]
    assert dirs[0] != dirs[1]
    for env, path in zip((first, second), dirs, strict=True):
        assert path.parent == tmp_path and path.name.startswith("ferry-metrics-")
        assert list(path.iterdir()) == [] and stat.S_IMODE(path.stat().st_mode) == 0o700
        assert env[PRIVATE_METRICS_DIR] == str(path)
    (dirs[0] / "counter_1.db").write_bytes(b"x")
    remove_private_metrics_dir(first)  # gunicorn's on_exit of the first instance
    assert not dirs[0].exists() and dirs[1].is_dir()


def test_an_empty_setting_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_METRICS__DIR", "")  # never Path(""), which is the working directory
    assert Settings().metrics.dir is None


def test_a_configured_directory_is_emptied_of_metric_files_and_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "counter_4242.db").write_bytes(b"stale counts")
    (configured / "gauge_livesum_4242.db").write_bytes(b"stale gauge")
    (configured / "README").write_text("not ours")
    monkeypatch.setenv("FERRY_METRICS__DIR", str(configured))
    # A marker inherited from an outer launch must not make this directory removable.
    monkeypatch.setenv(PRIVATE_METRICS_DIR, str(configured))
    env = prepare_environment(Settings())
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(configured) and PRIVATE_METRICS_DIR not in env
    assert sorted(p.name for p in configured.iterdir()) == ["README"]
    remove_private_metrics_dir(env)
    assert configured.is_dir()
    # A configured directory that does not exist yet is created.
    monkeypatch.setenv("FERRY_METRICS__DIR", str(tmp_path / "new" / "metrics"))
    assert Path(prepare_environment(Settings())["PROMETHEUS_MULTIPROC_DIR"]).is_dir()


def test_only_the_directory_the_marker_names_is_removed(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    remove_private_metrics_dir({PRIVATE_METRICS_DIR: str(other), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "x")})
    remove_private_metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(other)})
    assert other.is_dir()
