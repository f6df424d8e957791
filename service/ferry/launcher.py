"""``ferry serve``: prepare the process environment, then become gunicorn.

The same command runs under ``make run`` and as the container entrypoint. It execs gunicorn (no
wrapper process stays behind), so gunicorn is PID 1 in the container and receives SIGTERM itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

import ferry
from ferry.logging import configure_logging, get_logger
from ferry.settings import Settings, timeout_chain_warnings, unknown_variables

GUNICORN_CONF = Path(ferry.__file__).resolve().parent.parent / "gunicorn.conf.py"
# Native thread pools default to one thread per core in *every* worker; pin them to 1 so that
# workers x inference threads is the whole CPU budget. A value the operator set wins.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def reset_metrics_dir(path: Path) -> None:
    """Empty the multiprocess directory: stale files from a previous run would resurrect old counts."""
    if path.exists():
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    path.mkdir(parents=True, exist_ok=True)


def prepare_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    reset_metrics_dir(settings.metrics.dir)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics.dir)
    for name in THREAD_ENV:
        env.setdefault(name, "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


DEFAULT_APP = "ferry.main:create_app()"
WORKER_APP = "ferry.main:create_worker_app()"


def gunicorn_argv(app: str = DEFAULT_APP) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), app]


def load_settings() -> Settings:
    """Settings from the environment; a bad or unknown FERRY_* variable stops the launch here,
    with one JSON log line naming it, and exit status 2."""
    unknown = unknown_variables(dict(os.environ))
    problem: dict[str, object] | None = None
    if unknown:
        problem = {"unknown": unknown, "hint": "see docs/configuration.md"}
    else:
        try:
            return Settings()
        except ValidationError as exc:
            problem = {
                "errors": [{"setting": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            }
    configure_logging()
    get_logger("ferry.launcher").critical("invalid_settings", **problem)
    raise SystemExit(2)


def serve(app: str = DEFAULT_APP) -> None:
    settings = load_settings()
    for warning in timeout_chain_warnings(settings):
        configure_logging()
        get_logger("ferry.launcher").warning("timeout_chain", problem=warning)
    env = prepare_environment(settings)
    argv = gunicorn_argv(app)
    os.execve(argv[0], argv, env)
