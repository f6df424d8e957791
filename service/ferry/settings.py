"""The one configuration object. Every field is read from a ``FERRY_*`` environment variable.

Nested groups use ``__``: ``FERRY_MODEL__PATH`` sets ``Settings().model.path``.
``docs/configuration.md`` is generated from the descriptions below (``make generate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_PATH = Path("models/churn/model.joblib")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Group):
    """gunicorn master and worker behaviour (read by ``service/gunicorn.conf.py``)."""

    timeout_s: int = Field(
        60,
        ge=5,
        le=3600,
        description="gunicorn worker heartbeat timeout: a worker silent this long is killed and "
        "replaced. A liveness guard, not a request timeout; inference never blocks the heartbeat.",
    )
    graceful_timeout_s: int = Field(
        35,
        ge=1,
        le=3600,
        description="After SIGTERM, seconds a worker gets to finish in-flight requests before it is "
        "killed. Keep it above deadline.max_s + drain_grace_s (a request may legitimately run that long) "
        "and below the pod's terminationGracePeriodSeconds minus the preStop sleep.",
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
    drain_grace_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="After SIGTERM, how long idle keep-alive connections stay open so a request already on "
        "its way is answered (with Connection: close) instead of meeting a closed socket.",
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
        True,
        description="Refuse to unpickle a model that has no card (and hence no verified hash): unpickling runs "
        "any code the file holds. Set false only for a file you trust, ideally with model.sha256 pinned.",
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
    max_decompressed_bytes: int | None = Field(
        None,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest size a gzip or deflate request body (Content-Encoding) may inflate to, in bytes; "
        "beyond it 413 decompressed_too_large, found while inflating (a small compressed body cannot make the "
        "server hold more). Unset: the route's own body limit (api.max_body_bytes; stream.max_body_bytes for "
        "the stream route).",
    )
    max_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Most records in one /api/v1/predict/batch or OIP v2 request."
    )
    docs_enabled: bool = Field(
        True,
        description="Serve the interactive docs (/docs) and the OpenAPI document (/openapi.json). On for local "
        "runs; turn off on an internet-facing deployment that does not publish its API description.",
    )
    lean_path: bool = Field(
        True,
        description="Serve POST /api/v1/predict, /api/v1/predict/batch and "
        "/v2/models/{name}[/versions/{version}]/infer on the lean hot path (matched and answered before "
        "FastAPI's router, same bodies, errors, limits and metrics; docs/architecture.md). Off: FastAPI's "
        "routes serve them, for comparing the two.",
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
    hang_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="A model call still running after this long is hung: the worker turns unready (/readyz "
        "503, predictions 503 'model_not_ready'), the call counts as a breaker failure, and "
        "ferry_model_hangs_total and a 'model_call_hung' error line say so. Keep it above deadline.max_s.",
    )
    hang_exit_s: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="How long a worker with a hung model call stays up, unready (so the load balancer takes it "
        "out), before it exits and gunicorn starts a fresh one. A call that returns meanwhile makes it ready again.",
    )


class BreakerSettings(_Group):
    """Circuit breaker around model execution (one per worker)."""

    enabled: bool = Field(True, description="Guard model calls with a circuit breaker.")
    fail_max: int = Field(
        5, ge=1, le=10_000, description="Consecutive model failures that open the breaker (per worker)."
    )
    reset_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds an open breaker fails fast (503 'circuit_open', Retry-After) before it lets "
        "one trial call through (half-open). A success closes it, a failure re-opens it.",
    )


class DeadlineSettings(_Group):
    """Per-request deadlines: queue wait plus model time."""

    default_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Deadline of a request that names none. Past it the request ends with 504 "
        "'deadline_exceeded'; work whose deadline passed while queued is never started.",
    )
    max_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Largest deadline a client may ask for with X-Request-Timeout (seconds) or the Open "
        "Inference Protocol 'timeout' parameter (microseconds); larger values are clamped to it. Keep "
        "it below the ingress timeout.",
    )


class BatchingSettings(_Group):
    """Micro-batching: concurrent requests merged into one model call."""

    enabled: bool = Field(
        True,
        description="Merge requests that wait for the model into one predict_proba call. A request that "
        "finds the model idle is never delayed. Disable for a model whose output for a row depends "
        "on the other rows of the call.",
    )
    max_batch_size: int = Field(
        128, ge=1, le=100_000, description="Most rows merged into one model call (a larger request runs alone)."
    )
    max_wait_ms: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="When other requests are in flight, how long a batch may wait for them to join before "
        "it starts. Never applies to a lone request.",
    )


class FaultSettings(_Group):
    """Fault injection for tests and game days. Off by default."""

    enabled: bool = Field(False, description="Read fault settings from FERRY_FAULTS__FILE (logs loudly while active).")
    file: Path | None = Field(
        None,
        description="JSON file {'error_rate': 0..1, 'latency_ms': >=0, 'hang': bool}, re-read within a second "
        "of a change by every worker. Missing or invalid: no faults, one warning.",
    )


class LoggingSettings(_Group):
    """Structured JSON logs on stdout."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum log level.")
    access_log: bool = Field(True, description="One JSON access line per request.")


