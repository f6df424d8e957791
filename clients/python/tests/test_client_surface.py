"""Client and AsyncClient expose the same methods with the same parameters (names, kinds, defaults,
annotations) and the same documentation: the sync module is generated from the async one, and this
test holds whatever the generator does."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from ferry_client import AsyncClient, Client

# The only differences allowed: the names Python and httpx give the two flavours.
ASYNC_TO_SYNC_NAMES = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
ASYNC_TO_SYNC_WORDS = {
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncIterator": "Iterator",
    "Asynchronous": "Synchronous",
}
DUNDERS = {"__init__", "__enter__", "__exit__", "__aenter__", "__aexit__"}


def surface(cls: type) -> dict[str, Callable[..., Any]]:
    """Public methods (and the lifecycle dunders), wherever in the class hierarchy they are defined."""
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name in DUNDERS
    }


def as_sync(text: str) -> str:
    for word, twin in ASYNC_TO_SYNC_WORDS.items():
        text = re.sub(rf"\b{word}\b", twin, text)
    return text


def describe(function: Callable[..., Any], translate: Callable[[str], str] = str) -> list[tuple[str, ...]]:
    signature = inspect.signature(function)
    parameters = [
        (p.name, p.kind.name, repr(p.default), translate(str(p.annotation))) for p in signature.parameters.values()
    ]
    return [*parameters, ("return", translate(str(signature.return_annotation)))]


def pairs() -> list[tuple[str, str]]:
    return [(name, ASYNC_TO_SYNC_NAMES.get(name, name)) for name in sorted(surface(AsyncClient))]


def test_same_methods() -> None:
    assert sorted(ASYNC_TO_SYNC_NAMES.get(name, name) for name in surface(AsyncClient)) == sorted(surface(Client))
    # and the surface is the documented one, so a method cannot vanish from both unnoticed
    assert {
        "predict",
        "predict_batch",
        "predict_many",
        "stream",
        "infer_v2",
        "models",
        "model_card",
        "ready",
        "submit_job",
        "get_job",
        "cancel_job",
        "redeliver_callback",
        "wait_job",
        "close",
    } <= set(surface(Client))


@pytest.mark.parametrize(("async_name", "sync_name"), pairs())
def test_same_parameters_defaults_annotations_and_docs(async_name: str, sync_name: str) -> None:
    async_method, sync_method = surface(AsyncClient)[async_name], surface(Client)[sync_name]
    assert describe(async_method, as_sync) == describe(sync_method)
    assert as_sync(inspect.getdoc(async_method) or "") == (inspect.getdoc(sync_method) or "")


def own_pairs() -> list[tuple[str, str]]:
    """Pairs defined by each client (not ``__init__``, nor what both inherit from their shared settings)."""
    return [
        (a, s)
        for a, s in pairs()
        if a != "__init__" and surface(AsyncClient)[a].__qualname__.startswith("AsyncClient.")
    ]


@pytest.mark.parametrize(("async_name", "sync_name"), own_pairs())
def test_async_methods_are_awaitable_and_sync_ones_are_not(async_name: str, sync_name: str) -> None:
    async_method, sync_method = surface(AsyncClient)[async_name], surface(Client)[sync_name]
    assert inspect.iscoroutinefunction(async_method) or inspect.isasyncgenfunction(async_method)
    assert not (inspect.iscoroutinefunction(sync_method) or inspect.isasyncgenfunction(sync_method))


def test_both_document_the_same_retry_policy() -> None:
    assert as_sync(inspect.getdoc(AsyncClient) or "") == inspect.getdoc(Client)
