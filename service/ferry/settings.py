"""The one configuration object. Every field is read from a ``FERRY_*`` environment variable.

Nested groups use ``__``: ``FERRY_MODEL__PATH`` sets ``Settings().model.path``.
``docs/configuration.md`` is generated from the descriptions below (``make generate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_PATH = Path("models/churn/model.joblib")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Group):
    """gunicorn master and worker behaviour (read by ``service/gunicorn.conf.py``)."""

    timeout_s: int = Field(
        30,
        ge=5,
        le=3600,
        description="gunicorn worker heartbeat timeout: a worker silent this long is killed and "
        "replaced. A liveness guard, not a request timeout; inference never blocks the heartbeat.",
    )
    graceful_timeout_s: int = Field(
        25,
        ge=1,
        le=3600,
        description="After SIGTERM, seconds a worker gets to finish in-flight requests before it is "
        "killed. Keep below the pod's terminationGracePeriodSeconds minus the preStop sleep.",
    )
    keepalive_s: int = Field(
        75,
        ge=0,
        le=3600,
        description="Idle keep-alive timeout. Must exceed the load balancer's idle timeout "
        "(60 s on AWS ALB and ingress-nginx) or the LB reuses a closed connection and returns 502.",
    )
    max_requests: int = Field(
        0,
        ge=0,
        description="Recycle a worker after this many requests (0 = never). Bounds slow leaks.",
    )
    max_requests_jitter: int = Field(
        0,
        ge=0,
        description="Random extra requests added to max_requests so workers do not recycle together.",
    )
    backlog: int = Field(2048, ge=16, le=65535, description="Listen socket backlog.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated proxy addresses trusted for X-Forwarded-For / -Proto "
        "(use '*' behind a trusted ingress only).",
    )
    worker_tmp_dir: str | None = Field(
        None,
        description="Directory for gunicorn heartbeat files; defaults to /dev/shm when it exists "
        "(a disk-backed /tmp can stall heartbeats).",
    )


class ModelSettings(_Group):
    """Which model to serve and how to trust it."""

    path: Path = Field(
        DEFAULT_MODEL_PATH,
        description="joblib file of the model. Its card is the file beside it named "
        "'<stem>.card.json'. Relative paths are resolved from the working directory.",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Model name for a model without a card (default: the file stem). "
        "Ignored when a card names the model.",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the model file, pinned by the deployment. Checked in addition "
        "to the card's hash, before unpickling.",
    )
    load_wait_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="A worker waits up to this long for its model before it accepts connections, so a "
        "recycled or restarted worker never answers 503 beside ready siblings. A slower load continues in "
        "the background, with /readyz at 503 until it is done.",
    )
    require_card: bool = Field(
        False,
        description="Refuse to serve a model that has no card (and hence no verified hash).",
    )


class ApiSettings(_Group):
    """Request limits of the HTTP API."""

    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body accepted, in bytes; larger bodies get 413 before they are "
        "read. The chart's ingress body-size annotation follows this value.",
    )
    max_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Most records in one /api/v1/predict/batch or OIP v2 request."
    )


class InferenceSettings(_Group):
    """The executor that runs the model off the event loop, per worker."""

    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads that call the model, per worker. Total model threads = workers x threads; "
        "BLAS/OpenMP pools are pinned to 1 thread so the two never multiply.",
    )
    max_queue: int = Field(
        64,
        ge=0,
        le=10_000,
        description="Model calls allowed to wait for a thread, per worker. Beyond it requests are shed "
        "at once with 503 'overloaded' and Retry-After instead of queueing without bound.",
    )


class LoggingSettings(_Group):
    """Structured JSON logs on stdout."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum log level.")
    access_log: bool = Field(True, description="One JSON access line per request.")


class MetricsSettings(_Group):
    """Prometheus metrics (multiprocess mode)."""

    dir: Path = Field(
        Path("/tmp/ferry-metrics"),
        description="prometheus-client multiprocess directory. The launcher wipes it, exports "
        "PROMETHEUS_MULTIPROC_DIR and only then starts gunicorn. Use a per-pod emptyDir.",
    )
    process_interval_s: float = Field(
        5.0, gt=0, le=300, description="How often each worker refreshes its process_* metrics."
    )


class Settings(BaseSettings):
    """ferry service settings. Environment prefix ``FERRY_``, nested delimiter ``__``."""

    model_config = SettingsConfigDict(
        env_prefix="FERRY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    host: str = Field("0.0.0.0", description="Address gunicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port gunicorn binds to.")
    workers: int = Field(2, ge=1, le=256, description="gunicorn worker processes (one per core is a good start).")
    server: ServerSettings = Field(default_factory=ServerSettings, description=ServerSettings.__doc__)
    model: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    api: ApiSettings = Field(default_factory=ApiSettings, description=ApiSettings.__doc__)
    inference: InferenceSettings = Field(default_factory=InferenceSettings, description=InferenceSettings.__doc__)
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description=LoggingSettings.__doc__)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description=MetricsSettings.__doc__)


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """``FERRY_*`` variables that name no setting (typos would otherwise be ignored silently)."""
    known = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            known.add(f"FERRY_{name.upper()}")  # a whole group as JSON
            known.update(f"FERRY_{name.upper()}__{sub.upper()}" for sub in group.model_fields)
        else:
            known.add(f"FERRY_{name.upper()}")
    return sorted(key for key in environ if key.upper().startswith("FERRY_") and key.upper() not in known)
