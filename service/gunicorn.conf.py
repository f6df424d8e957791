"""gunicorn configuration for ferry, driven by the same FERRY_* settings as the app.

Started by ``ferry serve`` (``make run`` and the container entrypoint), which has already prepared an
empty metrics directory and exported PROMETHEUS_MULTIPROC_DIR.
"""

import os

from ferry.cpus import affinity, assign_cpu, this_process_cpus
from ferry.launcher import remove_private_metrics_dir
from ferry.logging import configure_logging, dict_config
from ferry.metrics import mark_worker_dead
from ferry.settings import Settings

_settings = Settings()
configure_logging(_settings.logging.level)  # the master's own lines are JSON from the first one

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers or this_process_cpus()  # 0 ("auto"): one per CPU the container may use
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


# FERRY_CPU_PINNING: the master picks each new worker's CPU (it knows which live worker holds which),
# the worker pins itself right after the fork, while it is still single-threaded: every thread it
# starts later (the inference thread, native thread pools) inherits the one-CPU mask.
_allowed_cpus = affinity()


def when_ready(server):
    """Say how many workers and why: with FERRY_WORKERS=auto the count depends on the container."""
    source = "FERRY_WORKERS" if _settings.workers else "usable CPUs (cgroup quota, affinity, machine)"
    pinning = f", each pinned to one of CPUs {_allowed_cpus}" if _settings.cpu_pinning else ""
    server.log.info("%s workers from %s%s", server.num_workers, source, pinning)


def pre_fork(server, worker):
    if _settings.cpu_pinning:
        worker.ferry_cpu = assign_cpu(_allowed_cpus, (getattr(w, "ferry_cpu", -1) for w in server.WORKERS.values()))


def post_fork(server, worker):
    if _settings.cpu_pinning:
        os.sched_setaffinity(0, {worker.ferry_cpu})
        server.log.info("worker %s pinned to CPU %s", worker.pid, worker.ferry_cpu)


def child_exit(server, worker):
    """Remove a dead worker's live gauges so in-flight and worker counts stay true."""
    mark_worker_dead(worker.pid)


def on_exit(server):
    """Remove the launch's private metrics directory (the launcher cannot: it exec'd gunicorn). Not while
    a USR2 upgrade pairs this master with another one that uses the same directory: gunicorn's own rule
    for its sockets. A master killed outright leaves it behind, unused: the next launch makes a new one."""
    if server.reexec_pid == server.master_pid == 0:
        remove_private_metrics_dir(os.environ)
