"""Model cards."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ferry.api.openapi import route_errors
from ferry.api.orjson_route import OrjsonRoute
from ferry.api.schemas import CardSection
from ferry.core import Core
from ferry.errors import InvalidInput, ModelNotFound


def _summary(core: Core) -> dict[str, Any]:
    holder = core.holder
    return {
        "name": holder.name,
        "version": holder.version,
        "status": holder.state.value,
        "sha256": holder.loaded.sha256 if holder.loaded else (holder.card.sha256 if holder.card else None),
    }


def build_router(core: Core) -> APIRouter:
    router = APIRouter(route_class=OrjsonRoute, prefix="/api/v1/models", tags=["models"])

    @router.get("", summary="List served models", responses=route_errors("/api/v1/models", "GET"))
    async def list_models() -> dict[str, Any]:
        return {"models": [_summary(core)]}

    @router.get(
        "/{name}",
        summary="A model's card; ?section= returns one section",
        responses=route_errors("/api/v1/models/{name}", "GET", ModelNotFound, InvalidInput),
    )
    async def get_model(
        name: str,
        section: Annotated[CardSection | None, Query(description="Return only this section of the card.")] = None,
    ) -> dict[str, Any]:
        if name != core.holder.name:
            raise ModelNotFound(f"no model named {name!r}")
        card = core.holder.describe()
        if section is None:
            return {**card, "status": core.holder.state.value}
        return {"name": card["name"], "version": card["version"], section: card.get(section)}

    return router