class MetricsSettings(_Group):
    """Prometheus metrics (multiprocess mode)."""

    dir: Annotated[Path | None, BeforeValidator(lambda v: v or None)] = Field(
        None,
        description="prometheus-client multiprocess directory, exported as PROMETHEUS_MULTIPROC_DIR before "
        "gunicorn starts. Unset (or empty): a fresh private directory per launch (ferry-metrics-* in the "
        "temporary directory), removed when gunicorn exits, so instances on one machine never mix counts. "
        "Set: that directory, emptied of metric files at every start, or a previous run's files would "
        "resurrect old counts; in Kubernetes the chart sets a per-pod emptyDir.",
    )
    process_interval_s: float = Field(
        5.0, gt=0, le=300, description="How often each worker refreshes its process_* metrics."
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port only (every worker listens on it with SO_REUSEPORT; each answers "
        "with all workers' metrics) and not on the API port. Unset: /metrics on the API port.",
    )


class TracingSettings(_Group):
    """OpenTelemetry tracing over OTLP/HTTP (docs/observability.md); off by default, then nothing is traced."""

    enabled: bool = Field(
        False,
        description="Make spans (request, queue wait, model call, job run, callback attempt) and export them.",
    )
    endpoint: str = Field(
        "http://localhost:4318",
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the OTLP/HTTP receiver (an OpenTelemetry Collector, Tempo, Jaeger); spans are "
        "POSTed to its path /v1/traces, as with OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    protocol: Literal["http/protobuf"] = Field(
        "http/protobuf", description="OTLP transport; only http/protobuf is supported (no gRPC dependency)."
    )
    headers: SecretStr | None = Field(
        None,
        description="Headers sent with every export, 'key1=value1,key2=value2' (the OTEL_EXPORTER_OTLP_HEADERS "
        "format), e.g. a tenant id or an authorization token; values may be percent-encoded.",
    )
    service_name: str = Field(
        "ferry", min_length=1, max_length=128, description="The service.name resource attribute of every span."
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (by trace id). A request whose traceparent says its caller "
        "sampled it (or did not) follows the caller's decision.",
    )
    timeout_s: float = Field(10.0, gt=0, le=60, description="Timeout of one export request.")


class StreamSettings(_Group):
    """Streamed prediction (POST /api/v1/predict/stream, Server-Sent Events)."""

    max_records: int = Field(
        100_000, ge=1, le=10_000_000, description="Most records in one streamed prediction request."
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest body accepted by the stream route, in bytes (other routes use api.max_body_bytes). "
        "Sized to max_records: 100,000 records of the default model take 19 MB as compact JSON; 32 MiB leaves "
        "room for longer field values and whitespace. Raise both together. The ingress's limit for this path "
        "follows it.",
    )
    chunk_size: int = Field(500, ge=1, le=100_000, description="Records scored per chunk; one SSE event per chunk.")
    heartbeat_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds between SSE comment lines while no event is due, so proxies keep the stream open.",
    )


