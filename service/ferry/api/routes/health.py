"""Kubernetes probes and the metrics endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ferry.api.openapi import RETRY_AFTER, route_errors
from ferry.api.orjson_route import OrjsonRoute
from ferry.api.schemas import Health
from ferry.core import Core
from ferry.lifecycle import is_draining


def build_router(core: Core, *, metrics_route: bool = True) -> APIRouter:
    """Probes, and /metrics unless it has a port of its own (``metrics.port``)."""
    router = APIRouter(route_class=OrjsonRoute, tags=["health"])

    @router.get(
        "/livez",
        response_model=Health,
        summary="Liveness: the process answers (never touches the model)",
        responses=route_errors("/livez", "GET"),
    )
    async def livez() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: model loaded and verified, not draining",
        responses={
            **route_errors("/readyz", "GET"),
            503: {"model": Health, "description": "Loading, failed, hung or draining", "headers": RETRY_AFTER},
        },
    )
    async def readyz() -> Response:
        holder = core.holder
        hung = core.predictor.watchdog.reason()
        if is_draining():
            body = Health(status="draining", model=holder.name, version=holder.version)
        elif hung is not None:
            body = Health(status="hung", model=holder.name, version=holder.version, reason=hung)
        elif holder.ready:
            return JSONResponse(Health(status="ready", model=holder.name, version=holder.version).model_dump())
        else:
            body = Health(status=holder.state.value, model=holder.name, version=holder.version, reason=holder.reason)
        return JSONResponse(body.model_dump(), status_code=503, headers={"retry-after": "1"})

    if metrics_route:

        @router.get(
            "/metrics",
            summary="Prometheus metrics of all workers",
            response_class=Response,
            responses={
                **route_errors("/metrics", "GET"),
                200: {
                    "description": "Prometheus text format, or OpenMetrics (with exemplars) when Accept asks for it",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                },
            },
        )
        async def metrics(request: Request) -> Response:
            # OpenMetrics (with exemplars) when the scraper's Accept asks for it, else the text format.
            payload, content_type = core.metrics.exposition(request.headers.get("accept"))
            return Response(payload, media_type=content_type)

    return router
