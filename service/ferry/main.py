"""The app factory. Nothing happens at import; ``create_app`` builds everything from Settings.

gunicorn loads ``ferry.main:create_app()`` in each worker (see service/gunicorn.conf.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from threadpoolctl import threadpool_limits

from ferry import __version__, tracing
from ferry.api import connections
from ferry.api.auth import scope_for
from ferry.api.cors import CorsMiddleware
from ferry.api.errors import allowed_methods, from_status
from ferry.api.hot_path import HotPath
from ferry.api.metrics_port import MetricsListener
from ferry.api.middleware import RequestMiddleware
from ferry.api.openapi import complete
from ferry.api.routes import health, jobs, models, predict, stream, v2
from ferry.auth import authenticator_for
from ferry.core import Core
from ferry.errors import from_validation
from ferry.jobs.callbacks import CallbackSender
from ferry.jobs.delivery import CallbackDeliverer
from ferry.jobs.housekeeping import Housekeeper
from ferry.jobs.runner import JobRunners
from ferry.jobs.service import JobService
from ferry.jobs.store import open_store
from ferry.logging import configure_logging, get_logger
from ferry.metrics import Metrics
from ferry.settings import Settings
from ferry_client.protocol import record_row, v2_tensor

log = get_logger("ferry.main")
# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 5000


DESCRIPTION = """
Serves one scikit-learn model. Typed single, batch and streamed (Server-Sent Events) prediction from
the model card, asynchronous jobs (polling, event stream, or a signed callback), model cards, Open
Inference Protocol v2, Prometheus metrics and Kubernetes probes.