class ConnectionSettings(_Group):
    """Connection protection in each worker (the protections a front proxy would give, kept in the service
    so that it is safe without one). Read by the worker's HTTP protocol (``ferry.api.connections``)."""

    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers, in bytes; larger requests get 431 and the connection "
        "is closed. nginx: large_client_header_buffers 4 8k; Envoy: max_request_headers_kb 60.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A connection must deliver a request's complete headers within this many seconds of its "
        "first byte (or, for a new connection, of being accepted); else it is closed and logged. "
        "nginx: client_header_timeout; Envoy: request_headers_timeout.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest pause while a request body is being received (between two reads, as nginx's "
        "client_body_timeout); a stalled body is answered 408 and the connection closed and logged. "
        "Envoy: stream_idle_timeout.",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="Open connections per worker, lowered at start to fit the process's descriptor limit "
        "(RLIMIT_NOFILE minus a reserve). At the limit a new connection first closes the oldest connection "
        "that has no request being answered (idle, or still sending headers or body); if every connection "
        "is busy it gets 503 'too_many_connections' and is closed. nginx: worker_connections; Envoy: "
        "max_connections (overload manager).",
    )
    max_event_streams: int = Field(
        2000,
        ge=0,
        le=100_000,
        description="Open job event streams (GET /api/v1/jobs/{id}/events) per worker; beyond it 503 "
        "'too_many_streams' with Retry-After. Followers of one job share one store poll. Keep it below "
        "max_connections.",
    )


class JobsSettings(_Group):
    """Async inference jobs: store, runners, retention."""

    store: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="Job store. 'sqlite' is a file shared by the workers of one pod (the embedded default); "
        "'redis' serves many replicas and separate 'ferry worker' processes.",
    )
    sqlite_path: Path = Field(
        Path("/tmp/ferry/jobs.sqlite3"),
        description="SQLite database file (store=sqlite). Every process of one pod must see the same file.",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (store=redis), e.g. redis://:password@redis:6379/0; never logged.",
    )
    redis_prefix: str = Field(
        "ferry", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Prefix of every Redis key ferry writes."
    )
    runners: int = Field(
        1,
        ge=0,
        le=64,
        description="Job runners per worker process of 'ferry serve' (0: this API only queues; run "
        "'ferry worker' elsewhere). 'ferry worker' processes always run at least one.",
    )
    max_records: int = Field(10_000, ge=1, le=1_000_000, description="Most records in one job.")
    max_metadata_bytes: int = Field(
        4096, ge=0, le=65536, description="Largest job metadata object, as compact JSON bytes."
    )
    lease_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A running job's lease, renewed while it runs. A job whose runner died is reclaimed "
        "by another runner once its lease expires.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Runs a job gets (first run plus retries after a runner died or the model "
        "was unavailable) before it fails with 'attempts_exhausted'.",
    )
    retry_delay_s: float = Field(
        2.0, ge=0, le=3600, description="Delay before a job is retried after the model was unavailable."
    )
    run_timeout_s: float = Field(
        300.0, gt=0, le=86400, description="Deadline for one run of a job (all of its records)."
    )
    result_ttl_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="How long a finished job (and its result) is kept after it ended, then purged.",
    )
    poll_interval_s: float = Field(
        0.2, gt=0, le=60, description="How often an idle runner, and a job event stream, look at the store."
    )
    max_queued: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="Most jobs waiting to run, in the whole store. A submission beyond it gets 429 "
        "'job_quota_exceeded' with Retry-After.",
    )
    max_queued_per_principal: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="Most jobs one principal may have waiting to run (auth.mode api_key or jwt; without "
        "authentication only max_queued applies). Beyond it: 429 'job_quota_exceeded' with Retry-After.",
    )
    max_store_bytes: int = Field(
        192 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024**4,
        description="Most bytes the job store may hold (SQLite: pages in use plus the write-ahead log; Redis: "
        "used_memory). A submission that would pass it gets 429 'job_store_full' with Retry-After. Keep it "
        "below the volume that holds the SQLite file (the chart sizes it from this value).",
    )
    max_store_bytes_per_principal: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=1024**4,
        description="Most bytes one principal's jobs may hold in the store, finished ones included until they "
        "expire: input, document and result (a result not written yet is counted as large as its input). "
        "auth.mode api_key or jwt only. Beyond it: 429 'job_store_full' with Retry-After.",
    )
    quota_retry_after_s: int = Field(
        30,
        ge=1,
        le=3600,
        description="Retry-After (seconds) of a 429 for a full queue or store: about the time for queued jobs "
        "to run or finished ones to expire.",
    )


