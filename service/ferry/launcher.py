"""``ferry serve``: prepare the process environment, then become gunicorn.

The same command runs under ``make run`` and as the container entrypoint. It execs gunicorn (no
wrapper process stays behind), so gunicorn is PID 1 in the container and receives SIGTERM itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

import ferry
from ferry.auth import authenticator_for
from ferry.logging import configure_logging, get_logger
from ferry.settings import Settings, timeout_chain_warnings, unknown_variables

GUNICORN_CONF = Path(ferry.__file__).resolve().parent.parent / "gunicorn.conf.py"
# Native thread pools default to one thread per core in *every* worker; pin them to 1 so that
# workers x inference threads is the whole CPU budget. A value the operator set wins.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Names the metrics directory this launch created (so gunicorn's on_exit may remove it). Not FERRY_*:
# it is no setting, and must never be mistaken for a directory the operator configured.
PRIVATE_METRICS_DIR = "_FERRY_PRIVATE_METRICS_DIR"


def reset_metrics_dir(path: Path) -> None:
    """Empty the configured multiprocess directory of prometheus-client's files (``*.db``) and ferry's
    exemplar files (``exemplars_*.json``): stale files from a previous run would resurrect old counts and
    old trace ids. Nothing else in it is touched."""
    path.mkdir(parents=True, exist_ok=True)
    # The exemplar pattern is ferry.metrics.EXEMPLAR_FILE_PREFIX, not imported: the launcher execs
    # gunicorn and must not import prometheus_client before PROMETHEUS_MULTIPROC_DIR is set.
    for pattern in ("*.db", "exemplars_*.json"):
        for entry in path.glob(pattern):
            entry.unlink()


def metrics_dir(settings: Settings, env: dict[str, str]) -> Path:
    """The configured directory, emptied; or, by default, a fresh private one for this launch only, so
    two instances on one machine never share (or wipe) each other's files."""
    env.pop(PRIVATE_METRICS_DIR, None)
    if settings.metrics.dir is not None:
        reset_metrics_dir(settings.metrics.dir)
        return settings.metrics.dir
    path = Path(tempfile.mkdtemp(prefix="ferry-metrics-"))
    env[PRIVATE_METRICS_DIR] = str(path)
    return path


def remove_private_metrics_dir(environ: Mapping[str, str]) -> None:
    """gunicorn's on_exit: remove the directory the launcher created for this launch (never a configured one)."""
    path = environ.get(PRIVATE_METRICS_DIR)
    if path and path == environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(path, ignore_errors=True)


def prepare_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(settings, env))
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
            settings = Settings()
        except ValidationError as exc:
            problem = {
                "errors": [{"setting": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            }
        else:
            try:
                authenticator_for(settings.auth)  # an unreadable or invalid API key file stops the launch too
                return settings
            except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                problem = {"errors": [{"setting": "auth.api_keys_file", "message": message}]}
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
