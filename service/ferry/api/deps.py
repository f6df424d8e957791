"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ferry.core import Core


def get_core(request: Request) -> Core:
    return request.app.state.core


def get_request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


CoreDep = Annotated[Core, Depends(get_core)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