def _auto_is_zero(value: Any) -> Any:
    """``FERRY_WORKERS=auto`` is the same as 0: as many workers as usable CPUs."""
    return 0 if isinstance(value, str) and value.strip().lower() == "auto" else value


def _json_list(value: Any) -> Any:
    """A JSON list given as one string (an environment variable); empty means none."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else []
    return value


def _secret_list(value: Any) -> Any:
    """Secrets from one string: several are separated by spaces or commas (rotation)."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


class CallbacksSettings(_Group):
    """Result callbacks to a client's callback_url (Standard Webhooks signing)."""

    signing_secret: Annotated[list[SecretStr], NoDecode, BeforeValidator(_secret_list)] = Field(
        default_factory=list,
        description="'whsec_' + base64 key(s) that sign callbacks; several, separated by spaces, during a "
        "rotation (each signs; receivers accept any). Without one, jobs with a callback_url are refused.",
    )
    allow_http: bool = Field(False, description="Allow http:// callback URLs (https only by default).")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="JSON list of callback targets exempt from the private-address check (e.g. an in-cluster "
        "receiver): 'host:port' (host exactly as written in the URL; IPv6 in brackets), 'host' alone (the "
        "scheme's default port only), or a URL prefix 'https://host:port/path/'. Any other port or path of "
        "the host stays refused. Never widens anything else.",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one delivery attempt (connect + answer).")
    max_attempts: int = Field(12, ge=1, le=100, description="Delivery attempts before a callback is dead-lettered.")
    max_age_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="A callback still undelivered this long after its job ended is dead-lettered.",
    )
    backoff_base_s: float = Field(
        1.0, gt=0, le=3600, description="Base of the exponential backoff between attempts (full jitter)."
    )
    backoff_max_s: float = Field(600.0, gt=0, le=86400, description="Longest wait between two attempts.")
    max_in_flight: int = Field(
        32,
        ge=1,
        le=1024,
        description="Callback attempts sent at the same time, per process: a slow receiver holds one slot for "
        "at most timeout_s, and never delays the callbacks of other receivers.",
    )
    max_per_host: int = Field(
        2,
        ge=1,
        le=1024,
        description="Callback attempts sent at the same time to one receiver (host:port), per process. Further "
        "callbacks for it wait in the store, so one slow receiver cannot take every slot.",
    )


def _word_list(value: Any) -> Any:
    """A list from one string of words separated by spaces or commas (a JSON list also works)."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, str):
        return json.loads(value)
    return value


Scope = Literal["predict", "jobs", "admin"]


class ApiKeyEntry(_Group):
    """One API key, stored as the sha256 of the key: the key itself never sits in configuration."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest of the key.")
    principal: str = Field(
        min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$", description="Who the key belongs to."
    )
    scopes: list[Scope] = Field(
        min_length=1,
        description="'predict' (prediction routes), 'jobs' (own jobs), 'admin' (every principal's jobs).",
    )