Every error body is `{"code", "message", "request_id", "details"?}` (under `/v2`, the Open Inference
Protocol's `{"error", "code", "request_id", "details"?}`), with a stable `code`; every response carries
`X-Request-ID` (send your own, 1-128 of `A-Za-z0-9._:/+=-`, to have it echoed and logged).

Besides the answers documented per operation, a connection can be answered before its request reaches
any route, with the ferry error body and `Connection: close`: 408 `body_timeout` (the body stopped
arriving), 431 `headers_too_large`, 503 `too_many_connections` (with `Retry-After`); and an unknown path
is 404 `not_found`.

With `FERRY_API__CORS_ORIGINS` set, a CORS preflight (`OPTIONS` with `Origin` and
`Access-Control-Request-Method`) is answered before authentication: 204 with the allow headers for a
listed origin, 403 `cors_origin_not_allowed` without any CORS header for another origin.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API: every route, and (unless jobs.runners is 0) job runners in each worker."""
    return _build(settings or Settings(), role="api")


def create_worker_app(settings: Settings | None = None) -> FastAPI:
    """``ferry worker``: job runners only, with probes and /metrics (no prediction routes)."""
    return _build(settings or Settings(), role="worker")


def _build(settings: Settings, role: str) -> FastAPI:
    configure_logging(settings.logging.level)
    tracing.configure(settings.tracing, version=__version__)
    metrics = Metrics()
    connections.set_close_observer(lambda reason: metrics.connections_closed.labels(reason).inc())
    core = Core(settings, metrics)
    store = open_store(settings.jobs)
    job_service = JobService(settings, store, metrics)
    runner_count = max(1, settings.jobs.runners) if role == "worker" else settings.jobs.runners
    # Job tasks of this process, started and stopped in this order (stopped in reverse).
    tasks: list[JobRunners | CallbackDeliverer | Housekeeper] = [Housekeeper(store, metrics)]
    # Job documents name their runner by this opaque id, never by host name and pid (what a client must
    # not learn about the cluster); the worker_started log line maps it to both.
    identity = secrets.token_hex(6)
    if runner_count:
        tasks.append(
            CallbackDeliverer(
                store,
                CallbackSender(settings.callbacks, metrics),
                settings.callbacks,
                metrics=metrics,
                poll_s=settings.jobs.poll_interval_s,
            )
        )
        tasks.append(
            JobRunners(
                core,
                store,
                settings.jobs,
                chunk_size=settings.api.max_batch_size,
                metrics=metrics,
                identity=identity,
                count=runner_count,
            )
        )

    metrics_listener = (
        None
        if settings.metrics.port is None
        else MetricsListener(settings.host, settings.metrics.port, metrics.exposition)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One BLAS/OpenMP thread per inference thread: workers x threads never oversubscribe cores.
        limits = threadpool_limits(limits=1)
        await store.open()
        await core.start()
        # What is alive now (modules, the model) lives as long as the worker: frozen, it is no longer
        # rescanned by every full collection; and the young generation is collected less often. A
        # 100,000-record body otherwise triggers full collections that hold the event loop for 0.2 s+
        # each (docs/architecture.md, "Large bodies and the event loop").
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        for task in tasks:
            task.start()
        if metrics_listener is not None:
            await metrics_listener.start()
        log.info(
            "worker_started",
            role=role,
            model=core.holder.name,
            model_path=str(settings.model.path),
            job_store=settings.jobs.store,
            job_runners=runner_count,
            runner_id=identity,
            host=socket.gethostname(),
            pid=os.getpid(),
            auth=settings.auth.mode,
        )
        try:
            yield
        finally:
            if metrics_listener is not None:
                await metrics_listener.stop()
            # Runners first: they hand running jobs back while the store is still open.
            for task in reversed(tasks):
                await task.stop()
            await core.stop()
            await store.close()
            limits.restore_original_limits()
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            await asyncio.to_thread(tracing.shutdown)  # export the last spans (bounded) off the event loop
            log.info("worker_stopped")

    app = FastAPI(
        title="ferry",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.api.docs_enabled else None,
        openapi_url="/openapi.json" if settings.api.docs_enabled else None,
        redoc_url=None,
        # A POST without Content-Type is JSON: Open Inference Protocol clients send none.
        strict_content_type=False,
    )
    # For tools that wrap the app (tests, the benchmark's ceiling app); routes get the core from build_router.
    app.state.core = core
    app.state.settings = settings

    max_batch = settings.api.max_batch_size

    # Handlers only translate framework exceptions into FerryErrors; RequestMiddleware renders them.
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        raise from_validation(list(exc.errors()), max_batch) from None

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        error = from_status(exc.status_code, str(exc.detail))
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only.
            error.headers["allow"] = allowed_methods(own_routes, request.scope)
        raise error from None

    serve_metrics = settings.metrics.port is None  # else only on the metrics port
    hot_path = None
    if role == "worker":
        routers: tuple[APIRouter, ...] = (health.build_router(core, metrics_route=serve_metrics),)
    else:
        predict_types = predict.request_types(core)
        routers = (
            health.build_router(core, metrics_route=serve_metrics),
            predict.build_router(core, predict_types),
            stream.build_router(core),
            jobs.build_router(core, job_service),
            models.build_router(core),
            v2.build_router(core),
        )
        if settings.api.lean_path:
            hot_path = HotPath(core, predict_types)
    for router in routers:
        app.include_router(router)
    own_routes = [route for router in routers for route in router.routes]
    # One middleware: request id, body guards, authentication, the hot path, errors, metrics, access line.
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.api.max_body_bytes,
        access_log=settings.logging.access_log,
        routes=own_routes,
        body_limits={stream.PATH: settings.stream.max_body_bytes},
        authenticator=authenticator_for(settings.auth),
        hot_path=hot_path,
        max_decompressed_bytes=settings.api.max_decompressed_bytes,
        model_version=lambda: core.holder.version,
    )
    if settings.api.cors_origins:
        # Added last, so outermost: it wraps the request middleware, hot path included.
        app.add_middleware(
            CorsMiddleware, origins=settings.api.cors_origins, allow_credentials=settings.api.cors_allow_credentials
        )
    if role == "api":
        _install_openapi(app, core)
    return app


def _install_openapi(app: FastAPI, core: Core) -> None:
    """OpenAPI with a complete example for every body; regenerated until the model has loaded,
    because a model without a card learns its width only then."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        complete(schema, timeout_max_s=core.settings.deadline.max_s)
        example = {"id": "example-1", "inputs": [v2_tensor([_example_row(core)], name=v2.INPUT_NAME)]}
        schema["components"]["schemas"]["InferRequest"]["examples"] = [example]
        _enumerate_path_parameters(schema, {"name": core.holder.name, "version": core.holder.version})
        if core.settings.auth.mode != "none":
            _declare_bearer_auth(schema)
        app.openapi_schema = schema if core.holder.ready else None
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_bearer_auth(schema: dict[str, Any]) -> None:
    """Every operation needs a bearer credential except the open paths (so /docs offers 'Authorize')."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or an OIDC access token."}
    }
    schema["security"] = [{"bearer": []}]
    for path, item in schema["paths"].items():
        if scope_for(path) is None:
            for operation in item.values():
                operation["security"] = []


def _enumerate_path_parameters(schema: dict[str, Any], values: dict[str, str]) -> None:
    """Publish the only valid model name and version as enums, so clients and fuzzers see them."""
    for item in schema["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] in values:
                    parameter["schema"]["enum"] = [values[parameter["name"]]]


def _example_row(core: Core) -> list[float]:
    """The example record in the Open Inference Protocol encoding (a generic model's is a row already)."""
    schema = core.schema
    if schema.features:
        return record_row(schema.example, [f.model_dump() for f in schema.features])
    return [float(v) for v in schema.example]
