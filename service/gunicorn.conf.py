"""gunicorn configuration for ferry, driven by the same FERRY_* settings as the app.

Started by ``ferry serve`` (``make run`` and the container entrypoint), which has already wiped the
metrics directory and exported PROMETHEUS_MULTIPROC_DIR.
"""

import os

from ferry.logging import configure_logging, dict_config
from ferry.metrics import mark_worker_dead
from ferry.settings import Settings

_settings = Settings()
configure_logging(_settings.logging.level)  # the master's own lines are JSON from the first one

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "ferry.worker.FerryWorker"
timeout = _settings.server.timeout_s
graceful_timeout = _settings.server.graceful_timeout_s
keepalive = _settings.server.keepalive_s
max_requests = _settings.server.max_requests
max_requests_jitter = _settings.server.max_requests_jitter
backlog = _settings.server.backlog
forwarded_allow_ips = _settings.server.forwarded_allow_ips
worker_tmp_dir = _settings.server.worker_tmp_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
preload_app = False  # each worker loads (and verifies) the model itself, after fork
proc_name = "ferry"
# gunicorn 24+ opens a runtime control socket under $HOME; ferry does not use it, and a
# read-only root filesystem has no place for it.
control_socket_disable = True

accesslog = None  # ferry writes one JSON access line per request itself
errorlog = "-"
loglevel = _settings.logging.level.lower()
logconfig_dict = dict_config(_settings.logging.level)


def child_exit(server, worker):
    """Remove a dead worker's live gauges so in-flight and worker counts stay true."""
    mark_worker_dead(worker.pid)