class AuthSettings(_Group):
    """Authentication of API clients and ownership of jobs. Probes (/livez, /readyz) are always open."""

    mode: Literal["none", "api_key", "jwt"] = Field(
        "none",
        description="'none': no authentication (local runs; every job is visible to every client). 'api_key': "
        "'Authorization: Bearer <key>' (or 'X-API-Key'), checked against hashed keys. 'jwt': OIDC bearer tokens "
        "checked against the issuer's JWKS. With either, a job belongs to the principal that submitted it.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="JSON file (mounted from a Secret) listing API keys as [{'sha256': '<hex of the key>', "
        "'principal': 'team-a', 'scopes': ['predict', 'jobs']}]. Only hashes are stored; re-read at start.",
    )
    api_keys: Annotated[list[ApiKeyEntry], NoDecode, BeforeValidator(_json_list)] = Field(
        default_factory=list,
        description="The same entries as a JSON list in the environment, added to the file's.",
    )
    jwt_issuer: str | None = Field(
        None, description="Expected 'iss' of a token (mode jwt), e.g. https://idp.example.com/."
    )
    jwt_audience: str | None = Field(
        None, description="Expected 'aud' of a token (mode jwt): this service's id at the IdP."
    )
    jwt_jwks_url: str | None = Field(
        None,
        description="The issuer's JWKS URL (mode jwt; the 'jwks_uri' of its /.well-known/openid-configuration). "
        "Keys are cached and fetched again for an unknown key id at most once per jwks_min_refresh_s.",
    )
    jwt_algorithms: Annotated[list[str], NoDecode, BeforeValidator(_word_list)] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Signature algorithms accepted (asymmetric only: 'none' and HMAC are never accepted).",
    )
    jwt_principal_claim: str = Field("sub", description="Claim that names the principal (jobs belong to it).")
    jwt_scopes_claim: str = Field(
        "scope", description="Claim with the token's scopes: a space-separated string or a list (e.g. 'scope', 'scp')."
    )
    jwt_default_scopes: Annotated[list[str], NoDecode, BeforeValidator(_word_list)] = Field(
        default_factory=list,
        description="Scopes granted to every valid token in addition to its own, for issuers that cannot "
        "put ferry's scopes (predict, jobs, admin) in tokens.",
    )
    jwt_leeway_s: float = Field(30.0, ge=0, le=600, description="Clock skew tolerated on exp, nbf and iat.")
    jwks_min_refresh_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Least time between two JWKS fetches caused by tokens with an unknown key id, so forged "
        "tokens cannot make ferry hammer the issuer.",
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
    workers: Annotated[int, BeforeValidator(_auto_is_zero)] = Field(
        0,
        ge=0,
        le=256,
        description="gunicorn worker processes. 0 or 'auto': one per CPU this process may use, the smallest of its "
        "cgroup CPU quota (rounded up), its CPU affinity set and the machine's CPU count.",
    )
    cpu_pinning: bool = Field(
        False,
        description="Pin each gunicorn worker (and the model threads it starts) to one CPU of the process's "
        "affinity set, the one fewest live workers hold. For pods with exclusive CPUs (the kubelet's static CPU "
        "manager: Guaranteed QoS, integer CPU requests). Elsewhere leave it off: unpinned, the kernel can move a "
        "worker away from a CPU something else is busy on.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description=ServerSettings.__doc__)
    model: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    api: ApiSettings = Field(default_factory=ApiSettings, description=ApiSettings.__doc__)
    inference: InferenceSettings = Field(default_factory=InferenceSettings, description=InferenceSettings.__doc__)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings, description=BreakerSettings.__doc__)
    deadline: DeadlineSettings = Field(default_factory=DeadlineSettings, description=DeadlineSettings.__doc__)
    batching: BatchingSettings = Field(default_factory=BatchingSettings, description=BatchingSettings.__doc__)
    faults: FaultSettings = Field(default_factory=FaultSettings, description=FaultSettings.__doc__)
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description=LoggingSettings.__doc__)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description=MetricsSettings.__doc__)
    stream: StreamSettings = Field(default_factory=StreamSettings, description=StreamSettings.__doc__)
    jobs: JobsSettings = Field(default_factory=JobsSettings, description=JobsSettings.__doc__)
    callbacks: CallbacksSettings = Field(default_factory=CallbacksSettings, description=CallbacksSettings.__doc__)
    auth: AuthSettings = Field(default_factory=AuthSettings, description=AuthSettings.__doc__)
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings, description=ConnectionSettings.__doc__)
    tracing: TracingSettings = Field(default_factory=TracingSettings, description=TracingSettings.__doc__)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.deadline.default_s > self.deadline.max_s:
            raise ValueError("deadline.default_s must not exceed deadline.max_s")
        if self.deadline.max_s >= self.server.timeout_s:
            raise ValueError("deadline.max_s must be below server.timeout_s (the worker heartbeat timeout)")
        if self.server.drain_grace_s >= self.server.graceful_timeout_s:
            raise ValueError("server.drain_grace_s must be below server.graceful_timeout_s")
        if self.callbacks.backoff_base_s > self.callbacks.backoff_max_s:
            raise ValueError("callbacks.backoff_base_s must not exceed callbacks.backoff_max_s")
        if self.metrics.port is not None and self.metrics.port == self.port:
            raise ValueError("metrics.port must differ from port")
        if self.auth.mode == "api_key" and self.auth.api_keys_file is None and not self.auth.api_keys:
            raise ValueError("auth.mode=api_key needs auth.api_keys_file or auth.api_keys")
        if self.auth.mode == "jwt" and not (self.auth.jwt_issuer and self.auth.jwt_audience and self.auth.jwt_jwks_url):
            raise ValueError("auth.mode=jwt needs auth.jwt_issuer, auth.jwt_audience and auth.jwt_jwks_url")
        for secret in self.callbacks.signing_secret:
            if not secret.get_secret_value().startswith("whsec_"):
                raise ValueError("callbacks.signing_secret: each secret is 'whsec_' followed by base64")
        return self


