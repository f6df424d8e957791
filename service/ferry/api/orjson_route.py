"""Route class whose requests parse JSON with orjson, with bounded memory (``ferry.api.json_body``)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ferry.api import json_body


class OrjsonRequest(Request):
    """Faster, and strict: NaN/Infinity are not JSON, and nesting deeper than 1024 levels is refused.
    ``max_values``: most JSON values the body may hold (None: no count)."""

    max_values: int | None = None

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if self.max_values is not None:
                await json_body.check_values(body, self.max_values)
            # orjson.JSONDecodeError subclasses json.JSONDecodeError, which FastAPI reports as a
            # "json_invalid" validation error; errors.from_validation maps that to 400 malformed_json.
            self._json = await json_body.loads(body)
        return self._json


class OrjsonRoute(APIRoute):
    # Most JSON values a request body of this route may hold, asked per request (a card-less model
    # learns its width when it has loaded). None: only the body size limit applies.
    max_values: ClassVar[Callable[[], int] | None] = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = type(self).max_values

        async def route_handler(request: Request) -> Response:
            orjson_request = OrjsonRequest(request.scope, request.receive)
            if limit is not None:
                orjson_request.max_values = limit()
            return await handler(await self.prepare(orjson_request))

        return route_handler

    async def prepare(self, request: OrjsonRequest) -> OrjsonRequest:
        """The request the route's handler gets (a route class may read a body of its own format)."""
        return request


def bounded(max_values: Callable[[], int]) -> type[OrjsonRoute]:
    """An OrjsonRoute whose bodies may hold at most ``max_values()`` JSON values."""
    return type("BoundedOrjsonRoute", (OrjsonRoute,), {"max_values": staticmethod(max_values)})