def timeout_chain_warnings(settings: Settings) -> list[str]:
    """Links of the shutdown chain that do not hold. Not refused (tests and local runs shorten the
    graceful timeout on purpose); the launcher logs each, and the Helm chart refuses them."""
    server, deadline = settings.server, settings.deadline
    warnings = []
    # uvicorn's own shutdown timeout is one second below gunicorn's graceful timeout (worker.py).
    budget = server.graceful_timeout_s - 1 - server.drain_grace_s
    if deadline.max_s > budget:
        warnings.append(
            f"deadline.max_s ({deadline.max_s:g} s) exceeds server.graceful_timeout_s - 1 - server.drain_grace_s "
            f"({budget:g} s): a request with the longest deadline that is running at SIGTERM is cut off"
        )
    if settings.inference.hang_s <= deadline.max_s:
        warnings.append(
            f"inference.hang_s ({settings.inference.hang_s:g} s) is not above deadline.max_s ({deadline.max_s:g} s): "
            "a model call that is merely slow is taken for hung and its worker replaced"
        )
    if settings.connections.max_event_streams >= settings.connections.max_connections:
        warnings.append(
            "connections.max_event_streams is not below connections.max_connections: open job event streams "
            "can take every connection of a worker"
        )
    return warnings


# Read by the client and the CLI (ferry_client.cli), not by the service: a shell that exports them for
# `ferry jobs ...` must still be able to `make run`.
CLIENT_VARIABLES = frozenset({"FERRY_URL", "FERRY_TOKEN"})


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
    known |= CLIENT_VARIABLES
    return sorted(key for key in environ if key.upper().startswith("FERRY_") and key.upper() not in known)
